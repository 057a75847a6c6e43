"""NQ-open, closed book: answer a Natural Questions question without any passage; answer match.

Data: JSONL rows ``{"question": str, "answer": [str, ...]}`` (the NQ-open dev set). The question is
the whole user turn; greedy decoding stops at the first newline. Metric: match (any gold answer,
normalised as in SQuAD, occurs in the output: the GRIT paper's RAG metric), with exact match beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval import metrics
from gritkit.eval.data import resolve, subset
from gritkit.eval.generation import complete, prompt_ids, require_generator
from gritkit.eval.result import Score

INSTRUCTION = "Answer the question with a short answer."


def load_questions(path: str | Path) -> list[tuple[str, list[str]]]:
    rows = [json.loads(line) for line in resolve(path).read_text().splitlines() if line.strip()]
    return [(row["question"], row["answer"]) for row in rows if row["answer"]]


def evaluate(model: GritLM, path: str | Path, *, limit: int | None = None, chat: bool = True,
             max_new_tokens: int = 24) -> Score:
    model = require_generator(model, "nq_open")
    items = subset(load_questions(path), limit)
    match, exact, outputs = [], [], []
    for question, answers in tqdm(items, desc="nq_open"):
        ids = prompt_ids(model, f"{INSTRUCTION}\n\nQuestion: {question}?", chat=chat)
        output = complete(model, ids, max_new_tokens=max_new_tokens, stop=["\n"]).strip()
        match.append(metrics.answer_match(output, answers))
        exact.append(metrics.exact_match(output, answers))
        outputs.append({"question": question, "output": output, "answers": answers})
    return Score("match", sum(match) / len(items), len(items), {"exact_match": sum(exact) / len(items)}, outputs)
