"""Perplexity of reference responses given their prompts (held-out generative data).

Data: JSONL with a prompt (``instruction``/``prompt``/``question``) and a response
(``output``/``completion``/``answer``) per row, e.g. AlpacaEval's reference answers. The prompt is
put in the chat format and only response tokens are scored. Metric: token-level perplexity
exp(total negative log-likelihood / response tokens); lower is better.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval.data import column, read_jsonl, subset
from gritkit.eval.generation import prompt_ids, require_generator
from gritkit.eval.result import Score

PROMPT_COLUMNS = ("instruction", "prompt", "question")
RESPONSE_COLUMNS = ("output", "completion", "answer", "response")


def response_nll(model: GritLM, prompt: list[int], response: list[int]) -> float:
    """Summed negative log-likelihood of ``response`` tokens following ``prompt`` (causal attention)."""
    ids = torch.tensor([prompt + response], device=model.device)
    with torch.inference_mode():
        logits = model.model(input_ids=ids, is_causal=True, use_cache=False).logits[0, len(prompt) - 1:-1]
    return float(F.cross_entropy(logits.float(), ids[0, len(prompt):], reduction="sum"))


def evaluate(model: GritLM, path: str | Path, *, limit: int | None = None, chat: bool = True, max_tokens: int = 1024) -> Score:
    model = require_generator(model, "perplexity")
    rows = subset(read_jsonl(path), limit)
    total_nll, total_tokens = 0.0, 0
    for row in tqdm(rows, desc="perplexity"):
        prompt = prompt_ids(model, column(row, PROMPT_COLUMNS, path), chat=chat)[-(max_tokens // 2):]
        response = model.tokenizer(column(row, RESPONSE_COLUMNS, path), add_special_tokens=False)["input_ids"]
        response = (response + [model.tokenizer.eos_token_id])[:max_tokens - len(prompt)]  # ending the reply is scored too
        total_nll += response_nll(model, prompt, response)
        total_tokens += len(response)
    return Score("perplexity", math.exp(total_nll / total_tokens), len(rows), {"tokens": total_tokens})
