"""One optimizer step, many backwards: only the step's last backward syncs gradients (and steps DeepSpeed).

A GRIT step runs several forward+backward passes before ``optimizer.step()``: every GradCache chunk,
every RAG question, every generative chunk. accelerate handles them per backend:

* DDP and FSDP read their "sync gradients" flag at forward time, so ``accelerator.no_sync(model)``
  must wrap the forward and the backward of every pass but the last;
* under DeepSpeed, ``accelerator.backward`` calls ``engine.backward`` and then ``engine.step()``
  whenever ``accelerator.sync_gradients`` is true (``no_sync`` does nothing under ZeRO-2/3), so
  ``sync_gradients`` must be false for every pass but the last, or the engine steps once per pass.

``StepBackward.micro_batch(last)`` does both, and every backward in ``gritkit.training`` goes through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

Backward = Callable[[torch.Tensor], None]
MicroBatch = Callable[[bool], AbstractContextManager[Backward]]


@contextmanager
def plain_micro_batch(last: bool) -> Iterator[Backward]:
    """Outside accelerate (one process, no wrapper): every pass is a plain ``Tensor.backward``."""
    yield torch.Tensor.backward


class StepBackward:
    """The accumulation boundary of one optimizer step on an ``accelerate.Accelerator``.

    Example::

        backwards = StepBackward(accelerator, model)
        for position, batch in enumerate(chunks):
            with backwards.micro_batch(last=position == len(chunks) - 1) as backward:
                backward(loss_of(model(batch)))
        optimizer.step()   # under DeepSpeed a no-op: the engine stepped in the last backward
    """

    def __init__(self, accelerator, model: torch.nn.Module):
        self.accelerator, self.model = accelerator, model

    @contextmanager
    def micro_batch(self, last: bool) -> Iterator[Backward]:
        """Run one pass's forward and backward inside; ``last`` marks the step's final backward."""
        accelerator = self.accelerator
        accelerator.sync_gradients = last  # read by accelerator.backward under DeepSpeed: step only at the boundary
        try:
            with nullcontext() if last else accelerator.no_sync(self.model):
                yield accelerator.backward
        finally:
            accelerator.sync_gradients = True  # clip_grad_norm_, reduce and save_state expect the synced state
