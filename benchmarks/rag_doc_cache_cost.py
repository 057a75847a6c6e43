"""Cost of the two kinds of document key/value states: index time, storage and answer latency.

For one document of each length (TyDi QA text, one chunk): seconds to ``Index.add`` it without
states, with ``cache_kv="bidirectional"`` (the embedding pass keeps its states) and with
``cache_kv="causal"`` (one more causal pass in the doc-first chat layout), per 1,000 document
tokens; KV bytes stored per document token; and the latency of a one-token question answered
with ``cache="doc"`` from each kind against uncached doc-first RAG (``--max-new-tokens`` generated
exactly, end-of-sequence ignored, mean of ``--repeats`` after a warm-up).

    python benchmarks/rag_doc_cache_cost.py --lengths 1000 4000 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import doc_tables  # noqa: E402
from common import report  # noqa: E402
from gritkit import GritLM  # noqa: E402
from gritkit.eval.tasks.tydiqa import load_squad  # noqa: E402
from gritkit.rag import RAG, Index  # noqa: E402
from rag_latency import text_of_tokens  # noqa: E402

KINDS = {"none": False, "bidirectional": "bidirectional", "causal": "causal"}
ANSWERS = [("uncached doc-first", "none", "doc_first", None), ("doc, bidirectional", "doc", "query_first", "bidirectional"),
           ("doc, causal", "doc", "query_first", "causal")]


def row(length: int, what: str, tokens: int, **values) -> dict:
    """One table row; "-" where a column does not apply."""
    columns = ("s_per_1k_tokens", "kv_bytes_per_doc_token", "latency_s", "latency_std_s")
    return {"length": length, "what": what, "doc_tokens": tokens, **{c: values.get(c, "-") for c in columns}}


def measure(model: GritLM, length: int, repeats: int, max_new_tokens: int, filler: str) -> list[dict]:
    document = text_of_tokens(model, filler, length)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        index = Index.open(directory, model, kv_budget_bytes=None)
        for kind, cache_kv in KINDS.items():  # each add replaces the document (and its stored states)
            start = time.perf_counter()
            index.add([{"id": "doc", "text": document}], chunk_size=100_000, chunk_overlap=0, cache_kv=cache_kv)
            seconds = time.perf_counter() - start
            stats = index.stats()
            rows.append(row(length, f"index add, {kind} states", stats["tokens"],
                            s_per_1k_tokens=1000 * seconds / stats["tokens"],
                            kv_bytes_per_doc_token=stats["kv_bytes"] / stats["tokens"]))
        rag = RAG(model, index)
        model.stop_token_ids = lambda: set()  # every answer decodes exactly max_new_tokens
        try:
            for label, cache, order, doc_cache in ANSWERS:
                # The warm-up also rebuilds the bidirectional states the last add replaced (not timed).
                rag.answer("Hi", cache=cache, order=order, doc_cache=doc_cache, max_new_tokens=2)
                seconds = []
                for _ in range(repeats):
                    answer = rag.answer("Hi", cache=cache, order=order, doc_cache=doc_cache, max_new_tokens=max_new_tokens)
                    assert "cache_build" not in answer.timings
                    seconds.append(answer.timings["total"])
                rows.append(row(length, f"answer, {label}", index.stats()["tokens"], latency_s=statistics.mean(seconds),
                                latency_std_s=statistics.stdev(seconds) if len(seconds) > 1 else 0.0))
        finally:
            del model.stop_token_ids
        index.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = GritLM.from_pretrained(args.model)
    filler = " ".join(item.context for item in load_squad("tydiqa_goldp/train/tydiqa.goldp.en.train.json")[:200])
    rows = [row for length in args.lengths for row in measure(model, length, args.repeats, args.max_new_tokens, filler)]
    report("rag_doc_cache_cost", rows, {"config": vars(args)}, markdown=doc_tables.rag_doc_cache_cost)


if __name__ == "__main__":
    main()
