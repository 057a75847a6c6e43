"""Run named tasks on one model and save one record per task (plus generations, where a task has them)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gritkit import GritLM
from gritkit.eval.encoders import Encoder, as_encoder
from gritkit.specs import load_model
from gritkit.prompts import instruction_for
from gritkit.results import Record, run_facts, save_records
from gritkit.eval.tasks import TASKS, parse_tasks

logger = logging.getLogger(__name__)


def git_commit() -> str:
    """The repository's commit (with "-dirty" for uncommitted changes), or "unknown"."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def outputs_path(output: str | Path, task: str) -> Path:
    """Where a task's generations go, beside the results file: ``x.json`` -> ``x.<task>.jsonl``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.{task.replace(':', '-')}.jsonl")


def run_task(model: GritLM | Encoder, spec: str, *, limit: int | None = None, chat: bool = True):
    """Run one task spec ("stsb", "bbh:navigate") and return its :class:`~gritkit.results.Score`."""
    name, _, variant = spec.partition(":")
    task = TASKS[name]
    if task.kind == "embedding":
        instruction = task.instruction if task.instruction is not None else instruction_for(name)
        return task.run(as_encoder(model), instruction=instruction, limit=limit)
    options = {task.variant: variant.split("+")} if variant else {}
    return task.run(model, limit=limit, chat=chat, **options)


def evaluate(
    model: str | GritLM | Encoder,
    tasks: str | Sequence[str],
    *,
    limit: int | None = None,
    chat: bool = True,
    output: str | Path | None = None,
    name: str | None = None,
    raise_errors: bool = True,
) -> list[Record]:
    """Evaluate ``model`` (a spec such as ``"default"`` or ``"st:<dir>"``, or a loaded model) on ``tasks``.

    ``tasks`` is a comma-separated string or a list of names (groups: embedding, generative, all).
    Records are saved to ``output`` after every task, so an interrupted run keeps what it finished.
    Generative tasks are skipped for sentence-transformers models. With ``raise_errors=False`` a
    failing task is logged and the run goes on.
    """
    specs = parse_tasks(tasks if isinstance(tasks, str) else ",".join(tasks))
    if isinstance(model, str):
        model = load_model(model, embedding_only=True)
    label = name or model.name
    commit = git_commit()
    records: list[Record] = []
    for spec in specs:
        if TASKS[spec.split(":")[0]].kind == "generative" and not isinstance(model, GritLM):
            logger.warning("skipping %s: a generative task needs a GritLM, not %s", spec, type(model).__name__)
            continue
        start = time.perf_counter()
        try:
            score = run_task(model, spec, limit=limit, chat=chat)
        except Exception as error:
            if raise_errors:
                raise
            logger.error("task %s failed: %s: %s", spec, type(error).__name__, error)
            continue
        record = Record(label, spec, score.metric, score.value, score.n, round(time.perf_counter() - start, 2),
                        commit, limit, score.extra, run_facts())
        records.append(record)
        print(f"{spec}: {score.metric} = {score.value:.4f} (n={score.n}, {record.seconds:.0f} s)", file=sys.stderr)
        if output is not None:
            save_records(records, output)
            if score.outputs:
                with outputs_path(output, spec).open("w") as file:
                    file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in score.outputs)
    return records
