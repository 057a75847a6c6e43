"""Answer strings: SQuAD normalisation and the match metrics that RAG evaluation and training share."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no English articles, single spaces."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(answer) for answer in answers))


def answer_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any normalised gold answer occurs in the normalised prediction (the GRIT paper's RAG "match")."""
    predicted = f" {normalize_answer(prediction)} "
    return float(any(f" {gold} " in predicted for gold in map(normalize_answer, answers) if gold))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best bag-of-tokens F1 of the prediction against any gold answer (SQuAD)."""
    def f1(gold: str) -> float:
        predicted_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
        common = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            return float(predicted_tokens == gold_tokens)  # both empty counts as a match
        precision, recall = common / len(predicted_tokens), common / len(gold_tokens)
        return 2 * precision * recall / (precision + recall)

    return max(f1(answer) for answer in answers)
