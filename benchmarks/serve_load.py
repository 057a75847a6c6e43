"""Load test for `gritkit serve`: many concurrent clients on loopback, mixed embeddings and short chats.

Phases (each bounded in time):
  1. mixed load: --clients clients, each sending embeddings or (with --chat-fraction) short chats;
  2. embeddings only, against the micro-batched server;
  3. embeddings only, against the same server started with --max-batch-size 1 (one text per forward).
The batched/one-by-one throughput ratio is phase 2 over phase 3. Clients start requests for the
phase's window; requests still running --grace seconds after it are cut off (reported, not counted
as errors). Requests/s = finished requests / time from the phase's start to the last finish.

Usage:
    python benchmarks/serve_load.py --seconds 30                     # starts the servers itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --api-key KEY [--unbatched-url URL]
Prints a table and writes JSON (--output, default benchmarks/results/serve_load.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_tables  # noqa: E402
from common import launched_server, write_results  # noqa: E402

TOPICS = ["the weather", "a football match", "protein folding", "the stock market", "medieval castles",
          "quantum computing", "a recipe for bread", "the history of Rome", "electric cars", "jazz music"]


def sentence(rng: random.Random) -> str:
    return f"A short note number {rng.randrange(10**6)} about {rng.choice(TOPICS)} and {rng.choice(TOPICS)}."


async def load(url: str, api_key: str | None, *, clients: int, seconds: float, chat_fraction: float,
               max_tokens: int, grace: float, seed: int = 0, drain: bool = True) -> dict:
    """Run ``clients`` loops that start requests for ``seconds``; requests still running ``grace``
    seconds later are cut off. Returns per-kind (start, end) times, errors and server batch size."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timings: dict[str, list[tuple[float, float]]] = {"embeddings": [], "chat": []}
    errors: list[str] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=600) as http:
        model = (await http.get("/v1/models")).json()["data"][0]["id"]
        batches_before = batch_counts((await http.get("/metrics")).text)
        start = time.perf_counter()
        stop = start + seconds

        async def client(number: int) -> None:
            rng = random.Random(seed * 1000 + number)
            while time.perf_counter() < stop:
                if rng.random() < chat_fraction:
                    kind, path = "chat", "/v1/chat/completions"
                    body = {"model": model, "messages": [{"role": "user", "content": sentence(rng)}],
                            "max_tokens": max_tokens, "temperature": 0}
                else:
                    kind, path, body = "embeddings", "/v1/embeddings", {"model": model, "input": sentence(rng)}
                sent = time.perf_counter()
                try:
                    response = await http.post(path, json=body)
                except httpx.HTTPError as error:
                    errors.append(f"{kind}: {type(error).__name__} {error}")
                    continue
                if response.status_code != 200:
                    errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
                    continue
                timings[kind].append((sent - start, time.perf_counter() - start))

        tasks = [asyncio.create_task(client(number)) for number in range(clients)]
        _, running = await asyncio.wait(tasks, timeout=seconds + grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        if drain:  # so the next phase does not share the CPU with this one's leftovers
            await wait_until_idle(http)
        batches = batch_counts((await http.get("/metrics")).text)
    texts, calls = (batches[i] - batches_before[i] for i in range(2))
    return {"seconds": seconds, "timings": timings, "errors": errors, "cut_off": len(running),
            "mean_batch": texts / calls if calls else None}


async def wait_until_idle(http: httpx.AsyncClient, timeout: float = 600) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        samples = [line for line in (await http.get("/metrics")).text.splitlines()
                   if line.startswith(("gritkit_queue_depth{", "gritkit_active_generations "))]
        if all(float(line.split()[-1]) == 0 for line in samples):
            return
        await asyncio.sleep(0.5)


def batch_counts(metrics_text: str) -> tuple[float, float]:
    """(texts embedded, encode calls) so far, from the server's batch-size histogram."""
    values = {}
    for line in metrics_text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    return (float(values.get("gritkit_embedding_batch_size_sum", 0)),
            float(values.get("gritkit_embedding_batch_size_count", 0)))


def summary(result: dict) -> dict:
    """Requests/s = finished requests over the time from the phase's start to the last finish."""
    finished = [end for timings in result["timings"].values() for _, end in timings]
    wall = max(finished, default=float("nan"))
    kinds = {}
    for kind, timings in result["timings"].items():
        if timings:
            p50, p95, p99 = np.percentile([end - sent for sent, end in timings], [50, 95, 99])
            kinds[kind] = {"requests": len(timings), "requests_per_s": len(timings) / wall,
                           "p50_s": p50, "p95_s": p95, "p99_s": p99}
    return {"window_s": result["seconds"], "wall_s": wall, "requests": len(finished),
            "requests_per_s": len(finished) / wall, "errors": len(result["errors"]),
            "error_samples": result["errors"][:5], "cut_off_after_grace": result["cut_off"],
            "mean_server_batch": result["mean_batch"], "kinds": kinds}


def print_table(report: dict) -> None:
    print("\n" + doc_tables.serve_load(report))
    cut_off = {phase: report[phase]["cut_off_after_grace"] for phase in doc_tables.SERVE_LOAD_PHASES if phase in report}
    print(f"requests cut off after the grace period: {cut_off}")
    if "batched_vs_one_by_one" in report:
        print(f"\nembeddings throughput, micro-batched vs one-by-one: {report['batched_vs_one_by_one']:.2f}x "
              f"(mean server batch {report['embeddings_batched']['mean_server_batch']:.1f} texts)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--unbatched-url", help="with --url: a server started with --max-batch-size 1")
    parser.add_argument("--api-key", default=os.environ.get("GRITKIT_API_KEY"))
    parser.add_argument("--model", default="default", help="model spec for the servers this script starts")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30, help="duration of the mixed phase")
    parser.add_argument("--ratio-seconds", type=float, default=15, help="duration of each embeddings-only phase")
    parser.add_argument("--chat-fraction", type=float, default=0.25)
    parser.add_argument("--max-tokens", type=int, default=8, help="max_tokens of each chat")
    parser.add_argument("--grace", type=float, default=30, help="seconds requests in flight at the end may finish")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "serve_load.json")
    args = parser.parse_args()

    report: dict = {"clients": args.clients,
                    "system": {"platform": platform.platform(), "load_average_before": os.getloadavg()}}
    run = dict(clients=args.clients, max_tokens=args.max_tokens, grace=args.grace)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(launched_server("--model", args.model))[1]
        print(f"mixed load: {args.clients} clients for {args.seconds:.0f} s against {url}", flush=True)
        report["mixed"] = summary(await load(url, args.api_key, seconds=args.seconds,
                                             chat_fraction=args.chat_fraction, **run))
        print("embeddings only, micro-batched", flush=True)
        report["embeddings_batched"] = summary(await load(url, args.api_key, seconds=args.ratio_seconds,
                                                          chat_fraction=0, seed=1, **run))
    unbatched = args.unbatched_url
    if unbatched or not args.url:
        with contextlib.ExitStack() as stack:
            unbatched = unbatched or stack.enter_context(launched_server("--model", args.model, "--max-batch-size", "1"))[1]
            print("embeddings only, one text per forward (--max-batch-size 1)", flush=True)
            report["embeddings_one_by_one"] = summary(await load(unbatched, args.api_key, seconds=args.ratio_seconds,
                                                                 chat_fraction=0, seed=1, drain=False, **run))
        report["batched_vs_one_by_one"] = (report["embeddings_batched"]["requests_per_s"]
                                           / report["embeddings_one_by_one"]["requests_per_s"])
    report["system"]["load_average_after"] = os.getloadavg()
    print_table(report)
    print(f"\nwrote {write_results(args.output, report)}")


if __name__ == "__main__":
    asyncio.run(main())
