"""RAG latency with GRIT key/value caching: the paper's Table 7 on the default model.

Latency: Sample A (1-token query, L-token document) and Sample B (L-token query, 1-token document)
for each L, ``--max-new-tokens`` generated tokens (exactly: end-of-sequence is ignored here so every
mode does the same work), ``--repeats`` runs per cell, mean and std. Caches of documents are built
at index time; that time is reported apart and never counted in a mode's latency.

The quality of every mode (TyDi QA dev, SQuAD, every metric) is benchmarks/rag_quality.py.

    python benchmarks/rag_latency.py --lengths 250 500 1000 2000 4000 --repeats 2

Prints markdown tables, writes JSON and a PNG of latency against length.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import doc_tables  # noqa: E402
from common import write_results  # noqa: E402
from gritkit import GritLM  # noqa: E402
from gritkit.eval.tasks.tydiqa import load_squad  # noqa: E402
from gritkit.rag import RAG, Index  # noqa: E402

# (label, cache mode, order, k): the rows of the paper's Table 7.
MODES = [
    ("No RAG", "none", "query_first", 0),
    ("RAG query-doc", "none", "query_first", 1),
    ("RAG doc-query", "none", "doc_first", 1),
    ("Query caching", "query", "query_first", 1),
    ("Query-doc caching", "query_doc", "query_first", 1),
    ("Doc caching", "doc", "query_first", 1),
    ("Doc-query caching", "doc_query", "query_first", 1),
]
# Each caching mode against the uncached prompt with the same order of query and document.
BASELINE = {"Query caching": "RAG query-doc", "Query-doc caching": "RAG query-doc",
            "Doc caching": "RAG doc-query", "Doc-query caching": "RAG doc-query"}


def filler_text() -> str:
    """Natural text to cut the long query or document from: TyDi QA English train passages."""
    items = load_squad("tydiqa_goldp/train/tydiqa.goldp.en.train.json")
    return " ".join(dict.fromkeys(item.context for item in items[:200]))


def text_of_tokens(model: GritLM, source: str, tokens: int) -> str:
    """A text that tokenises to about ``tokens`` tokens, cut from ``source`` (repeated as needed)."""
    ids = model.tokenizer(source, add_special_tokens=False)["input_ids"]
    ids = (ids * (tokens // max(len(ids), 1) + 1))[:tokens]
    return model.tokenizer.decode(ids)


def run_latency(model: GritLM, lengths: list[int], repeats: int, max_new_tokens: int, filler: str) -> dict:
    # Every run decodes exactly max_new_tokens, as in the paper, whatever the model would stop at.
    model.stop_token_ids = lambda: set()
    short = "Hi"  # one token
    results = {}
    total = len(lengths) * 2 * len(MODES) * repeats
    bar = tqdm(total=total, desc="latency", unit="run")
    for sample in ("A", "B"):
        for length in lengths:
            long_text = text_of_tokens(model, filler, length)
            question, document = (short, long_text) if sample == "A" else (long_text, short)
            with tempfile.TemporaryDirectory() as directory:
                index = Index.open(directory, model, kv_budget_bytes=None)
                start = time.perf_counter()
                index.add([{"id": "doc", "text": document}], chunk_size=100_000, chunk_overlap=0, cache_kv=True)
                build = time.perf_counter() - start
                stats = index.stats()
                rag = RAG(model, index)
                rag.answer(question, cache="doc", max_new_tokens=2)  # warm-up
                cell = {"cache_build_s": build, "doc_tokens": stats["tokens"], "kv_bytes": stats["kv_bytes"],
                        "query_tokens": len(model.tokenizer(question, add_special_tokens=False)["input_ids"]),
                        "modes": {}}
                for label, cache, order, k in MODES:
                    seconds = []
                    for _ in range(repeats):
                        answer = rag.answer(question, cache=cache, order=order, k=k, max_new_tokens=max_new_tokens)
                        assert "cache_build" not in answer.timings
                        seconds.append(answer.timings["total"])
                        bar.update()
                    cell["modes"][label] = {"mean": statistics.mean(seconds),
                                            "std": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
                                            "runs": seconds}
                for label, baseline in BASELINE.items():
                    cell["modes"][label]["change_pct"] = 100 * (
                        cell["modes"][label]["mean"] / cell["modes"][baseline]["mean"] - 1)
                index.close()
            results.setdefault(sample, {})[str(length)] = cell
    bar.close()
    del model.stop_token_ids
    return results


def plot(latency: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, sample, title in zip(axes, ("A", "B"), ("Sample A: 1-token query, L-token doc",
                                                      "Sample B: L-token query, 1-token doc")):
        lengths = [int(n) for n in latency[sample]]
        for label, *_ in MODES:
            means = [latency[sample][str(n)]["modes"][label]["mean"] for n in lengths]
            stds = [latency[sample][str(n)]["modes"][label]["std"] for n in lengths]
            axis.errorbar(lengths, means, yerr=stds, marker="o", capsize=3, label=label)
        axis.set(title=title, xlabel="L (tokens)", xscale="log", yscale="log")
        axis.minorticks_off()
        axis.set_xticks(lengths, [str(n) for n in lengths])
    axes[0].set_ylabel("seconds per answer")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is fastest on a busy CPU)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/rag_latency.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model = GritLM.from_pretrained(args.model)
    results = {"config": {**vars(args), "output": str(args.output), "device": str(model.device),
                          "threads": torch.get_num_threads()}}
    results["latency"] = run_latency(model, args.lengths, args.repeats, args.max_new_tokens, filler_text())
    write_results(args.output, results)
    print("Latency in seconds, mean ± std (change vs. the uncached prompt of the same order):\n")
    print(doc_tables.rag_latency(results))
    plot(results["latency"], args.output.with_suffix(".png"))
    print(f"\nwrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
