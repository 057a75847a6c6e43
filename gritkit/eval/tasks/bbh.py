"""BIG-Bench Hard: 27 reasoning tasks with the official 3-shot chain-of-thought prompts.

Data: a folder with ``bbh/<task>.json`` ({"examples": [{"input", "target"}]}) and
``cot-prompts/<task>.txt`` (the BIG-Bench-Hard repository layout). The answer is what follows
"the answer is" in the generation (as in open-instruct), compared exactly with the target.
``limit`` samples examples from all chosen tasks pooled. Metric: exact match (pooled), plus per task.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval.data import resolve, subset
from gritkit.eval.generation import complete, prompt_ids, require_generator
from gritkit.results import Score

_ANSWER = re.compile(r"[tT]he answer is (.*?)\.?\s*$", re.MULTILINE)


def load_bbh(folder: str | Path, tasks: list[str] | None = None) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """((task, input, target) examples, task -> CoT prompt) for ``tasks`` (default: all)."""
    folder = resolve(folder)
    names = tasks or sorted(path.stem for path in (folder / "bbh").glob("*.json"))
    examples, prompts = [], {}
    for name in names:
        path = folder / "bbh" / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"no BBH task {name!r} ({path})")
        examples += [(name, row["input"], row["target"]) for row in json.loads(path.read_text())["examples"]]
        prompts[name] = cot_prompt(folder / "cot-prompts" / f"{name}.txt")
    return examples, prompts


def cot_prompt(path: Path) -> str:
    """The 3-shot prompt without the canary header (everything after the "-----" line)."""
    text = path.read_text()
    return text.split("-----\n", 1)[1].strip() if "-----\n" in text else text.strip()


def extract_answer(output: str) -> str:
    match = _ANSWER.search(output)
    return (match.group(1) if match else output).strip()


def evaluate(model: GritLM, folder: str | Path, *, limit: int | None = None, tasks: list[str] | None = None,
             chat: bool = True, max_new_tokens: int = 256) -> Score:
    model = require_generator(model, "bbh")
    examples, prompts = load_bbh(folder, tasks)
    examples = subset(examples, limit)
    per_task: dict[str, list[bool]] = defaultdict(list)
    outputs = []
    for task, question, target in tqdm(examples, desc="bbh"):
        ids = prompt_ids(model, f"{prompts[task]}\n\nQ: {question}", ("\n" if not chat else "") + "A: Let's think step by step.", chat=chat)
        output = complete(model, ids, max_new_tokens=max_new_tokens, stop=["\n\nQ:"])
        hit = extract_answer(output) == target
        per_task[task].append(hit)
        outputs.append({"task": task, "input": question, "output": output, "target": target, "correct": hit})
    correct = sum(sum(hits) for hits in per_task.values())
    extra = {f"exact_match/{task}": sum(hits) / len(hits) for task, hits in sorted(per_task.items())}
    return Score("exact_match", correct / len(examples), len(examples), extra, outputs)
