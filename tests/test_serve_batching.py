"""The server's queues on their own, with a tiny random model: batching is exact and isolates
failures; the generation queue is bounded and a cancelled job stops producing."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gritkit.serve.batching import EmbeddingBatcher, GenerationWorker, QueueFull


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


def test_generation_queue_is_bounded_and_frees_places_when_jobs_end():
    release = threading.Event()

    def blocked():
        release.wait(10)
        yield "done"

    async def main():
        worker = GenerationWorker(slots=1, max_queue=1)
        first, second = worker.submit(blocked), worker.submit(blocked)
        with pytest.raises(QueueFull):
            worker.submit(blocked)
        release.set()
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
