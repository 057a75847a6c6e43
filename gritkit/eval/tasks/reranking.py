"""Reranking: order each query's candidates by cosine to the query.

Data: (query, candidate, 0/1 label) rows in CSV/TSV/JSONL, grouped by query (TrecQA's
``qtext,label,atext``; WikiQA's ``question,sentence,label``). Queries get the instruction,
candidates none. As in MTEB, queries whose candidates are all correct or all wrong are
skipped (their ranking cannot be wrong). ``limit`` counts queries. Metric: MAP (main), MRR@10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gritkit.eval import metrics
from gritkit.eval.data import CANDIDATE_COLUMNS, QUERY_COLUMNS, column, read_table, subset
from gritkit.eval.encoders import Encoder, encode_unique
from gritkit.results import Score

Group = tuple[str, list[str], list[int]]


def load_groups(path: str | Path) -> list[Group]:
    """(query, candidates, labels) per query, in file order; only queries with both labels."""
    groups: dict[str, tuple[list[str], list[int]]] = {}
    for row in read_table(path):
        candidates, labels = groups.setdefault(column(row, QUERY_COLUMNS, path), ([], []))
        candidates.append(column(row, CANDIDATE_COLUMNS, path))
        labels.append(int(row["label"]))
    return [(query, candidates, labels) for query, (candidates, labels) in groups.items() if 0 < sum(labels) < len(labels)]


def evaluate(encoder: Encoder, path: str | Path, *, instruction: str = "", limit: int | None = None) -> Score:
    groups = subset(load_groups(path), limit)
    queries = encode_unique(encoder, [query for query, _, _ in groups], instruction)
    candidates = encode_unique(encoder, [text for _, texts, _ in groups for text in texts])
    scored, reciprocal_ranks, start = [], [], 0
    for query_vector, (_, texts, labels) in zip(queries, groups):
        scores = candidates[start:start + len(texts)] @ query_vector
        start += len(texts)
        scored.append((scores, labels))
        ranking = [str(i) for i in np.argsort(-scores)]
        reciprocal_ranks.append(metrics.mrr_at_k(ranking, {str(i): label for i, label in enumerate(labels)}, 10))
    return Score("map", metrics.mean_average_precision(scored), len(groups), {"mrr_at_10": float(np.mean(reciprocal_ranks))})
