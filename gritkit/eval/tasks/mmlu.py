"""MMLU: multiple choice, answered by the option letter with the highest next-token log-likelihood.

Data: a folder with ``<split>/<subject>_<split>.csv`` files, headerless rows
``question, A, B, C, D, answer-letter`` (the hendrycks/test layout); few-shot exemplars come from
``dev/``. The prompt follows hendrycks/test; in chat format the reply starts "The answer is:"
(as in open-instruct). One forward pass per question, no generation. Metric: accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval.data import read_table, resolve, subset
from gritkit.eval.generation import prompt_ids, require_generator
from gritkit.results import Score

LETTERS = ("A", "B", "C", "D")


@dataclass
class Question:
    subject: str
    question: str
    choices: list[str]
    answer: str


def load_mmlu(folder: str | Path, split: str = "test") -> list[Question]:
    """All subjects' questions of ``split``, in subject order."""
    files = sorted(resolve(folder).joinpath(split).glob(f"*_{split}.csv"))
    if not files:
        raise FileNotFoundError(f"no *_{split}.csv files in {resolve(folder) / split}")
    columns = ("question", "A", "B", "C", "D", "answer")
    return [Question(path.stem.removesuffix(f"_{split}"), row["question"], [row[letter] for letter in LETTERS], row["answer"].strip())
            for path in files for row in read_table(path, columns)]


def format_question(question: Question, with_answer: bool = False) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices))
    return f"{question.question}{options}\nAnswer:" + (f" {question.answer}\n\n" if with_answer else "")


def build_prompt(question: Question, exemplars: list[Question]) -> str:
    subject = question.subject.replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    return header + "".join(format_question(shot, True) for shot in exemplars) + format_question(question)


def evaluate(model: GritLM, folder: str | Path, *, limit: int | None = None, shots: int = 0, chat: bool = True) -> Score:
    model = require_generator(model, "mmlu")
    questions = subset(load_mmlu(folder, "test"), limit)
    dev: dict[str, list[Question]] = defaultdict(list)
    for question in load_mmlu(folder, "dev") if shots else []:
        dev[question.subject].append(question)
    letter_ids = [model.tokenizer(" " + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]
    correct = 0
    for question in tqdm(questions, desc="mmlu"):
        ids = prompt_ids(model, build_prompt(question, dev[question.subject][:shots]), "The answer is:" if chat else "", chat=chat)
        _, logits = model.prefill(ids)
        correct += LETTERS[int(logits[letter_ids].argmax())] == question.answer
    return Score("accuracy", correct / len(questions), len(questions), {"shots": shots})
