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


LOOP_DETECTOR_VERSION = 2  # named in results records; version 1 counted "21,000,000,000" and "####" as loops
# A round number written with thousands separators and a run of one punctuation mark (Markdown's "####",
# "...") are single tokens: that is how numbers and formatting are written, not a loop. "1,111,111,111" is not
# round, so its groups stay separate tokens and still count; a run longer than Markdown's longest marker
# ("######") is a loop of its own.
_TOKEN = re.compile(r"\d{1,3}(?:,000)+(?!\d)|\w+|([^\w\s])\1*")
_LONGEST_MARKER = 6


def is_degenerate(text: str, max_period: int = 4, repeats: int = 3, ngram: int = 3) -> bool:
    """A looping output: some unit of 1..``max_period`` tokens ``repeats`` times back to back
    (``E-E-E-E``, ``no no no``), or some ``ngram`` of tokens ``repeats`` times anywhere.

    Tokens are lower-cased words, round numbers with separators ("21,000,000") and runs of one punctuation
    mark ("####"); any other mark is a token of its own. A run of more than 6 of one mark is a loop.
    """
    matches = list(_TOKEN.finditer(text.lower()))
    if any(match.group(1) and len(match.group(0)) > _LONGEST_MARKER for match in matches):
        return True
    tokens = [match.group(0) for match in matches]
    for period in range(1, max_period + 1):
        for start in range(len(tokens) - period * repeats + 1):
            unit = tokens[start:start + period]
            if all(tokens[start + r * period:start + (r + 1) * period] == unit for r in range(1, repeats)):
                return True
    counts = Counter(tuple(tokens[i:i + ngram]) for i in range(len(tokens) - ngram + 1))
    return any(count >= repeats for count in counts.values())
