"""Corpus indexing: Index.add vs gritkit index build on Ray (1 and 2 workers); approximate search recall.

    python benchmarks/index_build.py --docs 2000 --vectors 100000

1. Documents/s on SQuAD v1.1 dev paragraphs (unique contexts, in file order) with the default model:
   single-process ``Index.add`` against ``build_index`` on a local Ray with 1 and 2 workers, each Ray
   run with its own Ray start, and where the time goes (Ray start-up, model load per actor, embedding
   inside the actors, the rest of the pipeline: scheduling and serialisation, the merge).
2. Search at scale: ``search="hnsw"`` (the index's HNSW option) against exact search on synthetic
   clustered unit vectors of the default model's dimension: recall@10 and single-query latency.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

import doc_tables
from common import report
from gritkit import GritLM
from gritkit.paths import data_dir
from gritkit.rag import Index
from gritkit.rag.index import HNSW_EF_SEARCH, new_vector_index


def squad_paragraphs(limit: int) -> list[dict]:
    data = json.loads((data_dir() / "squad_v1_dev" / "dev-v1.1.json").read_text())["data"]
    seen, documents = set(), []
    for article in data:
        for number, paragraph in enumerate(article["paragraphs"]):
            if paragraph["context"] not in seen:
                seen.add(paragraph["context"])
                documents.append({"id": f"{article['title']}#{number}", "text": paragraph["context"]})
    return documents[:limit]


def build_rows(documents: list[dict], workers: list[int], folder: Path) -> list[dict]:
    import ray

    from gritkit.rag.build import build_index

    corpus = folder / "squad.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in documents))
    rows = []
    started = time.perf_counter()
    model = GritLM.from_pretrained()
    load = time.perf_counter() - started
    started = time.perf_counter()
    with Index.open(folder / "add", model) as index:
        index.add(documents)
    add = time.perf_counter() - started
    rows.append({"method": "Index.add", "workers": 1, "docs": len(documents), "total_s": load + add,
                 "docs_per_s": len(documents) / (load + add), "docs_per_s_embedding": len(documents) / add,
                 "ray_start_s": 0.0, "model_load_s": load, "embed_s": add, "pipeline_other_s": 0.0, "merge_s": 0.0})
    for count in workers:
        report_ = build_index([corpus], folder / f"ray{count}", workers=count, shard_size=50)
        ray.shutdown()
        seconds = report_.seconds
        # the pipeline's wall time not spent loading models or embedding: scheduling, serialisation, writing shards
        other = seconds["pipeline"] - seconds["model_load_per_actor"] - seconds["embed_in_actors"] / count
        rows.append({"method": "Ray build", "workers": count, "docs": report_.documents, "total_s": seconds["total"],
                     "docs_per_s": report_.documents / seconds["total"],
                     "docs_per_s_embedding": report_.documents / (seconds["embed_in_actors"] / count),
                     "ray_start_s": seconds["ray_start"], "model_load_s": seconds["model_load_per_actor"],
                     "embed_s": seconds["embed_in_actors"], "pipeline_other_s": max(other, 0.0),
                     "merge_s": seconds["merge"]})
    return rows


def clustered_vectors(count: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, count)] + 0.5 * rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def search_rows(count: int, dim: int, queries: int, ef_values: list[int]) -> list[dict]:
    rng = np.random.default_rng(0)
    vectors = clustered_vectors(count + queries, dim, clusters=count // 100, rng=rng)
    base, probes = vectors[:count], vectors[count:]
    ids = np.arange(count, dtype=np.int64)
    rows = []
    exact = new_vector_index("exact", dim)
    exact.add_with_ids(base, ids)
    _, truth = exact.search(probes, 10)
    started = time.perf_counter()
    hnsw = new_vector_index("hnsw", dim)
    hnsw.add_with_ids(base, ids)
    hnsw_build = time.perf_counter() - started
    for name, index, ef in [("exact (IndexFlatIP)", exact, None)] + [("hnsw", hnsw, ef) for ef in ef_values]:
        if ef is not None:
            faiss.downcast_index(index.index).hnsw.efSearch = ef
        _, found = index.search(probes, 10)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        started = time.perf_counter()
        for probe in probes:
            index.search(probe[None], 10)
        latency = (time.perf_counter() - started) / len(probes)
        rows.append({"search": name, "ef_search": ef if ef is not None else "-", "vectors": count, "dim": dim,
                     "recall_at_10": recall, "query_ms": latency * 1e3,
                     "build_s": hnsw_build if ef is not None else 0.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="SQuAD dev paragraphs to index")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts to run")
    parser.add_argument("--vectors", type=int, default=100_000, help="synthetic vectors for the search part")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--ef-search", type=int, nargs="*", default=[16, HNSW_EF_SEARCH, 256])
    parser.add_argument("--skip-build", action="store_true", help="only the search part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if not args.skip_build:
        with tempfile.TemporaryDirectory() as folder:
            report("index_build", build_rows(squad_paragraphs(args.docs), args.workers, Path(folder)),
                   markdown=doc_tables.index_build)
    dim = 576  # the default model's embedding size
    report("index_search_hnsw", search_rows(args.vectors, dim, args.queries, args.ef_search),
           markdown=doc_tables.index_search_hnsw)


if __name__ == "__main__":
    main()
