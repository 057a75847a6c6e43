"""Index precision: size, query latency and recall of float32, int8 and binary indexes, with and without rescoring.

    python benchmarks/index_precision.py --passages 400     # embedding dominates: ~1 min of CPU per 150 passages

MS MARCO (retrieval_nano/msmarco, 5,000 passages, 43 judged queries with ~95 judged passages each):
``--passages`` of its passages drawn at random (fixed seed), embedded once with the default model (``embed_chunks``, as ``Index.add``)
and written into one index per precision and search kind (``Index.add_embedded``: the same vectors).
Each row searches with the 50 queries' vectors (``Index.search``, the index's query instruction) and
reports the faiss file's size, the mean latency of one search (rescoring and reading the passages
from SQLite included; the query's embedding is not), recall@10 against float32 exact search, and
nDCG@10 against the qrels (of the passages kept). Prints a table and writes benchmarks/results/index_precision.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_tables  # noqa: E402
from common import report  # noqa: E402

from gritkit import GritLM  # noqa: E402
from gritkit.eval import metrics  # noqa: E402
from gritkit.eval.tasks.retrieval import load_beir  # noqa: E402
from gritkit.rag import Index  # noqa: E402
from gritkit.rag.index import PRECISIONS, embed_chunks  # noqa: E402


def msmarco_subset(passages: int, seed: int = 0) -> tuple[dict[str, str], dict[str, str], dict]:
    """(passage id -> text, query id -> text, qrels) for ``passages`` random passages and the judged queries."""
    corpus, queries, qrels = load_beir("retrieval_nano/msmarco")
    kept = random.Random(seed).sample(sorted(corpus), min(passages, len(corpus)))
    query_ids = sorted(q for q in qrels if q in queries and any(grade > 0 for grade in qrels[q].values()))
    return {doc: corpus[doc] for doc in kept}, {q: queries[q] for q in query_ids}, {q: qrels[q] for q in query_ids}


def timed_searches(index: Index, queries: np.ndarray, k: int, multiplier: int, repeats: int):
    """Rankings (doc ids) of each query and the mean seconds of one ``Index.search``."""
    index.search(queries[0], k, rescore_multiplier=multiplier)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        rankings = [[p.doc_id for p in index.search(query, k, rescore_multiplier=multiplier)] for query in queries]
    return rankings, (time.perf_counter() - started) / (repeats * len(queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=400, help="passages drawn at random from the 5,000")
    parser.add_argument("--multipliers", default="0,1,4,10", help="rescore multipliers to try (0: no rescoring)")
    parser.add_argument("--searches", default="exact,hnsw")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the queries when timing")
    args = parser.parse_args()
    torch.set_num_threads(1)

    corpus, queries, qrels = msmarco_subset(args.passages)
    model = GritLM.from_pretrained()
    started = time.perf_counter()
    embedded = embed_chunks(model, [(doc, text, {}) for doc, text in corpus.items()])
    embed_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        indexes = {}
        for search in args.searches.split(","):
            for precision in PRECISIONS:
                index = Index.open(Path(folder) / f"{precision}-{search}", model, search=search, precision=precision)
                index.add_embedded(embedded)
                indexes[precision, search] = index
        query_vectors = np.asarray(model.encode(list(queries.values()),
                                                instruction=indexes["float32", "exact"].query_instruction))
        exact, _ = timed_searches(indexes["float32", "exact"], query_vectors, 10, 0, 1)
        rows = []
        for (precision, search), index in indexes.items():
            faiss_bytes = index.stats()["vector_index_bytes"]
            sqlite_bytes = sum(f.stat().st_size for f in index.path.glob("index.sqlite*"))
            for multiplier in [0] if precision == "float32" else [int(m) for m in args.multipliers.split(",")]:
                rankings, seconds = timed_searches(index, query_vectors, 10, multiplier, args.repeats)
                rows.append({
                    "precision": precision, "search": search, "rescore_multiplier": multiplier,
                    "faiss_bytes": faiss_bytes, "faiss_bytes_per_vector": round(faiss_bytes / len(embedded.chunks), 1),
                    "sqlite_bytes": sqlite_bytes, "query_ms": round(1000 * seconds, 3),
                    "recall_at_10_vs_float32_exact": round(float(np.mean(
                        [len(set(ours) & set(theirs)) / len(theirs) for ours, theirs in zip(rankings, exact)])), 4),
                    "ndcg_at_10": round(float(np.mean(
                        [metrics.ndcg_at_k(ranking, qrels[q], 10) for ranking, q in zip(rankings, queries)])), 4)})
        for index in indexes.values():
            index.close()
    report("index_precision", rows, {
        "dataset": "retrieval_nano/msmarco", "passages": len(corpus), "chunks": len(embedded.chunks),
        "queries": len(queries), "embed_seconds": round(embed_seconds, 1), "model": model.name,
        "note": "query_ms: one Index.search by vector (compact search, rescoring, reading k passages from SQLite); "
                "the query's embedding is not included"}, markdown=doc_tables.index_precision)


if __name__ == "__main__":
    main()
