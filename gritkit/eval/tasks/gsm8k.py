"""GSM8K: grade-school maths with 8-shot chain of thought; exact match of the final number.

Data: JSONL ``{"question", "answer"}`` whose answer ends in ``#### <number>``. The exemplars are
the first ``shots`` training problems, their worked answers rewritten as
"... So the answer is N." (calculator annotations ``<<...>>`` removed). The prediction is the last
number in the generated text (as in open-instruct). Metric: exact match.
"""

from __future__ import annotations

import re
from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval import metrics
from gritkit.eval.data import read_jsonl, subset
from gritkit.eval.generation import complete, prompt_ids, require_generator
from gritkit.results import Score


def gold_number(answer: str) -> float:
    return float(answer.split("####")[-1].strip().replace(",", ""))


def chain_of_thought(answer: str) -> str:
    """A training answer as an exemplar: reasoning without calculator notes, then the answer sentence."""
    reasoning, final = answer.split("####")
    reasoning = re.sub(r"<<[^>]*>>", "", reasoning).strip().replace("\n", " ")
    return f"{reasoning} So the answer is {final.strip()}."


def build_prefix(exemplars: list[dict]) -> str:
    shots = "".join(f"Question: {row['question']}\nAnswer: {chain_of_thought(row['answer'])}\n\n" for row in exemplars)
    return "Answer the following questions.\n\n" + shots


def evaluate(model: GritLM, test_path: str | Path, train_path: str | Path, *, limit: int | None = None,
             shots: int = 8, chat: bool = True, max_new_tokens: int = 256) -> Score:
    model = require_generator(model, "gsm8k")
    prefix = build_prefix(read_jsonl(train_path)[:shots])
    problems = subset(read_jsonl(test_path), limit)
    correct, outputs = 0, []
    for problem in tqdm(problems, desc="gsm8k"):
        ids = prompt_ids(model, prefix + f"Question: {problem['question']}", "\nAnswer:" if not chat else "Answer:", chat=chat)
        output = complete(model, ids, max_new_tokens=max_new_tokens, stop=["\n\nQuestion:", "\nQuestion:"])
        predicted = metrics.last_number(output)
        hit = predicted is not None and abs(predicted - gold_number(problem["answer"])) < 1e-6
        correct += hit
        outputs.append({"question": problem["question"], "output": output, "correct": hit})
    return Score("exact_match", correct / len(problems), len(problems), {"shots": shots}, outputs)
