"""Open-ended instructions (AlpacaEval, Self-Instruct user-oriented): generate and save the replies.

No judge model is available offline, so the score is descriptive: the completion rate (share of
replies that ended by themselves before ``max_new_tokens``) and the mean reply length. Outputs are
saved in AlpacaEval's format (``instruction``, ``output``, ``generator``) for judging later.
Data: JSONL with ``instruction`` and optionally ``input``, or ``instances: [{"input"}]`` (Self-Instruct).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval.data import read_jsonl, subset
from gritkit.eval.generation import prompt_ids, require_generator
from gritkit.results import Score


def load_instructions(path: str | Path) -> list[str]:
    """One prompt per row: the instruction, then its input (if any) after a blank line."""
    prompts = []
    for row in read_jsonl(path):
        inputs = row.get("input") or next((instance.get("input") for instance in row.get("instances", []) if instance.get("input")), "")
        prompts.append(f"{row['instruction']}\n\n{inputs}" if inputs and inputs.strip() else row["instruction"])
    return prompts


def evaluate(model: GritLM, path: str | Path, *, limit: int | None = None, chat: bool = True,
             max_new_tokens: int = 512) -> Score:
    model = require_generator(model, "open-ended generation")
    prompts = subset(load_instructions(path), limit)
    finished, lengths, words, outputs = 0, [], [], []
    for prompt in tqdm(prompts, desc="generate"):
        tokens = list(model.generate_ids(prompt_ids(model, prompt, chat=chat), max_new_tokens=max_new_tokens))
        reply = model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        finished += len(tokens) < max_new_tokens and bool(reply)
        lengths.append(len(tokens))
        words.append(len(reply.split()))
        outputs.append({"instruction": prompt, "output": reply, "generator": model.name, "tokens": len(tokens)})
    count = len(prompts)
    return Score("completion_rate", finished / count, count,
                 {"mean_tokens": sum(lengths) / count, "mean_words": sum(words) / count,
                  "empty_rate": sum(not row["output"] for row in outputs) / count}, outputs)
