"""``gritkit eval`` and ``gritkit report``: thin CLI over :mod:`gritkit.eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("report")(report_command)


def eval_command(
    model: Annotated[str, typer.Option("--model", "-m", help="'default', a model/adapter dir or .gguf, or st:<sentence-transformers dir> (st:minilm)")] = "default",
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma-separated tasks or groups (embedding, generative, all); bbh:<task> for one BBH task")] = "embedding",
    limit: Annotated[Optional[int], typer.Option(help="Evaluate a fixed random subset of N examples (queries) per task")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Results JSON (generations go beside it)")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name in the results (default: the spec)")] = None,
    chat: Annotated[bool, typer.Option(help="Prompt generative tasks in the model's chat format")] = True,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (1 is fastest on a few shared, busy cores)")] = None,
    list_tasks: Annotated[bool, typer.Option("--list", help="List the tasks and exit")] = False,
) -> None:
    """Evaluate a model on embedding and generative tasks; prints a table, saves JSON records."""
    from gritkit import ModelLoadError
    from gritkit.eval import TASKS, evaluate
    from gritkit.eval.report import markdown_table
    from gritkit.eval.tasks import parse_tasks

    if list_tasks:
        for task_name, task in TASKS.items():
            typer.echo(f"{task_name:18} {task.kind:10} {task.about}")
        return
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        specs = parse_tasks(tasks)
        if limit is not None and limit < 1:
            raise ValueError("--limit must be >= 1")
        records = evaluate(model, specs, limit=limit, chat=chat, output=output, name=name, raise_errors=False)
    except (ModelLoadError, ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    if records:
        typer.echo(markdown_table({(record.model, record.task): record for record in records}))
    if output is not None:
        typer.echo(f"saved {len(records)} records to {output}", err=True)
    done = {record.task for record in records}
    missing = [spec for spec in specs if spec not in done and (TASKS[spec.split(':')[0]].kind == "embedding" or not model.startswith("st:"))]
    if missing:
        typer.secho(f"failed: {', '.join(missing)}", fg="red", err=True)
        raise typer.Exit(1)


def report_command(
    results: Annotated[list[Path], typer.Argument(help="Results JSON files from gritkit eval")],
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Write report.md and report.png here")] = None,
) -> None:
    """Compare results files: a Markdown table (printed) and a bar chart PNG."""
    from gritkit.eval.report import write_report

    try:
        text = write_report(results, output_dir)
    except (OSError, ValueError, TypeError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    typer.echo(text)
    if output_dir is not None:
        typer.echo(f"wrote {output_dir / 'report.md'} and {output_dir / 'report.png'}", err=True)
