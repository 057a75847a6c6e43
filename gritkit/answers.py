"""Answer strings: SQuAD normalisation, the match metrics and the loop detector that RAG evaluation and training share."""

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


_WORD_OR_SYMBOL = re.compile(r"\w+|[^\w\s]")


def is_degenerate(text: str, max_period: int = 4, repeats: int = 3, ngram: int = 3) -> bool:
    """A looping output: some unit of 1..``max_period`` words/symbols ``repeats`` times back to back
    (``E-E-E-E``, ``no no no``), or some ``ngram`` of words/symbols ``repeats`` times anywhere.

    Text is split into lower-cased words and single punctuation marks first.
    """
    tokens = _WORD_OR_SYMBOL.findall(text.lower())
    for period in range(1, max_period + 1):
        for start in range(len(tokens) - period * repeats + 1):
            unit = tokens[start:start + period]
            if all(tokens[start + r * period:start + (r + 1) * period] == unit for r in range(1, repeats)):
                return True
    counts = Counter(tuple(tokens[i:i + ngram]) for i in range(len(tokens) - ngram + 1))
    return any(count >= repeats for count in counts.values())
