"""Shared bits of the benchmark scripts: timing, a results table, JSON output, sample texts."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gritkit.paths import data_dir
from gritkit.results import run_facts

# Where report() writes; GRITKIT_BENCHMARK_RESULTS points a trial run elsewhere than the committed records.
RESULTS_DIR = Path(os.environ.get("GRITKIT_BENCHMARK_RESULTS") or Path(__file__).resolve().parent / "results")


def best_of(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Mean and standard deviation of wall seconds over ``repeats`` calls (after one warm-up)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.mean(times), statistics.stdev(times) if len(times) > 1 else 0.0


def machine() -> dict:
    """Provenance of a result: commit (and whether the tree was clean), command, CPU, threads, date.

    Records already written under benchmarks/results or results/ do not make the tree dirty, so a run of
    several benchmarks one after another (benchmarks/refresh.sh), or one that rewrites its own record as it
    goes (benchmarks/rag_quality.py), stays clean.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    return {**run_facts(), "cpus": os.cpu_count(), "torch": torch.__version__, "commit": git("rev-parse", "--short", "HEAD"),
            "clean": not git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                               ":(top,exclude)benchmarks/results", ":(top,exclude)results"),
            # the interpreter and the script as typed (a benchmark is run as `python benchmarks/x.py`)
            "command": shlex.join([Path(sys.executable).name, *sys.argv])}


def write_results(path: Path, record: dict) -> Path:
    """Write ``record`` as JSON to ``path``, with this run's :func:`machine` facts under ``provenance``.

    Written to a temporary file first, so a killed run never leaves half a record.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({**record, "provenance": machine()}, indent=2) + "\n")
    temporary.replace(path)
    return path


def medquad_texts(limit: int) -> list[str]:
    """Real passages of mixed length (MedQuAD answers) to embed."""
    texts = []
    with gzip.open(data_dir() / "medquad" / "medquad_qa.jsonl.gz", "rt") as file:
        for line in file:
            answer = json.loads(line)["answer"].strip()
            if answer:
                texts.append(answer)
            if len(texts) == limit:
                break
    return texts


def report(name: str, rows: list[dict], extra: dict | None = None,
           markdown: Callable[[dict], str] | None = None) -> Path:
    """Print ``rows`` as a table and write them (with provenance) to benchmarks/results/<name>.json.

    ``markdown``: the renderer of the table a page shows (benchmarks/doc_tables.py), printed instead.
    """
    record = {"rows": rows, **(extra or {})}
    if markdown:
        print(markdown(record))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=name)
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
        Console().print(table)
    path = write_results(RESULTS_DIR / f"{name}.json", record)
    print(f"wrote {path}")
    return path


@contextlib.contextmanager
def launched_server(*extra: str):
    """`python -m gritkit serve *extra` on a free loopback port; yields (process, base URL).

    On exit the server is stopped gracefully (SIGTERM), then killed if it is still busy.
    """
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([sys.executable, "-m", "gritkit", "serve", "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "warning", *extra], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise SystemExit("server did not become healthy")
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
