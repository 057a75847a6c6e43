"""CLI: ``gritkit export gguf SPEC OUT.gguf [--dtype f32|f16|q8_0]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

export_app = typer.Typer(no_args_is_help=True, help="Write a gritkit model in another runtime's format.")


@export_app.command("gguf")
def gguf_command(
    spec: Annotated[str, typer.Argument(help="'default', 'smollm2-base', a .gguf file, a model or adapter dir")],
    output: Annotated[Path, typer.Argument(help="The .gguf file to write")],
    dtype: Annotated[str, typer.Option(help="Weight type of the matrices: f32, f16 or q8_0")] = "f16",
) -> None:
    """Write SPEC as a GGUF file for llama.cpp, llama-cpp-python and Ollama (adapters merged)."""
    from gritkit.export.gguf import GgufExportError, export_gguf
    from gritkit.loading import ModelLoadError

    try:
        path = export_gguf(spec, output, dtype=dtype)
    except (ModelLoadError, GgufExportError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, {dtype})", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
