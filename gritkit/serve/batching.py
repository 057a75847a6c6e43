"""Keeping the model busy without blocking the event loop.

* :class:`EmbeddingBatcher` gathers concurrent embedding requests for a short window and
  runs them as one ``model.encode`` call in a worker thread.
* :class:`GenerationWorker` runs generations in a few worker threads behind a bounded
  queue; text pieces flow back to the event loop as they are produced, and a cancelled
  job (client gone) stops at the next piece, freeing its slot.

Both refuse work with :class:`QueueFull` instead of queueing without limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from gritkit.model import GritLM


class QueueFull(Exception):
    """The queue is at capacity; the client should retry later."""


# ---------------------------------------------------------------- embeddings

@dataclass
class _EmbeddingJob:
    texts: list[str]
    instruction: str
    future: asyncio.Future = field(repr=False)


class EmbeddingBatcher:
    """Micro-batch embedding requests: one ``encode`` call per window of up to ``max_batch_size`` texts.

    Each request keeps its own instruction (``encode`` takes one per text), and results are
    exactly what ``model.encode`` returns for those texts (normalised, float32).
    """

    def __init__(self, model: GritLM, *, max_batch_size: int = 32, window_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int], None] | None = None):
        self.model = model
        self.max_batch_size, self.window = max_batch_size, window_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda size: None)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="gritkit-embed")
        self.queue: asyncio.Queue[_EmbeddingJob] = asyncio.Queue()
        self.pending = 0  # requests queued or being encoded
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def encode(self, texts: list[str], instruction: str = "") -> np.ndarray:
        """Embed ``texts`` with the next batch; raises :class:`QueueFull` when too many requests wait."""
        if self.pending >= self.max_queue:
            raise QueueFull("embeddings")
        self.pending += 1
        try:
            future = asyncio.get_running_loop().create_future()
            self.queue.put_nowait(_EmbeddingJob(texts, instruction, future))
            return await future
        finally:
            self.pending -= 1

    async def _serve(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            size = len(jobs[0].texts)
            if size < self.max_batch_size and self.window > 0:
                await asyncio.sleep(self.window)  # let concurrent requests join this batch
            while size < self.max_batch_size and not self.queue.empty():
                jobs.append(self.queue.get_nowait())
                size += len(jobs[-1].texts)
            jobs = [job for job in jobs if not job.future.done()]  # drop requests whose client left
            if jobs:
                await self._run(jobs)

    async def _run(self, jobs: list[_EmbeddingJob]) -> None:
        texts = [text for job in jobs for text in job.texts]
        instructions = [job.instruction for job in jobs for _ in job.texts]
        encode = partial(self.model.encode, texts, instructions, batch_size=self.max_batch_size, truncate=False)
        try:
            self.on_batch(len(texts))
            vectors = await asyncio.get_running_loop().run_in_executor(self.executor, encode)
        except Exception as error:
            if len(jobs) > 1:  # find whose input failed without failing the others
                for job in jobs:
                    await self._run([job])
            elif not jobs[0].future.done():
                jobs[0].future.set_exception(error)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(vectors[start:start + len(job.texts)])
            start += len(job.texts)


# ---------------------------------------------------------------- generation

_DONE = object()


class GenerationJob:
    """A generation queued or running in a worker thread; iterate it (async) for its pieces."""

    def __init__(self) -> None:
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Ask the worker to stop at the next piece (or never start); safe to call twice."""
        self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            item = await self.items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class GenerationWorker:
    """Run generations ``slots`` at a time in threads, with at most ``max_queue`` more waiting."""

    def __init__(self, *, slots: int = 1, max_queue: int = 256):
        self.executor = ThreadPoolExecutor(slots, thread_name_prefix="gritkit-generate")
        self.capacity = slots + max_queue
        self.pending = 0  # queued or running; changed on the event loop only
        self.active = 0

    @property
    def waiting(self) -> int:
        return self.pending - self.active

    def submit(self, produce: Callable[[], Iterable[Any]]) -> GenerationJob:
        """Queue ``produce`` (called in a worker thread; its items stream back), or raise :class:`QueueFull`."""
        if self.pending >= self.capacity:
            raise QueueFull("generation")
        loop = asyncio.get_running_loop()
        job = GenerationJob()
        self.pending += 1

        def deliver(callback: Callable, *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop closed during shutdown; nobody is listening
                pass

        def run() -> None:
            deliver(self._count_active, 1)
            try:
                if not job.cancelled.is_set():
                    for item in produce():
                        deliver(job.items.put_nowait, item)
                        if job.cancelled.is_set():  # checked between pieces: a gone client frees the slot
                            break
            except Exception as error:
                deliver(job.items.put_nowait, error)
            finally:
                deliver(job.items.put_nowait, _DONE)
                deliver(self._finish)

        self.executor.submit(run)
        return job

    def _count_active(self, change: int) -> None:
        self.active += change

    def _finish(self) -> None:
        self.active -= 1
        self.pending -= 1

    def stop(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
