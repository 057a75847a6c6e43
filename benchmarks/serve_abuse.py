"""Careless and hostile clients against a live `gritkit serve` on 127.0.0.1 (issue 15), one bounded case at a time.

Cases: abandoned chat / streamed completion / embeddings / RAG (work must stop within 1 s of the
disconnect, and the next small request must not wait behind it); over-budget requests (5 MB input,
too many inputs or tokens, 60k-token RAG query, a query over the context: refused with a 4xx in
< 0.5 s, without tokenising); server memory back within 10% of its level before them; half-sent
bodies (408 after --read-timeout); HEAD /health; a short chat's latency while a long generation runs
(p95 under 5x its idle p95); SIGTERM with long work in flight (exit within seconds). Every response's
status is counted: there must be no 5xx.

"Stopped within" is measured from the client's disconnect to the moment /metrics shows the queue and
the generation slots empty (polled every 50 ms), so it includes up to one poll.

Usage:
    python benchmarks/serve_abuse.py                    # small sizes, about 2 minutes on 2 CPU cores
    python benchmarks/serve_abuse.py --long-tokens 2000 --samples 20
Prints a table and writes benchmarks/results/serve_abuse.json (with commit, command, CPU, threads, date).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_tables  # noqa: E402
from common import launched_server, report  # noqa: E402

STATUSES: list[int] = []  # every status the server answered in this run
SERVER_ERRORS: list[str] = []


def record(response: httpx.Response) -> httpx.Response:
    STATUSES.append(response.status_code)
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                             f"{response.text[:200]}")
    return response


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def busy(http: httpx.Client) -> float:
    """Requests queued, or whose work is still inside the model (cancelled work counts until it has stopped)."""
    return sum(metric(http, f'gritkit_{name}{{{label}="{worker}"}}') for worker in ("embeddings", "generation", "rag")
               for name, label in (("queue_depth", "queue"), ("model_busy", "worker")))


def seconds_until_idle(http: httpx.Client, limit: float = 120) -> float:
    start = time.monotonic()
    while busy(http) and time.monotonic() - start < limit:
        time.sleep(0.05)
    return time.monotonic() - start


def timed_post(http: httpx.Client, path: str, body: dict) -> tuple[float, int]:
    start = time.perf_counter()
    response = record(http.post(path, json=body))
    return time.perf_counter() - start, response.status_code


def abandoned(url: str, http: httpx.Client, path: str, body: dict, after: float) -> dict:
    """Send, hang up after ``after`` s; how long until the server is idle, and how long a small request then takes."""
    stream = bool(body.get("stream"))
    try:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(after, connect=10)) as impatient:
            if stream:
                with impatient.stream("POST", path, json=body) as response:
                    STATUSES.append(response.status_code)
                    deadline = time.monotonic() + after
                    for _ in response.iter_lines():
                        if time.monotonic() > deadline:
                            break
            else:
                record(impatient.post(path, json=body))
                raise SystemExit(f"{path} answered within {after} s: make the abandoned request longer")
    except httpx.TimeoutException:
        pass
    stop = seconds_until_idle(http)
    small = {"/v1/embeddings": ("/v1/embeddings", {"input": "word"})}.get(
        path, ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
    next_seconds, status = timed_post(http, *small)
    return {"stop_s": stop, "next_request_s": next_seconds, "next_status": status}


def server_rss(process: subprocess.Popen) -> float:
    return psutil.Process(process.pid).memory_info().rss / 2**20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def short_chat_latencies(http: httpx.Client, samples: int) -> list[float]:
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4, "temperature": 0}
    return [timed_post(http, "/v1/chat/completions", body)[0] for _ in range(samples)]


def half_sent_bodies(url: str, count: int, read_timeout: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=read_timeout + 10)
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"input\": ")
        sockets.append(sock)
    start = time.monotonic()
    statuses = []
    for sock in sockets:
        with sock:
            reply = sock.recv(65536).decode(errors="replace")
            statuses.append(int(reply.split()[1]) if reply.startswith("HTTP/1.1") else 0)
    STATUSES.extend(statuses)
    return {"answered_408": sum(status == 408 for status in statuses), "all_closed_s": time.monotonic() - start}


def rag_index(directory: Path) -> None:
    from gritkit import GritLM
    from gritkit.rag import Index

    with Index.open(directory, GritLM.from_pretrained()) as index:
        index.add([{"id": "paris", "text": "Paris is the capital of France."},
                   {"id": "cats", "text": "Cats are small domesticated felines."}])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-tokens", type=int, default=1500, help="max_tokens of the abandoned generations")
    parser.add_argument("--after", type=float, default=1.5, help="seconds before an abandoning client hangs up")
    parser.add_argument("--samples", type=int, default=10, help="short chats per latency measurement")
    parser.add_argument("--half-sent", type=int, default=50, help="connections that never finish their body")
    parser.add_argument("--read-timeout", type=float, default=2.0)
    args = parser.parse_args()

    rows: list[dict] = []

    def row(case: str, measure: str, value: float, target: str, ok: bool) -> None:
        rows.append({"case": case, "measure": measure, "value": round(value, 3), "target": target,
                     "pass": "yes" if ok else "NO"})

    with tempfile.TemporaryDirectory() as tmp:
        rag_index(Path(tmp) / "index")
        server_args = ("--index", str(Path(tmp) / "index"), "--read-timeout", str(args.read_timeout))
        with launched_server(*server_args) as (process, url), httpx.Client(base_url=url, timeout=120) as http:
            chat = {"messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
                    "max_tokens": args.long_tokens, "temperature": 0}
            sentence = "The quick brown fox jumps over the lazy dog. "
            # Warm up every path once, then take the memory baseline.
            timed_post(http, "/v1/embeddings", {"input": [sentence * 50] * 4})
            timed_post(http, "/v1/chat/completions", {**chat, "max_tokens": 8})
            timed_post(http, "/v1/rag", {"query": "What is the capital of France?", "max_tokens": 4})
            warm_rss = server_rss(process)

            # 1. Abandoned work stops, and the next small request does not wait behind it.
            for case, path, body in [
                ("abandoned chat", "/v1/chat/completions", chat),
                ("abandoned streamed completion", "/v1/completions",
                 {"prompt": "1, 2, 3,", "max_tokens": args.long_tokens, "stream": True}),
                ("abandoned embeddings (8 x 1k tokens)", "/v1/embeddings", {"input": [sentence * 100] * 8}),
                ("abandoned embedding (one 2k-token input)", "/v1/embeddings", {"input": sentence * 200}),
                ("abandoned RAG (2k-token query)", "/v1/rag", {"query": sentence * 200, "max_tokens": 200}),
            ]:
                result = abandoned(url, http, path, body, args.after)
                row(case, "work stopped after disconnect (s)", result["stop_s"], "< 1", result["stop_s"] < 1)
                row(case, "next small request (s)", result["next_request_s"], "200", result["next_status"] == 200)

            after_abandoned_rss = server_rss(process)
            row("memory after the abandoned work", "RSS vs warm (%)", 100 * (after_abandoned_rss - warm_rss) / warm_rss,
                f"(informative; warm {warm_rss:.0f} MiB)", True)

            # 2. Over-budget requests: refused fast, before tokenising; memory comes back.
            baseline_rss = server_rss(process)
            refusals = [
                ("5 MB embedding input", "/v1/embeddings", {"input": "word " * 1_000_000}),
                ("7.8k-token embedding input", "/v1/embeddings", {"input": sentence * 780}),
                ("2048 inputs, 60k tokens", "/v1/embeddings", {"input": [sentence * 3] * 2048}),
                ("60k-token RAG query", "/v1/rag", {"query": sentence * 6000}),
                ("8.4k-token RAG query", "/v1/rag", {"query": sentence * 840}),
                ("chat over the context", "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": sentence * 900}], "max_tokens": 16}),
            ]
            for case, path, body in refusals:
                seconds, status = timed_post(http, path, body)
                row(case, "refused in (s)", seconds, "< 0.5, 4xx", seconds < 0.5 and 400 <= status < 500)
            six = [threading.Thread(target=timed_post, args=(http, *refusals[0][1:])) for _ in range(6)]
            start = time.perf_counter()
            for thread in six:
                thread.start()
            for thread in six:
                thread.join()
            row("six 5 MB inputs at once", "all refused in (s)", time.perf_counter() - start, "< 3 (6 x 5 MB upload)",
                time.perf_counter() - start < 3)
            for _ in range(16):  # the "22 rejected requests": memory must not grow with them
                timed_post(http, *refusals[0][1:])
            after_rss = server_rss(process)
            row("memory after 28 over-budget requests", "RSS vs before them (%)",
                100 * (after_rss - baseline_rss) / baseline_rss, f"< 10 (before: {baseline_rss:.0f} MiB)",
                after_rss < 1.1 * baseline_rss)

            # 3. Slow bodies, HEAD.
            result = half_sent_bodies(url, args.half_sent, args.read_timeout)
            row(f"{args.half_sent} half-sent bodies", "answered 408", result["answered_408"], str(args.half_sent),
                result["answered_408"] == args.half_sent)
            row(f"{args.half_sent} half-sent bodies", "all closed after (s)", result["all_closed_s"],
                f"< read timeout + 1 ({args.read_timeout + 1:g})", result["all_closed_s"] < args.read_timeout + 1)
            head = record(http.head("/health")).status_code
            row("HEAD /health", "status", head, "200", head == 200)

            # 4. Fairness: a short chat while a long generation streams.
            idle = short_chat_latencies(http, args.samples)
            with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as long:
                lines = long.iter_lines()
                next(lines)
                loaded = short_chat_latencies(http, args.samples)
                still_running = metric(http, "gritkit_active_generations") == 1
            seconds_until_idle(http)
            ratio = percentile(loaded, 0.95) / percentile(idle, 0.95)
            row("short chat, idle", "p50 / p95 (s)", statistics.median(idle), f"p95 {percentile(idle, 0.95):.3f}", True)
            row("short chat beside a long generation", "p50 / p95 (s)", statistics.median(loaded),
                f"p95 {percentile(loaded, 0.95):.3f}", still_running)
            row("short chat beside a long generation", "p95 / idle p95", ratio, "< 5", ratio < 5)

        # 5. SIGTERM with a long generation in flight.
        with launched_server("--graceful-timeout", "2") as (process, url), httpx.Client(base_url=url) as http:
            def in_flight() -> None:
                with contextlib.suppress(httpx.HTTPError):  # the server may close the connection on its way out
                    record(httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=300))

            thread = threading.Thread(target=in_flight, daemon=True)
            thread.start()
            while metric(http, "gritkit_active_generations") < 1:
                time.sleep(0.05)
            start = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(60)
            exited = time.monotonic() - start
            row("SIGTERM with a long generation in flight", "exited after (s)", exited, "< 5 (graceful timeout 2)",
                exited < 5)

    errors = sum(status >= 500 for status in STATUSES)
    row("whole run", "5xx responses", errors, f"0 of {len(STATUSES)}", errors == 0)
    report("serve_abuse", rows, {"server_errors": SERVER_ERRORS}, markdown=doc_tables.serve_abuse)


if __name__ == "__main__":
    main()
