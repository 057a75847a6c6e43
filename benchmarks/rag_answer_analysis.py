"""Where cached answers lose to uncached ones, from the answers ``rag_quality.py`` saved (no model is run).

Per run and mode: match on the questions whose first retrieved passage is the gold one and on the rest,
and the share of answers holding a truncated copy of a word of the passage they were given
("Den Broncos" where the passage says "Denver Broncos").

    python benchmarks/rag_answer_analysis.py results/tmp/rag_quality/runs_gritsmol-v2-rag-reading-cpu-* \
        --corpus squad --output results/gritsmol-v2-rag-reading-cpu/squad-answer-analysis.json
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402
from gritkit.eval import metrics  # noqa: E402
from gritkit.eval.tasks import rag_qa  # noqa: E402


def words(text: str) -> set[str]:
    return set(re.findall(r"[\w']+", text))


def truncated_copy(output: str, passage: str) -> bool:
    """Whether ``output`` holds a word that is not in ``passage`` but is the start of one of its words."""
    given = words(passage)
    return any(len(w) >= 2 and w not in given and any(p.startswith(w) for p in given) for w in words(output))


def mode_summary(rows: list[dict], gold: dict[str, str], passages: list[str]) -> dict:
    right = [r for r in rows if r["passage"] == gold[r["id"]]]
    wrong = [r for r in rows if r["passage"] != gold[r["id"]]]
    match = lambda group: float(np.mean([metrics.contains_answer(r["output"], r["answers"]) for r in group]))  # noqa: E731
    return {"n": len(rows), "gold_passage_first": len(right), "match_gold_first": match(right),
            "match_other_first": match(wrong),
            "truncated_copy": float(np.mean([truncated_copy(r["output"], passages[int(r["passage"])]) for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="rag_quality work folders (one per model)")
    parser.add_argument("--corpus", default="squad", choices=list(rag_qa.CORPORA))
    parser.add_argument("--modes", nargs="+", default=["rag_doc_first", "doc", "rag_query_first", "query"])
    parser.add_argument("--decoding", default="frequency0.5", help="the answer files' decoding suffix")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    passages = rag_qa.load_corpus(args.corpus).passages
    results = {}
    print(f"{'run':<52} {'mode':<16} {'gold first':>10} {'match, gold first':>18} {'match, other':>13} {'truncated':>10}")
    for run in args.runs:
        folder = run / args.corpus
        gold = {row["id"]: row["gold"] for row in rag_qa.read_rows(folder / "retrieval.jsonl").values()}
        for mode in args.modes:
            path = folder / f"{mode}-{args.decoding}.jsonl"
            if not path.exists():
                continue
            summary = mode_summary(list(rag_qa.read_rows(path).values()), gold, passages)
            results.setdefault(run.name, {})[mode] = summary
            print(f"{run.name:<52} {mode:<16} {summary['gold_passage_first']:>10} "
                  f"{100 * summary['match_gold_first']:>18.1f} {100 * summary['match_other_first']:>13.1f} "
                  f"{100 * summary['truncated_copy']:>9.1f}%")
    write_results(args.output, {"corpus": args.corpus, "decoding": args.decoding, "runs": results})


if __name__ == "__main__":
    main()
