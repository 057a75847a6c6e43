"""Classification: logistic regression on frozen embeddings, trained on a few examples per label.

Data: (text, label) rows in CSV/TSV/JSONL; the label column may be called label, category,
intent or class. As in MTEB, the classifier sees ``samples_per_label`` training texts per label
(drawn with a fixed seed), which also bounds the encoding cost. Metric: accuracy (main), macro-F1.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from gritkit.eval import metrics
from gritkit.eval.data import LABEL_COLUMNS, TEXT_COLUMNS, column, read_table, subset
from gritkit.eval.encoders import Encoder
from gritkit.results import Score

Example = tuple[str, str]


def load_labelled(path: str | Path, text_field: str | None = None) -> list[Example]:
    """(text, label) rows; ``text_field`` picks a column (e.g. "subject"), else the first text-like one."""
    rows = read_table(path, columns=("text", "label"))
    fields = [text_field] if text_field else TEXT_COLUMNS
    examples = [(str(column(row, fields, path)).strip(), str(column(row, LABEL_COLUMNS, path))) for row in rows]
    return [(text, label) for text, label in examples if text]  # an empty subject line has nothing to embed


def per_label(examples: list[Example], samples_per_label: int, seed: int = 0) -> list[Example]:
    """At most ``samples_per_label`` examples of each label, drawn with a fixed seed."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_label[example[1]].append(example)
    rng = random.Random(seed)
    return [example for label in sorted(by_label) for example in rng.sample(by_label[label], min(samples_per_label, len(by_label[label])))]


def evaluate(encoder: Encoder, train_path: str | Path, test_path: str | Path, *, instruction: str = "",
             limit: int | None = None, samples_per_label: int = 8, text_field: str | None = None) -> Score:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    train = per_label(load_labelled(train_path, text_field), samples_per_label)
    test = subset(load_labelled(test_path, text_field), limit)
    train_vectors = encoder.encode([text for text, _ in train], instruction, show_progress_bar=True)
    test_vectors = encoder.encode([text for text, _ in test], instruction, show_progress_bar=True)
    classifier = LogisticRegression(max_iter=100).fit(train_vectors, [label for _, label in train])
    predicted = classifier.predict(test_vectors).tolist()
    gold = [label for _, label in test]
    return Score("accuracy", metrics.accuracy(predicted, gold), len(test),
                 {"macro_f1": float(f1_score(gold, predicted, average="macro")), "train_size": len(train)})
