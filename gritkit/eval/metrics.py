"""Evaluation metrics as pure functions of scores and gold labels (no model, no I/O).

Ranking metrics follow trec_eval / BEIR: graded relevance with linear gains, a document
counts as relevant when its grade is > 0. Values are fractions in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from gritkit.answers import answer_match, exact_match, is_degenerate, normalize_answer, token_f1  # noqa: F401  (re-exported)


# ---------------------------------------------------------------- ranking

def ndcg_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k of one ranked list: DCG = sum rel_i / log2(i + 1) over the top k, over the ideal DCG."""
    dcg = sum(relevance.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted((grade for grade in relevance.values() if grade > 0), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top k (0 when none)."""
    for rank, doc in enumerate(ranking[:k], start=1):
        if relevance.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranking: Sequence[str], relevance: Mapping[str, float], k: int = 100) -> float:
    """Share of the relevant documents found in the top k."""
    relevant = {doc for doc, grade in relevance.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Average precision of a scored list against 0/1 labels (the area under the precision-recall steps)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(labels), np.asarray(scores, dtype=float)))


def mean_average_precision(groups: Sequence[tuple[Sequence[float], Sequence[int]]]) -> float:
    """MAP over (scores, labels) groups, one per query."""
    return float(np.mean([average_precision(scores, labels) for scores, labels in groups]))


# ---------------------------------------------------------------- similarity and classification

def spearman(predicted: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, gold).statistic)


def max_f1(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """Best F1 over all thresholds "score >= t means positive"; returns (f1, threshold)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(np.asarray(labels), np.asarray(scores, dtype=float))
    # The last (precision, recall) point has no threshold: it is the "predict nothing" end.
    precision, recall = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = int(f1.argmax())
    return float(f1[best]), float(thresholds[best])


def accuracy(predicted: Sequence, gold: Sequence) -> float:
    if len(predicted) != len(gold) or not gold:
        raise ValueError("accuracy needs two equally long, non-empty sequences")
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def v_measure(predicted: Sequence, gold: Sequence) -> float:
    """V-measure of a clustering: harmonic mean of homogeneity and completeness."""
    from sklearn.metrics import v_measure_score

    return float(v_measure_score(gold, predicted))


# ---------------------------------------------------------------- confidence intervals

def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n < 1:
        raise ValueError("wilson_interval needs n >= 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_perplexity_interval(nlls: Sequence[float], tokens: Sequence[int], resamples: int = 1000,
                                  seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of exp(sum nll / sum tokens), resampling whole examples."""
    nlls, tokens = np.asarray(nlls, dtype=float), np.asarray(tokens, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(nlls), size=(resamples, len(nlls)))
    values = np.exp(nlls[picks].sum(axis=1) / tokens[picks].sum(axis=1))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


# ---------------------------------------------------------------- generated text


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any non-empty gold answer occurs in the prediction, case-insensitive (GRIT's RAG "match")."""
    text = prediction.lower()
    return float(any(answer.strip() and answer.strip().lower() in text for answer in answers))


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` ("1,234.5" -> 1234.5), or None (GSM8K answers)."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Unbiased pass@k estimate from ``samples`` completions of which ``correct`` passed (Chen et al. 2021)."""
    if samples - correct < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(samples - correct + 1, samples + 1)))
