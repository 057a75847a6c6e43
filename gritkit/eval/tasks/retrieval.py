"""Retrieval in the BEIR layout: rank a corpus by cosine to each query.

Data: a folder with ``corpus.jsonl`` ({"_id", "title", "text"}), ``queries.jsonl`` ({"_id", "text"})
and ``qrels/<split>.tsv`` (query-id, corpus-id, graded score; header optional). Queries get the
instruction, documents none. Only queries with a relevant document are scored. ``limit``
counts queries; the corpus then shrinks to the documents judged for them plus
``distractors_per_query * limit`` other documents (fixed seed), to keep the cost in proportion.
Metrics: nDCG@10 (main), MRR@10, Recall@100.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from gritkit.eval import metrics
from gritkit.eval.data import read_jsonl, resolve, subset
from gritkit.eval.encoders import Encoder
from gritkit.results import Score

Qrels = dict[str, dict[str, int]]


def load_beir(folder: str | Path, split: str = "test") -> tuple[dict[str, str], dict[str, str], Qrels]:
    """(corpus id -> "title text", query id -> text, query id -> {doc id: grade})."""
    folder = resolve(folder)
    corpus = {str(row["_id"]): f"{row.get('title') or ''} {row['text']}".strip() for row in read_jsonl(folder / "corpus.jsonl")}
    queries = {str(row["_id"]): row["text"] for row in read_jsonl(folder / "queries.jsonl")}
    qrels: Qrels = defaultdict(dict)
    with (folder / "qrels" / f"{split}.tsv").open(newline="") as file:
        for row in csv.reader(file, delimiter="\t"):
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # the header row, if any
            qrels[row[0]][row[1]] = int(row[2])
    return corpus, queries, dict(qrels)


def evaluate(encoder: Encoder, folder: str | Path, *, instruction: str = "", limit: int | None = None,
             split: str = "test", distractors_per_query: int = 20, seed: int = 0) -> Score:
    corpus, queries, qrels = load_beir(folder, split)
    query_ids = subset(sorted(q for q in qrels if q in queries and any(g > 0 for g in qrels[q].values())), limit, seed)
    if limit is not None:
        judged = sorted({doc for q in query_ids for doc in qrels[q] if doc in corpus})
        others = sorted(set(corpus) - set(judged))
        extra = random.Random(seed).sample(others, min(len(others), distractors_per_query * limit))
        corpus = {doc: corpus[doc] for doc in judged + extra}
    doc_ids = list(corpus)
    doc_vectors = encoder.encode([corpus[doc] for doc in doc_ids], show_progress_bar=True)
    query_vectors = encoder.encode([queries[q] for q in query_ids], instruction, show_progress_bar=True)
    top = min(100, len(doc_ids))
    per_query = defaultdict(list)
    for query_id, scores in zip(query_ids, query_vectors @ doc_vectors.T):
        ranking = [doc_ids[i] for i in np.argsort(-scores)[:top]]
        per_query["ndcg_at_10"].append(metrics.ndcg_at_k(ranking, qrels[query_id], 10))
        per_query["mrr_at_10"].append(metrics.mrr_at_k(ranking, qrels[query_id], 10))
        per_query["recall_at_100"].append(metrics.recall_at_k(ranking, qrels[query_id], 100))
    means = {name: float(np.mean(values)) for name, values in per_query.items()}
    return Score("ndcg_at_10", means.pop("ndcg_at_10"), len(query_ids), {**means, "corpus_size": len(doc_ids)})
