"""RAG quality of every cache mode on TyDi QA dev-en and a SQuAD v1.1 dev sample (issue 11's table).

For each corpus: retrieval top-1/top-5, then per mode match (gold answer contained in the output,
case-insensitive, as the GRIT paper), SQuAD EM/F1, degenerate-output rate and mean latency. The
index is built once per model and corpus under ``--work-dir`` (keyed by the model spec and a hash
of its weights) and every answer is saved there as it is made, so a killed run resumes. Runs split
over processes by ``--modes`` may start together: the first builds the index, the others wait for it.

    python benchmarks/rag_quality.py --limit 20 --threads 1                     # a quick check
    python benchmarks/rag_quality.py --threads 1 --output benchmarks/results/rag_qa.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common import write_results  # noqa: E402
from gritkit import GritLM  # noqa: E402
from gritkit.answers import LOOP_DETECTOR_VERSION  # noqa: E402
from gritkit.eval.data import subset  # noqa: E402
from gritkit.eval.tasks import rag_qa  # noqa: E402
from gritkit.model import NEUTRAL_PENALTIES  # noqa: E402
from gritkit.rag import RAG  # noqa: E402


def run(args: argparse.Namespace) -> dict:
    model = GritLM.from_pretrained(args.model)
    key = f"{rag_qa.safe_name(args.model)}-{rag_qa.model_fingerprint(model)}"
    results = {"config": {**vars(args), "output": str(args.output), "work_dir": str(args.work_dir), "model_key": key,
                          "threads": torch.get_num_threads(), "device": str(model.device),
                          "loop_detector": LOOP_DETECTOR_VERSION},
               "corpora": {}}
    for name in args.corpora:
        corpus = rag_qa.load_corpus(name, squad_sample=args.squad_sample)
        corpus.questions = subset(corpus.questions, args.limit, seed=1) if args.limit else corpus.questions
        ids = {question.id for question in corpus.questions}
        directory = args.work_dir / key / name
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        index = rag_qa.open_index(model, corpus, directory / "index")
        print(f"{name}: index of {len(corpus.passages)} passages ready in {time.perf_counter() - start:.0f} s")
        retrieval = rag_qa.retrieval_rows(index, corpus, directory / "retrieval.jsonl", progress=tqdm)
        entry = {"questions": len(corpus.questions), "corpus_passages": len(corpus.passages),
                 "retrieval": rag_qa.retrieval_scores([retrieval[i] for i in sorted(ids)]), "modes": {}}
        rag = RAG(model, index, answer_prefix=args.answer_prefix)
        penalties, setting = decoding_penalties(args, model)
        answered = {}
        for mode_name in args.modes:
            mode = rag_qa.MODES_BY_NAME[mode_name]
            rows = answered[mode.name] = rag_qa.answer_rows(rag, mode, corpus, directory / f"{mode.name}{setting}.jsonl",
                                                            max_new_tokens=args.max_new_tokens, progress=tqdm,
                                                            **penalties)
            entry["modes"][mode.name] = {"label": mode.label, "k": mode.k,
                                         **rag_qa.answer_scores([rows[i] for i in sorted(ids)])}
            reference = rag_qa.SAME_AS.get(mode.name)
            if reference in answered:
                entry["modes"][mode.name]["identical_to_" + reference] = rag_qa.identical_share(
                    rows, answered[reference], sorted(ids))
            results["corpora"][name] = entry
            write_results(args.output, results)  # the summary so far, after every mode
        index.close()
    return results


def decoding_penalties(args: argparse.Namespace, model: GritLM) -> tuple[dict[str, float], str]:
    """The penalties answers are made with (the flags over the model's defaults), and a file-name suffix
    naming those that are not neutral, so that answers made with other penalties are never resumed."""
    given = {name: getattr(args, name) for name in NEUTRAL_PENALTIES if getattr(args, name) is not None}
    penalties = {**NEUTRAL_PENALTIES, **model.default_penalties, **given}
    suffix = "".join(f"-{name.split('_')[0]}{value:g}" for name, value in penalties.items()
                     if value != NEUTRAL_PENALTIES[name])
    return penalties, suffix


def markdown(results: dict) -> str:
    corpora = results["corpora"]
    names = list(corpora)
    header = ["Mode"] + [f"{name} {metric}" for name in names
                         for metric in ("match", "EM", "F1", "degen.", "s", "same as uncached")]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines.append("| retrieval top-1 / top-5 | " + " | ".join(
        f"{100 * corpora[n]['retrieval']['top1']:.1f} / {100 * corpora[n]['retrieval']['top5']:.1f} | | | | |"
        for n in names) + " |")
    for mode in rag_qa.MODES:
        if not any(mode.name in corpora[n]["modes"] for n in names):
            continue
        cells = []
        for n in names:
            s = corpora[n]["modes"].get(mode.name)
            same = next((f"{100 * v:.0f}%" for k, v in (s or {}).items() if k.startswith("identical_to_")), "")
            cells += ([f"{100 * s['match']:.1f}", f"{100 * s['exact_match']:.1f}", f"{100 * s['f1']:.1f}",
                       f"{100 * s['degenerate']:.1f}", f"{s['seconds']:.2f}", same] if s else ["–"] * 6)
        lines.append(f"| {mode.label} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{n}: {corpora[n]['questions']} questions over {corpora[n]['corpus_passages']} passages"
                      for n in names)
    return "\n".join(lines) + f"\n\n{sizes}; percentages, seconds per answer (mean, caches already built)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpora", nargs="+", default=list(rag_qa.CORPORA), choices=list(rag_qa.CORPORA))
    parser.add_argument("--modes", nargs="+", default=[m.name for m in rag_qa.MODES], choices=list(rag_qa.MODES_BY_NAME))
    parser.add_argument("--limit", type=int, default=None, help="a seeded subset of each corpus's questions")
    parser.add_argument("--squad-sample", type=int, default=300, help="SQuAD dev questions in the fixed sample")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--frequency-penalty", type=float, default=None,
                        help="default: the model's (see GritLM.default_penalties and gritkit.model.Sampler)")
    parser.add_argument("--presence-penalty", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--answer-prefix", default="", help="text the assistant's reply starts with")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--work-dir", type=Path, default=Path("results/tmp/rag_quality"),
                        help="built indexes and per-mode answers (resume from here)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/rag_qa.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run(args)
    table = markdown(results)
    results["markdown"] = table
    write_results(args.output, results)
    print(table)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
