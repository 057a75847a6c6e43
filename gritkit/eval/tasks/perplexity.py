"""Perplexity of reference responses given their prompts (held-out generative data).

Data: JSONL with a prompt (``instruction``/``prompt``/``question``) and a response
(``output``/``completion``/``answer``) per row, e.g. AlpacaEval's reference answers. The prompt is
put in the chat format and only response tokens are scored. Metric: token-level perplexity
exp(total negative log-likelihood / response tokens); lower is better; with a 95% bootstrap
interval over examples.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gritkit import GritLM
from gritkit.eval import metrics
from gritkit.eval.data import column, read_jsonl, subset
from gritkit.eval.generation import prompt_ids, require_generator
from gritkit.results import Score

PROMPT_COLUMNS = ("instruction", "prompt", "question")
RESPONSE_COLUMNS = ("output", "completion", "answer", "response")


def response_nll(model: GritLM, prompt: list[int], response: list[int]) -> float:
    """Summed negative log-likelihood of ``response`` tokens following ``prompt`` (causal attention)."""
    logits = model.token_logits(prompt + response)[len(prompt) - 1:-1]
    return float(F.cross_entropy(logits.float(), torch.tensor(response, device=logits.device), reduction="sum"))


def evaluate(model: GritLM, path: str | Path, *, limit: int | None = None, chat: bool = True, max_tokens: int = 1024) -> Score:
    model = require_generator(model, "perplexity")
    rows = subset(read_jsonl(path), limit)
    nlls, lengths = [], []
    for row in tqdm(rows, desc="perplexity"):
        prompt = prompt_ids(model, column(row, PROMPT_COLUMNS, path), chat=chat)[-(max_tokens // 2):]
        response = model.tokenizer(column(row, RESPONSE_COLUMNS, path), add_special_tokens=False)["input_ids"]
        response = (response + [model.tokenizer.eos_token_id])[:max_tokens - len(prompt)]  # ending the reply is scored too
        nlls.append(response_nll(model, prompt, response))
        lengths.append(len(response))
    low, high = metrics.bootstrap_perplexity_interval(nlls, lengths)
    return Score("perplexity", math.exp(sum(nlls) / sum(lengths)), len(rows),
                 {"tokens": sum(lengths), "ci95_low": low, "ci95_high": high})
