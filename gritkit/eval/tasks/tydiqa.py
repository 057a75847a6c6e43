"""TyDi QA gold passage: answer a question from a given passage; SQuAD exact match and F1.

Data: SQuAD v1.1 JSON files (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``). The prompt
is open-instruct's English one. With ``shots`` > 0 the first questions of the file are the
exemplars and are not scored. Metric: F1 (main), exact match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval import metrics
from gritkit.eval.data import resolve, subset
from gritkit.eval.generation import complete, prompt_ids, require_generator
from gritkit.results import Score

INSTRUCTION = "Answer the following question based on the information in the given passage."


@dataclass
class QA:
    id: str
    context: str
    question: str
    answers: list[str]


def load_squad(path: str | Path) -> list[QA]:
    """Questions with their passage and gold answers, in file order (TyDi QA GoldP and SQuAD v1.1)."""
    data = json.loads(resolve(path).read_text())["data"]
    return [QA(qa["id"], paragraph["context"], qa["question"], [a["text"] for a in qa["answers"]])
            for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def format_qa(item: QA, with_answer: bool = False) -> str:
    text = f"Passage: {item.context}\nQuestion: {item.question}\nAnswer:"
    return text + (f" {item.answers[0]}\n\n" if with_answer else "")


def evaluate(model: GritLM, path: str | Path, *, limit: int | None = None, shots: int = 1, chat: bool = True,
             max_new_tokens: int = 50) -> Score:
    model = require_generator(model, "tydiqa")
    items = load_squad(path)
    exemplars, items = items[:shots], subset(items[shots:], limit)
    prefix = INSTRUCTION + "\n\n" + "".join(format_qa(shot, True) for shot in exemplars)
    exact, f1, outputs = [], [], []
    for item in tqdm(items, desc="tydiqa"):
        text = prefix + format_qa(item)
        ids = prompt_ids(model, text.removesuffix("Answer:"), "Answer:", chat=True) if chat else prompt_ids(model, text, chat=False)
        output = complete(model, ids, max_new_tokens=max_new_tokens, stop=["\n"]).strip()
        exact.append(metrics.exact_match(output, item.answers))
        f1.append(metrics.token_f1(output, item.answers))
        outputs.append({"id": item.id, "output": output, "answers": item.answers})
    return Score("f1", sum(f1) / len(items), len(items), {"exact_match": sum(exact) / len(items), "shots": shots}, outputs)
