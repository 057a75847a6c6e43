"""The cache-aware RAG stream: the answer is trained after the key/value states RAG caching reuses.

At answer time (``gritkit.rag``) a passage's cache is its embedding pass (``<|embed|>\\n{passage}``,
bidirectional) and a question's cache its retrieval embedding pass; cached segments are joined and
re-positioned by :func:`gritkit.rag.kv.build_cache`, then the text of :func:`gritkit.prompts.rag_prompt`
runs causally and the answer follows. This stream runs exactly that with gradients flowing through the
cached states, so the model learns to answer from its own embedding caches (the "RAG finetuning stage"
the GRIT paper proposes). Targets: the gold answer (next-token loss) and/or the model's own uncached-RAG
distribution over those tokens (self-distillation, KL), see ``TrainingConfig.rag_target``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gritkit.model import GritLM
from gritkit.prompts import RAG_QUERY_INSTRUCTION, CacheMode, cached_segment_kinds, rag_prompt
from gritkit.rag.kv import Segment, build_cache
from gritkit.training.data import RagExample, reply_text


@dataclass
class RagInputs:
    """One training question laid out for one cache mode."""

    segments: list[tuple[str, str]]  # (instruction, text) of each cached segment, in order
    prompt_ids: list[int]            # the text run after the cache
    answer_ids: list[int]            # trained tokens (the reply, end-of-turn marker included)
    uncached_prompt_ids: list[int]   # the same question and passages as classic RAG (distillation teacher)
    passage_max_length: int


def layout(grit: GritLM, example: RagExample, mode: CacheMode, passages: list[str], passage_max_length: int) -> RagInputs:
    """The segments, prompt and answer tokens of ``example`` answered with ``passages`` in cache mode ``mode``."""
    tokenizer = grit.tokenizer
    segments = []
    for kind in cached_segment_kinds(mode):
        segments += [(RAG_QUERY_INSTRUCTION, example.question)] if kind == "query" else [("", p) for p in passages]
    prompt = rag_prompt(tokenizer, example.question, passages, mode)
    # the uncached teacher reads the texts in the cached layout's order
    order = "doc_first" if mode in ("doc", "doc_query") else "query_first"
    uncached = rag_prompt(tokenizer, example.question, passages, "none", order)
    reply = reply_text(grit, [{"role": "user", "content": example.question}, {"role": "assistant", "content": example.answer}])
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return RagInputs(segments, encode(prompt), encode(reply), encode(uncached), passage_max_length)


def draw(grit: GritLM, examples: list[RagExample], index: int, modes: list[str], max_passages: int,
         passage_max_length: int, rng: np.random.Generator) -> RagInputs:
    """Lay out ``examples[index]`` with a drawn cache mode and k (gold + distractors in a shuffled order)."""
    example = examples[index]
    k = int(rng.integers(1, max_passages + 1))
    distractors = list(example.passages[1:])
    while len(distractors) < k - 1:  # borrow gold passages of other questions
        other = int(rng.integers(len(examples)))
        if other != index or len(examples) == 1:
            distractors.append(examples[other].passages[0])
    chosen = [example.passages[0]] + [distractors[i] for i in rng.permutation(len(distractors))[:k - 1]]
    passages = [chosen[i] for i in rng.permutation(k)]
    mode = modes[int(rng.integers(len(modes)))]
    return layout(grit, example, mode, passages, passage_max_length)


def answer_logits(grit: GritLM, inputs: RagInputs) -> torch.Tensor:
    """Logits predicting each answer token ``(answer_tokens, vocab)``, generated after the cached segments."""
    segments = []
    for instruction, text in inputs.segments:
        _, cache, token_ids = grit.embedding_pass_with_cache(text, instruction, max_length=inputs.passage_max_length)
        segments.append(Segment.from_cache(cache, len(token_ids)))
    prefix = build_cache(grit, segments)
    ids = torch.tensor([inputs.prompt_ids + inputs.answer_ids], device=grit.device)
    output = grit.model(input_ids=ids, past_key_values=prefix, use_cache=True, logits_to_keep=len(inputs.answer_ids) + 1)
    return output.logits[0, :-1]


@torch.no_grad()
def uncached_answer_logits(grit: GritLM, inputs: RagInputs) -> torch.Tensor:
    """The teacher: the same answer tokens after classic (uncached) RAG, without gradients."""
    ids = torch.tensor([inputs.uncached_prompt_ids + inputs.answer_ids], device=grit.device)
    return grit.model(input_ids=ids, use_cache=False, logits_to_keep=len(inputs.answer_ids) + 1).logits[0, :-1]


def rag_loss(logits: torch.Tensor, answer_ids: list[int], target: str,
             teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean next-token loss on the gold answer, KL(teacher || student), or their sum."""
    loss = logits.new_zeros((), dtype=torch.float32)
    if "gold" in target:
        loss = loss + F.cross_entropy(logits.float(), torch.tensor(answer_ids, device=logits.device))
    if "distill" in target:
        student, teacher = F.log_softmax(logits.float(), -1), F.log_softmax(teacher_logits.float(), -1)
        loss = loss + F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return loss
