"""Shared bits of the benchmark scripts: timing, a results table, JSON output, sample texts."""

from __future__ import annotations

import gzip
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gritkit.paths import data_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit}


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


def report(name: str, rows: list[dict], extra: dict | None = None) -> Path:
    """Print ``rows`` as a table and write them (with machine facts) to benchmarks/results/<name>.json."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=name)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"rows": rows, **(extra or {}), **machine()}, indent=2))
    print(f"wrote {path}")
    return path
