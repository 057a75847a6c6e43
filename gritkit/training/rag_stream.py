"""The cache-aware RAG stream: the answer is trained after the key/value states RAG caching reuses.

At answer time (``gritkit.rag``) a passage's cache is its embedding pass (``<|embed|>\\n{passage}``,
bidirectional) and a question's cache its retrieval embedding pass; cached segments are joined and
re-positioned by :func:`gritkit.rag.kv.build_cache`, then the text of :func:`gritkit.prompts.rag_prompt`
runs causally and the answer follows. This stream runs exactly that with gradients flowing through the
cached states, so the model learns to answer from its own embedding caches (the "RAG finetuning stage"
the GRIT paper proposes). Targets: the gold answer (next-token loss) and/or the model's own uncached-RAG
distribution over those tokens (self-distillation, KL), see ``TrainingConfig.rag_target``; optionally
also the teacher's hidden states, at every layer, on the tokens both runs share
(``TrainingConfig.rag_hidden_weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gritkit.model import EmbeddingBatch, GritLM
from gritkit.prompts import RAG_QUERY_INSTRUCTION, CacheMode, cached_segment_kinds, rag_prompt
from gritkit.rag.kv import Segment, build_batched_cache, cache_can_hold_padding
from gritkit.training.data import RagExample, reply_text


@dataclass
class RagInputs:
    """One training question laid out for one cache mode."""

    segments: list[tuple[str, str]]  # (instruction, text) of each cached segment, in order
    prompt_ids: list[int]            # the text run after the cache
    answer_ids: list[int]            # trained tokens (the reply, end-of-turn marker included)
    uncached_prompt_ids: list[int]   # the same question and passages as classic RAG (distillation teacher)
    passage_max_length: int

    @property
    def shared_length(self) -> int:
        """How many last tokens the cached and uncached runs share: the common tail of their prompts, and the answer."""
        common = 0
        for cached, uncached in zip(reversed(self.prompt_ids), reversed(self.uncached_prompt_ids)):
            if cached != uncached:
                break
            common += 1
        return common + len(self.answer_ids)


@dataclass
class AnswerOutputs:
    """Per question: the logits predicting each answer token, and (when asked) the hidden states of every layer
    on its ``shared_length`` last tokens, ``(layers, tokens, hidden)``."""

    logits: list[torch.Tensor]
    hidden: list[torch.Tensor] | None = None


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


def answer_logits(grit: GritLM, batch: Sequence[RagInputs]) -> list[torch.Tensor]:
    """Per question, the logits predicting each answer token ``(answer_tokens, vocab)``, after its cached segments."""
    return answer_outputs(grit, batch).logits


def answer_outputs(grit: GritLM, batch: Sequence[RagInputs], hidden: bool = False) -> AnswerOutputs:
    """:func:`answer_logits`, and with ``hidden`` every layer's hidden states on each question's shared tail.

    All questions run together: every cached text in one right-padded embedding pass, the joined caches
    as rows of one cache (:func:`gritkit.rag.kv.build_batched_cache`), then one causal forward over the
    prompts and answers, left-padded so that every answer ends in the last column. Padding is masked
    and every token keeps its own position, so each question's logits equal those of running it alone
    (up to float rounding). Models with sliding-window layers (whose caches cannot hold padding) run
    each text alone.
    """
    if not batch:
        return AnswerOutputs([], [] if hidden else None)
    if len(batch) > 1 and not cache_can_hold_padding(grit):
        return _joined([answer_outputs(grit, [inputs], hidden) for inputs in batch])
    rows = _cached_segments(grit, batch)
    prefix, prefix_lengths = build_batched_cache(grit, rows)
    width = max(prefix_lengths)
    answer_lengths = [len(inputs.answer_ids) for inputs in batch]
    ids, mask, positions = left_padded(grit, [inputs.prompt_ids + inputs.answer_ids for inputs in batch], prefix_lengths)
    prefix_mask = (torch.arange(width)[None] < torch.tensor(prefix_lengths)[:, None]).long()
    if bool(mask.all()) and bool(prefix_mask.all()):  # nothing padded (e.g. one question): the plain causal path
        attention_mask, positions = None, None
    else:
        attention_mask = torch.cat([prefix_mask, mask], dim=1).to(grit.device)
        positions = positions.to(grit.device)
    output = grit.model(input_ids=ids.to(grit.device), attention_mask=attention_mask, position_ids=positions,
                        past_key_values=prefix, use_cache=True, logits_to_keep=max(answer_lengths) + 1,
                        output_hidden_states=hidden)
    return _outputs(output, batch, hidden)


def uncached_answer_logits(grit: GritLM, batch: Sequence[RagInputs]) -> list[torch.Tensor]:
    """The teacher: per question, the same answer tokens after classic (uncached) RAG, without gradients."""
    return uncached_answer_outputs(grit, batch).logits


@torch.no_grad()
def uncached_answer_outputs(grit: GritLM, batch: Sequence[RagInputs], hidden: bool = False) -> AnswerOutputs:
    """:func:`uncached_answer_logits`, and with ``hidden`` every layer's hidden states on each shared tail."""
    if not batch:
        return AnswerOutputs([], [] if hidden else None)
    answer_lengths = [len(inputs.answer_ids) for inputs in batch]
    ids, mask, positions = left_padded(grit, [inputs.uncached_prompt_ids + inputs.answer_ids for inputs in batch],
                                        [0] * len(batch))
    padded = not bool(mask.all())
    output = grit.model(input_ids=ids.to(grit.device), attention_mask=mask.to(grit.device) if padded else None,
                        position_ids=positions.to(grit.device) if padded else None, use_cache=False,
                        logits_to_keep=max(answer_lengths) + 1, output_hidden_states=hidden)
    return _outputs(output, batch, hidden)


def _cached_segments(grit: GritLM, batch: Sequence[RagInputs]) -> list[list[Segment]]:
    """Each question's cached segments, from one embedding pass over every cached text of the batch."""
    lengths = {inputs.passage_max_length for inputs in batch}
    if len(lengths) > 1:
        raise ValueError(f"questions of one batch must share passage_max_length, not {sorted(lengths)}")
    texts = [segment for inputs in batch for segment in inputs.segments]
    tokens = grit.tokenize_for_embedding([text for _, text in texts], [instruction for instruction, _ in texts],
                                         max_length=lengths.pop())
    text_lengths = tokens.attention_mask.sum(1).tolist()  # on the CPU: no device sync
    if cache_can_hold_padding(grit):
        _, cache = grit.embed_batch_with_cache(tokens)
        segments = [Segment.from_cache(cache, length, row) for row, length in enumerate(text_lengths)]
    else:
        segments = []
        for row, length in enumerate(text_lengths):
            one = EmbeddingBatch(*(t[row:row + 1, :length] for t in (tokens.input_ids, tokens.attention_mask,
                                                                     tokens.pooling_mask)))
            segments.append(Segment.from_cache(grit.embed_batch_with_cache(one)[1], length))
    rows, start = [], 0
    for inputs in batch:
        rows.append(segments[start:start + len(inputs.segments)])
        start += len(inputs.segments)
    return rows


def left_padded(grit: GritLM, rows: list[list[int]], starts: list[int] | None = None) -> tuple[torch.Tensor, ...]:
    """Token ids, attention mask and position ids (row ``i`` counting from ``starts[i]``, default 0), padded on the left."""
    width = max(len(row) for row in rows)
    pad = grit.tokenizer.pad_token_id if grit.tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], dtype=torch.long)
    padding = torch.tensor([width - len(row) for row in rows])[:, None]
    columns = torch.arange(width)[None]
    mask = (columns >= padding).long()
    positions = (columns - padding).clamp(min=0) + torch.tensor(starts or [0] * len(rows))[:, None]
    return ids, mask, positions


def _outputs(output, batch: Sequence[RagInputs], hidden: bool) -> AnswerOutputs:
    """Each row's answer logits (the ``len(answer_ids)`` columns before the last) and, when asked, the hidden
    states of its shared tail; rows are left-padded, so both end in the last column."""
    last = output.logits.shape[1] - 1
    logits = [output.logits[row, last - len(inputs.answer_ids):last] for row, inputs in enumerate(batch)]
    if not hidden:
        return AnswerOutputs(logits)
    layers = output.hidden_states[1:]  # [0] is the embeddings; slice each row's tail before stacking, not whole rows
    return AnswerOutputs(logits, [torch.stack([layer[row, -inputs.shared_length:] for layer in layers])
                                  for row, inputs in enumerate(batch)])


def _joined(parts: list[AnswerOutputs]) -> AnswerOutputs:
    hidden = None if parts[0].hidden is None else [h for part in parts for h in part.hidden]
    return AnswerOutputs([logits for part in parts for logits in part.logits], hidden)


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relative squared error of the student's hidden states to the teacher's, per token and layer, averaged."""
    error = (student.float() - teacher.float()).pow(2).sum(-1)
    return (error / teacher.float().pow(2).sum(-1).clamp_min(1e-6)).mean()


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
