"""Keeping the model busy without blocking the event loop, and stopping work nobody waits for.

* :class:`Ticket` is one request's claim on the model: a cancel flag and a deadline. While a
  worker runs a request's work, every decoder layer checks that request's ticket first
  (:func:`install_stop_checks`), so a cancelled or expired request stops within one layer,
  whether it is embedding, prefilling or decoding.
* :class:`EmbeddingBatcher` gathers concurrent embedding requests into ``model.encode`` calls of
  up to ``max_batch_size`` texts, taking texts from the waiting requests in turn, so a request of
  2,000 texts does not hold back a one-word request for more than one batch.
* :class:`GenerationWorker` interleaves up to ``slots`` generations token by token in one thread,
  so a short chat is not stuck behind a long one; text pieces flow back to the event loop.

Both refuse work with :class:`QueueFull` instead of queueing without limit; their queues are
bounded in requests and in tokens.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gritkit.model import GritLM


class QueueFull(Exception):
    """The queue is at capacity (requests or tokens); the client should retry later."""


class Cancelled(Exception):
    """Work stopped because its client left, its time ran out or the server is stopping."""


# ---------------------------------------------------------------- tickets and stop checks

class Ticket:
    """A request's cancel flag and deadline, shared by the event loop and the worker thread."""

    def __init__(self, timeout: float | None = None):
        self.deadline = time.monotonic() + timeout if timeout else None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop this request's work at the next layer or batch (or before it starts); idempotent."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def should_stop(self) -> bool:
        return self.cancelled or self.expired


_running = threading.local()  # the stop check of the work this thread runs now
_installed: weakref.WeakSet = weakref.WeakSet()


def install_stop_checks(model: GritLM) -> None:
    """Make each decoder layer of ``model`` raise :class:`Cancelled` when the running work should stop.

    The check is a thread-local lookup, a no-op outside :func:`checking`, so the library
    itself is unaffected; installing twice is harmless.
    """
    backbone = model.backbone
    for layer in getattr(backbone, "layers", None) or [backbone]:
        if layer not in _installed:
            layer.register_forward_pre_hook(_check_running)
            _installed.add(layer)


def _check_running(module: torch.nn.Module, args: Any) -> None:
    should_stop = getattr(_running, "should_stop", None)
    if should_stop is not None and should_stop():
        raise Cancelled()


@contextmanager
def checking(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Run the body with ``should_stop`` checked before each decoder layer (on this thread)."""
    previous = getattr(_running, "should_stop", None)
    _running.should_stop = should_stop
    try:
        yield
    finally:
        _running.should_stop = previous


class TokenGate:
    """Admission by requests and tokens: at most ``max_requests`` holding at most ``max_tokens``."""

    def __init__(self, name: str, max_requests: int, max_tokens: int | None):
        self.name, self.max_requests, self.max_tokens = name, max_requests, max_tokens
        self.requests = self.tokens = 0
        self._lock = threading.Lock()

    def admit(self, tokens: int) -> None:
        with self._lock:
            if self.requests >= self.max_requests or (
                    self.max_tokens is not None and self.tokens + tokens > self.max_tokens):
                raise QueueFull(self.name)
            self.requests += 1
            self.tokens += tokens

    def release(self, tokens: int) -> None:
        with self._lock:
            self.requests -= 1
            self.tokens -= tokens


# ---------------------------------------------------------------- embeddings

@dataclass(eq=False)
class _EmbeddingJob:
    texts: list[str]
    instruction: str
    future: asyncio.Future = field(repr=False)
    ticket: Ticket
    lengths: list[int]  # tokens per text (0 when unknown)
    vectors: list[np.ndarray] = field(default_factory=list)  # results of the texts done so far

    @property
    def done_count(self) -> int:
        return sum(len(part) for part in self.vectors)


class EmbeddingBatcher:
    """Micro-batch embedding requests: one ``encode`` call per window of up to ``max_batch_size`` texts
    and ``max_batch_tokens`` padded tokens (a single longer text goes alone).

    The token bound keeps each forward pass, and so the time to stop one (a layer), short.
    Each request keeps its own instruction (``encode`` takes one per text), and results are
    exactly what ``model.encode`` returns for those texts (normalised, float32).
    """

    def __init__(self, model: GritLM, *, max_batch_size: int = 32, max_batch_tokens: int | None = None,
                 window_ms: float = 5.0, max_queue: int = 256, max_queued_tokens: int | None = None,
                 on_batch: Callable[[int], None] | None = None):
        self.model = model
        self.max_batch_size, self.max_batch_tokens, self.window = max_batch_size, max_batch_tokens, window_ms / 1000
        self.gate = TokenGate("embeddings", max_queue, max_queued_tokens)
        self.on_batch = on_batch or (lambda size: None)
        self.jobs: collections.deque[_EmbeddingJob] = collections.deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.encoding = 0  # requests in the batch being encoded now (until its work has stopped)
        install_stop_checks(model)

    @property
    def pending(self) -> int:
        """Requests queued or being encoded."""
        return self.gate.requests

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        """Cancel every request and stop; a batch being encoded stops at its next layer."""
        for job in self.jobs:
            job.ticket.cancel()
        if self._task:
            self._task.cancel()

    async def encode(self, texts: list[str], instruction: str = "", *, lengths: list[int] | None = None,
                     ticket: Ticket | None = None) -> np.ndarray:
        """Embed ``texts`` (``lengths``: tokens of each, prompt included) with the next batches.

        Raises :class:`QueueFull` when too many requests or tokens wait, :class:`Cancelled` when
        ``ticket`` is cancelled or expires first. Cancelling the awaiting task cancels the work.
        """
        lengths = lengths or [0] * len(texts)
        tokens = sum(lengths)
        self.gate.admit(tokens)
        ticket = ticket or Ticket()
        job = _EmbeddingJob(texts, instruction, asyncio.get_running_loop().create_future(), ticket, lengths)
        self.jobs.append(job)
        self._arrived.set()
        try:
            return await job.future
        finally:
            ticket.cancel()  # a no-op once done; stops the work if this task was cancelled
            self.gate.release(tokens)

    async def _serve(self) -> None:
        while True:
            if not self.jobs:
                self._arrived.clear()
                await self._arrived.wait()
            if self.window > 0 and sum(len(job.texts) - job.done_count for job in self.jobs) < self.max_batch_size:
                await asyncio.sleep(self.window)  # let concurrent requests join this batch
            self._drop_stopped()
            if self.jobs:
                await self._run(self._next_batch())

    def _drop_stopped(self) -> None:
        for job in [job for job in self.jobs if job.ticket.should_stop() or job.future.done()]:
            self.jobs.remove(job)
            if not job.future.done():
                job.future.set_exception(Cancelled())

    def _fits(self, size: int, longest: int, length: int) -> bool:
        if size == 0:
            return True  # a text longer than max_batch_tokens goes alone
        if size >= self.max_batch_size:
            return False
        return self.max_batch_tokens is None or (size + 1) * max(longest, length) <= self.max_batch_tokens

    def _next_batch(self) -> list[tuple[_EmbeddingJob, int, int]]:
        """(job, first, end) text ranges: one text from each waiting request in turn while the batch has room."""
        taken = {id(job): 0 for job in self.jobs}
        size, longest, added = 0, 0, True
        while added:
            added = False
            for job in self.jobs:
                index = job.done_count + taken[id(job)]
                if index < len(job.texts) and self._fits(size, longest, job.lengths[index]):
                    taken[id(job)] += 1
                    size, longest, added = size + 1, max(longest, job.lengths[index]), True
        self.jobs.rotate(-1)  # the next batch starts with the next request
        return [(job, job.done_count, job.done_count + taken[id(job)]) for job in self.jobs if taken[id(job)]]

    async def _run(self, parts: list[tuple[_EmbeddingJob, int, int]]) -> None:
        texts = [text for job, first, end in parts for text in job.texts[first:end]]
        instructions = [job.instruction for job, first, end in parts for _ in range(first, end)]
        tickets = [job.ticket for job, _, _ in parts]

        def encode() -> np.ndarray:
            with checking(lambda: all(ticket.should_stop() for ticket in tickets)):
                return self.model.encode(texts, instructions, batch_size=self.max_batch_size, truncate=False)

        try:
            self.on_batch(len(texts))
            self.encoding = len(parts)
            try:
                vectors = await asyncio.to_thread(encode)
            finally:
                self.encoding = 0
        except Exception as error:
            if len(parts) > 1 and not isinstance(error, Cancelled):  # find whose input failed, keep the others
                for part in parts:
                    await self._run([part])
            else:
                for job, _, _ in parts:
                    self._fail(job, error)
            return
        start = 0
        for job, first, end in parts:
            job.vectors.append(vectors[start:start + end - first])
            start += end - first
            if job.done_count == len(job.texts):
                self._finish(job)

    def _finish(self, job: _EmbeddingJob) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        if not job.future.done():
            job.future.set_result(np.concatenate(job.vectors))

    def _fail(self, job: _EmbeddingJob, error: Exception) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        if not job.future.done():
            job.future.set_exception(error)


# ---------------------------------------------------------------- generation

_DONE = object()


class GenerationJob:
    """A generation queued or running; iterate it (async) for its pieces."""

    def __init__(self, produce: Callable[[], Iterable[Any]], ticket: Ticket, tokens: int,
                 loop: asyncio.AbstractEventLoop, on_cancel: Callable[[GenerationJob], None]):
        self.produce, self.ticket, self.tokens = produce, ticket, tokens
        self.items: asyncio.Queue = asyncio.Queue()
        self.iterator: Iterator[Any] | None = None
        self._loop, self._on_cancel = loop, on_cancel

    def cancel(self) -> None:
        """Stop at the next layer or token, or never start; safe to call twice."""
        self.ticket.cancel()
        self._on_cancel(self)

    def deliver(self, item: Any) -> None:
        """Hand ``item`` to the event loop (from the worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the loop closed during shutdown; nobody is listening
            pass

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            item = await self.items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class GenerationWorker:
    """Interleave up to ``slots`` generations, one item (token piece) each in turn, in one thread.

    ``produce`` callables return iterables; each step of one runs with its request's ticket
    checked before every decoder layer, so a cancelled or expired job stops within a layer
    and frees its slot. At most ``max_queue`` jobs (and ``max_queued_tokens``) wait beyond the slots.
    """

    def __init__(self, *, slots: int = 4, max_queue: int = 256, max_queued_tokens: int | None = None,
                 name: str = "generation"):
        self.slots = slots
        self.gate = TokenGate(name, slots + max_queue, max_queued_tokens)
        self.queue: collections.deque[GenerationJob] = collections.deque()
        self.running: list[GenerationJob] = []
        self._calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"gritkit-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return self.gate.requests

    @property
    def active(self) -> int:
        return len(self.running)

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def submit(self, produce: Callable[[], Iterable[Any]], *, tokens: int = 0,
               ticket: Ticket | None = None) -> GenerationJob:
        """Queue ``produce`` (called in the worker thread; its items stream back), or raise :class:`QueueFull`."""
        self.gate.admit(tokens)
        job = GenerationJob(produce, ticket or Ticket(), tokens, asyncio.get_running_loop(), self._discard)
        with self._wake:
            self.queue.append(job)
            self._wake.notify()
        return job

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the worker thread and return its result (for thread-bound resources)."""
        future: Future = Future()
        with self._wake:
            self._calls.append((function, future))
            self._wake.notify()
        return future.result()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every job and end the thread; running work stops at its next layer."""
        with self._wake:
            self._stopping = True
            for job in [*self.queue, *self.running]:
                job.ticket.cancel()
            self._wake.notify()
        self._thread.join(timeout)

    def _discard(self, job: GenerationJob) -> None:
        """A queued job cancelled by its client leaves the queue now, freeing its place."""
        with self._wake:
            if job in self.queue:
                self.queue.remove(job)
                self._end(job)

    def _end(self, job: GenerationJob) -> None:
        # free the place first: a client that has seen its stream end may submit again at once
        self.gate.release(job.tokens)
        job.deliver(_DONE)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self.queue or self.running or self._calls):
                    self._wake.wait()
                if self._stopping:
                    for job in [*self.queue, *self.running]:
                        self._close(job)
                    self.queue.clear()
                    self.running.clear()
                    return
                calls = list(self._calls)
                self._calls.clear()
                while len(self.running) < self.slots and self.queue:
                    self.running.append(self.queue.popleft())
                turn = list(self.running)
            for function, future in calls:
                try:
                    future.set_result(function())
                except Exception as error:
                    future.set_exception(error)
            for job in turn:
                if self._step(job):
                    with self._wake:
                        self.running.remove(job)
                        self._close(job)

    def _step(self, job: GenerationJob) -> bool:
        """Produce one item of ``job``; True when the job has ended (done, failed or stopped)."""
        if job.ticket.should_stop():
            return True
        try:
            with checking(job.ticket.should_stop):
                if job.iterator is None:
                    job.iterator = iter(job.produce())
                item = next(job.iterator)
        except StopIteration:
            return True
        except Cancelled:
            return True
        except Exception as error:
            job.deliver(error)
            return True
        job.deliver(item)
        return False

    def _close(self, job: GenerationJob) -> None:
        if job.iterator is not None and hasattr(job.iterator, "close"):
            job.iterator.close()  # frees the generation's key/value cache now
        self._end(job)
