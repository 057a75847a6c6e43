"""What a task returns (:class:`Score`) and what a run saves (:class:`Record`, one JSON object per task)."""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Score:
    """A task's main metric, how many examples it was computed on, and secondary metrics."""

    metric: str
    value: float
    n: int
    extra: dict[str, float] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)  # generations worth saving (open-ended tasks)


@dataclass
class Record:
    """One row of a results file: a model's score on a task, and how it was obtained."""

    model: str
    task: str
    metric: str
    value: float
    n: int
    seconds: float
    commit: str
    limit: int | None = None
    extra: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)  # run_facts() of the run that made it


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_facts() -> dict[str, Any]:
    """How and where this process runs: its command line, CPU model, torch threads and the UTC date."""
    import torch

    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return {"command": shlex.join([program, *sys.argv[1:]]), "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def save_records(records: list[Record], path: str | Path) -> None:
    """Write records as a JSON list (via a temporary file, so a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps([asdict(record) for record in records], indent=1) + "\n")
    temporary.replace(path)


def load_records(path: str | Path) -> list[Record]:
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    try:
        return [Record(**row) for row in rows]
    except TypeError as error:  # a row that is not an object, or with missing or unknown fields
        raise ValueError(f"{path}: not a gritkit eval record ({error})") from None
