"""GradCache (Gao et al., 2021, https://arxiv.org/abs/2101.06983): contrastive batches larger than memory.

1. Embed every chunk without a graph, remembering the random state before each chunk.
2. Compute the loss on the detached embeddings and its gradient w.r.t. each embedding (cheap).
3. Re-embed each chunk with a graph under the same random state (same dropout masks) and
   backpropagate the cached embedding gradients through it.

The parameter gradients equal those of one pass over the whole batch; peak memory is one chunk's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from gritkit.model import EmbeddingBatch
from gritkit.training.accumulation import MicroBatch, plain_micro_batch

Embed = Callable[[EmbeddingBatch], torch.Tensor]


class RandContext:
    """Capture the CPU (and CUDA) random state now; ``with`` it to replay that state, leaving the outside untouched."""

    def __init__(self) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._fork: AbstractContextManager | None = None

    def __enter__(self) -> None:
        devices = list(range(len(self.cuda_states))) if self.cuda_states is not None else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def split_batch(batch: EmbeddingBatch, chunk_size: int) -> list[EmbeddingBatch]:
    """Row chunks of a tokenised batch (padding columns kept: they are masked out anyway)."""
    return [EmbeddingBatch(batch.input_ids[i:i + chunk_size], batch.attention_mask[i:i + chunk_size],
                           batch.pooling_mask[i:i + chunk_size]) for i in range(0, len(batch.input_ids), chunk_size)]


def gradcache_backward(
    embed: Embed,
    inputs: Sequence[Sequence[EmbeddingBatch]],
    loss_fn: Callable[..., torch.Tensor],
    *,
    micro_batch: MicroBatch = plain_micro_batch,
) -> torch.Tensor:
    """Accumulate into the parameters' ``.grad`` the gradient of ``loss_fn(*embeddings)``; returns the loss.

    ``inputs`` holds, per input kind (e.g. queries, passages), its chunks; ``loss_fn`` receives one
    concatenated embedding tensor per kind. Each chunk's re-embedding and backward run inside
    ``micro_batch(last)`` (e.g. ``StepBackward.micro_batch``), ``last`` true for the final chunk only,
    so data-parallel gradients are exchanged, and a DeepSpeed engine steps, once.
    """
    states: list[list[RandContext]] = []
    embeddings: list[torch.Tensor] = []
    with torch.no_grad():
        for chunks in inputs:
            states.append([])
            parts = []
            for chunk in chunks:
                states[-1].append(RandContext())
                parts.append(embed(chunk))
            embeddings.append(torch.cat(parts).detach().requires_grad_())
    loss = loss_fn(*embeddings)
    loss.backward()  # only to the detached embeddings: no parameter is touched here

    jobs = [(chunk, state, grad) for chunks, kind_states, leaf in zip(inputs, states, embeddings)
            for chunk, state, grad in zip(chunks, kind_states, leaf.grad.split([len(c.input_ids) for c in chunks]))]
    for index, (chunk, state, grad) in enumerate(jobs):
        with state, micro_batch(index == len(jobs) - 1) as backward:
            # d(sum(e * g))/d(theta) = g^T de/d(theta): the chain rule with the cached gradient g
            backward((embed(chunk) * grad).sum())
    return loss.detach()
