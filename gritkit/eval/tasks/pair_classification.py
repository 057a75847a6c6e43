"""Pair classification: does the cosine of two texts separate paraphrases (1) from the rest (0)?

Data: the same pair files as STS, with a 0/1 label (MRPC's ``Quality``). Metrics: max-F1 over
thresholds on the cosine (main), average precision.
"""

from __future__ import annotations

from pathlib import Path

from gritkit.eval import metrics
from gritkit.eval.data import subset
from gritkit.eval.encoders import Encoder
from gritkit.results import Score
from gritkit.eval.tasks.sts import load_pairs, pair_cosines


def evaluate(encoder: Encoder, path: str | Path, *, instruction: str = "", limit: int | None = None) -> Score:
    pairs = subset(load_pairs(path), limit)
    labels = [int(pair[2]) for pair in pairs]
    if set(labels) - {0, 1}:
        raise ValueError(f"{path}: pair classification needs 0/1 labels, found {sorted(set(labels))}")
    cosines = pair_cosines(encoder, pairs, instruction)
    f1, threshold = metrics.max_f1(cosines, labels)
    return Score("max_f1", f1, len(pairs), {"average_precision": metrics.average_precision(cosines, labels),
                                            "threshold": threshold})
