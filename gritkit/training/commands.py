"""CLI: ``gritkit train [config.yaml] [--option value ...] [--resume]``, ``gritkit data build OUTPUT``
and ``gritkit export-adapter RUN_DIR DESTINATION``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from gritkit.training.config import TrainingConfig


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``--max-steps 10 --lora false --no-gather-negatives --embedding-data a.jsonl --embedding-data b.jsonl``
    -> options; values are read as the option's type (lists collect repeats, or take a YAML ``[a, b]``)."""
    defaults = TrainingConfig()
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(args):
        flag = args[index]
        if not flag.startswith("--"):
            raise ValueError(f"unexpected argument {flag!r}: options look like --name value")
        name, _, value = flag[2:].partition("=")
        name = name.replace("-", "_")
        negated = name.startswith("no_") and name[3:] in TrainingConfig.field_names()
        name = name[3:] if negated else name
        if name not in TrainingConfig.field_names():
            raise ValueError(f"unknown option --{name.replace('_', '-')}; see recipes/example.yaml for all options")
        default = getattr(defaults, name)
        if not value and isinstance(default, bool) and (index + 1 == len(args) or args[index + 1].startswith("--")):
            value = "false" if negated else "true"
        elif not value:
            if index + 1 == len(args):
                raise ValueError(f"--{name.replace('_', '-')} needs a value")
            index += 1
            value = args[index]
        overrides[name] = _convert(name, value, default, overrides.get(name))
        index += 1
    return overrides


def _convert(name: str, value: str, default: Any, previous: Any) -> Any:
    if isinstance(default, bool):
        parsed = yaml.safe_load(value)
        if not isinstance(parsed, bool):
            raise ValueError(f"--{name.replace('_', '-')} takes true or false, not {value!r}")
        return parsed
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            raise ValueError(f"--{name.replace('_', '-')} takes a {type(default).__name__}, not {value!r}") from None
    if isinstance(default, list) or value.startswith("["):
        items = yaml.safe_load(value) if value.startswith("[") else [value]
        return (previous or []) + items
    return value


def train_command(
    ctx: typer.Context,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in output_dir")] = False,
) -> None:
    """Train a GRIT model: gritkit train [CONFIG.yaml] [--option value ...] [--resume].

    Every option of recipes/example.yaml is also a flag (--max-steps 10 --mode embedding --no-lora ...);
    flags override the YAML.
    """
    from gritkit import ModelLoadError
    from gritkit.training.data import DataError
    from gritkit.training.trainer import train

    args = list(ctx.args)
    # the config is a leading positional (declared by hand: a typer Argument would swallow flag values)
    config = Path(args.pop(0)) if args and not args[0].startswith("--") else None
    try:
        overrides = parse_overrides(args)
        options = TrainingConfig.from_yaml(config, **overrides) if config else TrainingConfig.from_dict(overrides)
        history = train(options, resume=resume)
    except (DataError, ValueError, FileExistsError, FileNotFoundError, ModelLoadError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    if history:
        last = history[-1]
        parts = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("loss"))
        typer.echo(f"step {last['step']}: {parts}; model saved to {options.output_dir}", err=True)


def build_command(
    output_dir: Annotated[Path, typer.Argument(help="Folder for embedding/*.jsonl and generative/*.jsonl")],
    max_per_source: Annotated[Optional[int], typer.Option(help="Keep a seeded sample of this many rows per source")] = None,
    source: Annotated[Optional[list[str]], typer.Option(help="Only these sources (repeatable)")] = None,
    seed: int = 0,
) -> None:
    """Build a GRIT training mix from the shared data sets (train splits only)."""
    from gritkit.training.build import build_training_mix

    try:
        counts = build_training_mix(output_dir, max_per_source=max_per_source, seed=seed, sources=source)
    except (ValueError, FileNotFoundError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    for name, count in counts.items():
        typer.echo(f"{name:>18} {count:>7} rows")
    typer.echo(f"wrote {output_dir}/embedding and {output_dir}/generative", err=True)


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A training output_dir holding a LoRA adapter")],
    destination: Annotated[Path, typer.Argument(help="Folder to write (replaced), e.g. gritkit/adapters/gritsmol")],
    results: Annotated[Optional[list[Path]], typer.Option("--results", help="gritkit eval JSON to ship beside it (repeatable)")] = None,
    full_precision: Annotated[bool, typer.Option("--fp32", help="Keep fp32 weights (default: fp16, half the size)")] = False,
) -> None:
    """Package a trained adapter to ship: fp16 weights, training config, loss log, eval results, model card."""
    import torch

    from gritkit.training.export import export_adapter

    try:
        folder = export_adapter(run_dir, destination, results=results or [],
                                dtype=torch.float32 if full_precision else torch.float16)
    except (OSError, ValueError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    size = sum(path.stat().st_size for path in folder.iterdir())
    typer.echo(f"wrote {folder} ({size / 1e6:.1f} MB)")


def extrapolate_command(
    to_dir: Annotated[Path, typer.Argument(help="The later stage: a LoRA adapter folder (a run or an export)")],
    destination: Annotated[Path, typer.Argument(help="Adapter folder to write (replaced)")],
    from_dir: Annotated[Path, typer.Option("--from", help="An earlier stage of the same adapter")],
    weight: Annotated[float, typer.Option(help="How far past the later stage, in units of the step between them")] = 1.0,
    combination: Annotated[str, typer.Option(help="svd: keep the rank (truncated SVD) | cat: exact, at twice the rank")] = "svd",
    rank: Annotated[Optional[int], typer.Option(help="Rank with svd (default: the later stage's)")] = None,
) -> None:
    """Extrapolate an adapter past its last stage: ΔW_to + weight·(ΔW_to − ΔW_from) (ExPO), as a new adapter."""
    from gritkit import ModelLoadError
    from gritkit.training.extrapolate import extrapolate_adapter

    try:
        folder = extrapolate_adapter(to_dir, from_dir, destination, weight=weight, combination=combination, rank=rank)
    except (OSError, ValueError, ModelLoadError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {folder}")


def self_targets_command(
    inputs: Annotated[list[Path], typer.Argument(help="RAG JSONL files (question, passages with the gold first, answer)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write (resumed when its .progress file exists)")],
    model: Annotated[str, typer.Option(help="The model whose own answers become the targets (the run you will train)")] = "default",
    keep: Annotated[str, typer.Option(help="correct: keep answers containing the gold span | all")] = "correct",
    batch_size: int = 16,
    max_new_tokens: int = 64,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N rows")] = None,
    max_answer_words: Annotated[Optional[int], typer.Option(help="Drop answers longer than N words")] = None,
) -> None:
    """Self-distilled RAG targets: the model's own uncached answers, kept where they contain the gold answer."""
    from gritkit.specs import load_model
    from gritkit.training.self_targets import finished_counts, write_self_targets

    try:
        counts = finished_counts(inputs, output, limit=limit) or write_self_targets(
            load_model(model), inputs, output, keep=keep, batch_size=batch_size, max_new_tokens=max_new_tokens,
            limit=limit, max_answer_words=max_answer_words)
    except (ValueError, OSError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {output}: {counts['kept']} of {counts['rows']} questions kept")


def rag_chat_command(
    inputs: Annotated[list[Path], typer.Argument(help="RAG JSONL files, e.g. written by `gritkit data self-targets`")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Generative JSONL to write (chat messages)")],
    correct_only: Annotated[bool, typer.Option(
        "--correct-only", help="Only rows whose answer contains their gold_answer (self-targets written with --keep all)")] = False,
) -> None:
    """RAG rows as doc-first chat rows (gold passage, the row's answer) for the generative stream."""
    from gritkit.training.data import read_rag_data
    from gritkit.training.self_targets import chat_rows

    try:
        rows = chat_rows(read_rag_data(inputs), correct_only=correct_only)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    except (ValueError, OSError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {output}: {len(rows)} chat rows")


def register(app: typer.Typer) -> None:
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_command)
    data = typer.Typer(help="Training data: build a GRIT training mix from the shared data sets.", no_args_is_help=True)
    data.command("build")(build_command)
    data.command("self-targets")(self_targets_command)
    data.command("rag-chat")(rag_chat_command)
    app.add_typer(data, name="data")
    app.command("export-adapter")(export_command)
    app.command("extrapolate-adapter")(extrapolate_command)
