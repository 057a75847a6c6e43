"""The server's queues on their own, with a tiny random model: batching is exact and isolates
failures; the generation queue is bounded and a cancelled job stops producing."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gritkit.serve.batching import (Cancelled, EmbeddingBatcher, GenerationWorker, QueueFull, Ticket, checking,
                                    install_stop_checks)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model("llama")


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_with_different_instructions_share_one_encode_call(tiny):
    requests = [(["first text", "second text"], ""), (["a query"], "Retrieve passages"), (["third"], "Classify")]
    batch_sizes: list[int] = []

    async def main():
        batcher = EmbeddingBatcher(tiny, max_batch_size=32, window_ms=50, on_batch=batch_sizes.append)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.encode(texts, instruction) for texts, instruction in requests))
        finally:
            await batcher.stop()

    results = run(main())
    assert batch_sizes == [4]  # all four texts in one forward pass
    for (texts, instruction), vectors in zip(requests, results):
        np.testing.assert_allclose(vectors, tiny.encode(texts, instruction=instruction), atol=1e-5)


def test_batches_stop_growing_at_max_batch_size(tiny):
    batch_sizes: list[int] = []

    async def main():
        batcher = EmbeddingBatcher(tiny, max_batch_size=2, window_ms=50, on_batch=batch_sizes.append)
        batcher.start()
        try:
            await asyncio.gather(*(batcher.encode([f"text {i}"]) for i in range(5)))
        finally:
            await batcher.stop()

    run(main())
    assert sorted(batch_sizes, reverse=True) == [2, 2, 1]


def test_one_failing_request_does_not_fail_the_rest_of_its_batch(tiny):
    async def main():
        batcher = EmbeddingBatcher(tiny, window_ms=50)
        batcher.start()
        try:
            requests = (batcher.encode(["fine"]), batcher.encode(["   "]), batcher.encode(["also fine"]))
            return await asyncio.gather(*requests, return_exceptions=True)
        finally:
            await batcher.stop()

    good, bad, also_good = run(main())
    assert isinstance(bad, ValueError)
    np.testing.assert_allclose(good, tiny.encode(["fine"]), atol=1e-5)
    np.testing.assert_allclose(also_good, tiny.encode(["also fine"]), atol=1e-5)


def test_embedding_queue_refuses_work_beyond_max_queue(tiny):
    async def main():
        batcher = EmbeddingBatcher(tiny, max_queue=2, window_ms=200)
        batcher.start()
        try:
            waiting = [asyncio.ensure_future(batcher.encode([f"text {i}"])) for i in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFull):
                await batcher.encode(["one too many"])
            await asyncio.gather(*waiting)
        finally:
            await batcher.stop()

    run(main())


@pytest.fixture
def gate():
    """Generation jobs (``gate.job``) that each yield "done" once ``gate.open()`` is called."""
    class Gate:
        def __init__(self):
            self.opened = threading.Event()

        def job(self):
            self.opened.wait(10)
            yield "done"

        def open(self):
            self.opened.set()

    gate = Gate()
    yield gate
    gate.open()  # a failed test must not leave worker threads waiting


def test_generation_queue_is_bounded_and_frees_places_when_jobs_end(gate):
    async def main():
        worker = GenerationWorker(slots=1, max_queue=1)
        first, second = worker.submit(gate.job), worker.submit(gate.job)
        with pytest.raises(QueueFull):
            worker.submit(gate.job)
        gate.open()
        assert [item async for item in first] == ["done"] and [item async for item in second] == ["done"]
        await asyncio.sleep(0.05)  # the workers report their end through the loop
        assert worker.pending == 0 and worker.active == 0
        worker.submit(lambda: iter(["again"]))  # room again
        worker.stop()

    run(main())


def test_cancelled_job_stops_between_pieces():
    produced: list[int] = []

    def endless():
        for index in range(10_000):
            produced.append(index)
            time.sleep(0.002)
            yield str(index)

    async def main():
        worker = GenerationWorker(slots=1)
        job = worker.submit(endless)
        async for piece in job:
            if piece == "2":
                job.cancel()
                break
        for _ in range(200):
            if worker.active == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.active == 0 and worker.pending == 0
        worker.stop()

    run(main())
    assert len(produced) < 100


def test_errors_in_the_worker_reach_the_request():
    def failing():
        yield "partial"
        raise ValueError("bad sampling option")

    async def main():
        worker = GenerationWorker()
        pieces = []
        with pytest.raises(ValueError, match="bad sampling option"):
            async for piece in worker.submit(failing):
                pieces.append(piece)
        worker.stop()
        return pieces

    assert run(main()) == ["partial"]


# ---------------------------------------------------------------- budgets, cancellation, fairness

def test_queues_are_bounded_in_tokens_as_well_as_requests(gate):
    async def main():
        worker = GenerationWorker(slots=1, max_queue=10, max_queued_tokens=100)
        first = worker.submit(gate.job, tokens=60)
        with pytest.raises(QueueFull):
            worker.submit(gate.job, tokens=60)  # 120 tokens would be over 100, though 10 places are free
        small = worker.submit(gate.job, tokens=40)
        gate.open()
        assert [item async for item in first] == ["done"] and [item async for item in small] == ["done"]
        worker.submit(lambda: iter(["again"]), tokens=100)  # all tokens free again
        worker.stop()

    run(main())


def test_a_cancelled_queued_job_leaves_the_queue_at_once(gate):
    async def main():
        worker = GenerationWorker(slots=1, max_queue=1)
        running, queued = worker.submit(gate.job), worker.submit(gate.job)
        queued.cancel()
        assert worker.pending == 1  # its place is free before the running job ends
        worker.submit(gate.job)
        gate.open()
        assert [item async for item in running] == ["done"] and [item async for item in queued] == []
        worker.stop()

    run(main())


def test_a_short_generation_is_interleaved_with_a_long_one():
    long_produced: list[int] = []

    def long():
        for index in range(2000):
            long_produced.append(index)
            time.sleep(0.001)
            yield str(index)

    async def main():
        worker = GenerationWorker(slots=2)
        long_job = worker.submit(long)
        pieces = long_job.__aiter__()
        await pieces.__anext__()
        short = [piece async for piece in worker.submit(lambda: iter(["a", "b", "c"]))]
        produced_meanwhile = len(long_produced)
        long_job.cancel()
        worker.stop()
        return short, produced_meanwhile

    short, produced_meanwhile = run(main())
    assert short == ["a", "b", "c"]
    assert produced_meanwhile < 50  # one token of the long job per token of the short one, not 2000 first


@pytest.fixture
def layer_calls(tiny):
    """A running count of the tiny model's first-layer forward calls."""
    calls = [0]
    handle = tiny.backbone.layers[0].register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    yield calls
    handle.remove()


def test_cancelling_a_real_generation_stops_its_forward_passes(tiny, layer_calls):
    calls = layer_calls

    async def main():
        worker = GenerationWorker(slots=1)
        job = worker.submit(lambda: tiny.stream_text([1, 2, 3], max_new_tokens=400, temperature=1.0,
                                                                    seed=0))
        received = 0
        async for _ in job:
            received += 1
            if received == 3:
                job.cancel()
                at_cancel = calls[0]
                break
        for _ in range(200):
            if worker.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.pending == 0 and worker.active == 0
        worker.stop()
        return calls[0] - at_cancel

    # The worker may be one step (a token) ahead of the client when it cancels, never many.
    assert run(main()) <= 2


def test_a_generation_past_its_time_limit_ends_by_itself(tiny):
    async def main():
        worker = GenerationWorker(slots=1)
        ticket = Ticket(timeout=0.1)
        job = worker.submit(lambda: tiny.stream_text([1, 2, 3], max_new_tokens=500, temperature=1.0, seed=0),
                            ticket=ticket)
        pieces = [piece async for piece in job]
        worker.stop()
        return pieces, ticket.expired

    pieces, expired = run(main())
    assert expired and len(pieces) < 500  # stopped by the deadline, not by max_new_tokens


def test_stop_checks_interrupt_an_encode_between_layers(tiny, layer_calls):
    install_stop_checks(tiny)
    calls = layer_calls
    ticket = Ticket()
    ticket.cancel()
    with checking(ticket.should_stop), pytest.raises(Cancelled):
        tiny.encode(["a text"] * 4)
    assert calls[0] == 0
    assert tiny.encode(["a text"]).shape[0] == 1  # outside `checking`, the model is unaffected


def test_a_large_embedding_request_takes_turns_with_a_small_one(tiny):
    finished: list[str] = []

    async def main():
        batcher = EmbeddingBatcher(tiny, max_batch_size=4, window_ms=20)
        batcher.start()

        async def request(name, texts):
            vectors = await batcher.encode(texts)
            finished.append(name)
            return vectors

        try:
            large = asyncio.ensure_future(request("large", [f"text number {i}" for i in range(40)]))
            await asyncio.sleep(0)
            small = await request("small", ["one word"])
            return await large, small
        finally:
            await batcher.stop()

    large, small = run(main())
    assert finished == ["small", "large"]
    np.testing.assert_allclose(large, tiny.encode([f"text number {i}" for i in range(40)]), atol=1e-5)
    np.testing.assert_allclose(small, tiny.encode(["one word"]), atol=1e-5)


def test_a_cancelled_embedding_request_stops_between_batches(tiny):
    batches: list[int] = []

    async def main():
        batcher = EmbeddingBatcher(tiny, max_batch_size=2, window_ms=0, on_batch=batches.append)
        batcher.start()
        ticket = Ticket()
        try:
            work = asyncio.ensure_future(batcher.encode([f"text {i}" for i in range(200)], ticket=ticket))
            while not batches:
                await asyncio.sleep(0.001)
            ticket.cancel()
            with pytest.raises(Cancelled):
                await work
            assert batcher.pending == 0
        finally:
            await batcher.stop()

    run(main())
    assert len(batches) < 20  # of 100


def test_embedding_batches_are_bounded_in_padded_tokens(tiny):
    batch_sizes: list[int] = []

    async def main():
        batcher = EmbeddingBatcher(tiny, max_batch_size=32, max_batch_tokens=100, window_ms=20,
                                   on_batch=batch_sizes.append)
        batcher.start()
        try:
            short = batcher.encode([f"short {i}" for i in range(8)], lengths=[10] * 8)
            long = batcher.encode(["a longer text"] * 2, lengths=[60, 150])
            return await asyncio.gather(short, long)
        finally:
            await batcher.stop()

    short, long = run(main())
    # Batches are padded to their longest text: the 8 short texts fit in 100 tokens but not with the
    # 60-token one (9 x 60); that one cannot share with the 150-token one, which is over the bound alone.
    assert batch_sizes == [8, 1, 1]
    np.testing.assert_allclose(short, tiny.encode([f"short {i}" for i in range(8)]), atol=1e-5)
