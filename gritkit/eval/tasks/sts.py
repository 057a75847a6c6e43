"""STS: how well the cosine of two texts' embeddings ranks pairs like the human similarity scores.

Data: any CSV/TSV/JSONL of (text1, text2, score) pairs; a headerless CSV is read as
``sentence1, sentence2, score`` (STS Benchmark's layout). Metric: Spearman of the cosines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gritkit.eval import metrics
from gritkit.eval.data import SCORE_COLUMNS, TEXT1_COLUMNS, TEXT2_COLUMNS, column, read_table, subset
from gritkit.eval.encoders import Encoder, encode_unique
from gritkit.results import Score

Pair = tuple[str, str, float]


def load_pairs(path: str | Path) -> list[Pair]:
    """(text1, text2, score) rows; the score column may be called score, label or Quality."""
    rows = read_table(path, columns=("sentence1", "sentence2", "score"))
    return [(column(row, TEXT1_COLUMNS, path), column(row, TEXT2_COLUMNS, path), float(column(row, SCORE_COLUMNS, path)))
            for row in rows]


def pair_cosines(encoder: Encoder, pairs: list[Pair], instruction: str) -> np.ndarray:
    """Cosine of each pair; both sides get the instruction (a symmetric task)."""
    first = encode_unique(encoder, [pair[0] for pair in pairs], instruction)
    second = encode_unique(encoder, [pair[1] for pair in pairs], instruction)
    return (first * second).sum(axis=1)


def evaluate(encoder: Encoder, path: str | Path, *, instruction: str = "", limit: int | None = None,
             seen_path: str | Path | None = None) -> Score:
    """Spearman over the pairs; with ``seen_path`` (a training split) also over the pairs it does not
    hold in either order (``extra``: spearman_unseen, n_unseen), since STS-B train repeats a few test pairs."""
    pairs = subset(load_pairs(path), limit)
    cosines = pair_cosines(encoder, pairs, instruction)
    gold = [pair[2] for pair in pairs]
    extra = {}
    if seen_path is not None:
        seen = {(a, b) for a, b, _ in load_pairs(seen_path)}
        unseen = [i for i, (a, b, _) in enumerate(pairs) if (a, b) not in seen and (b, a) not in seen]
        extra = {"spearman_unseen": metrics.spearman(cosines[unseen], [gold[i] for i in unseen]),
                 "n_unseen": len(unseen)}
    return Score("spearman", metrics.spearman(cosines, gold), len(pairs), extra)
