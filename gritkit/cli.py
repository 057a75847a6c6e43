"""The ``gritkit`` command line: a thin layer over the Python API.

Core commands (embed, chat, similarity) live here; each subpackage that has commands
(training, rag, eval, serve) exposes ``register(app)`` in its ``commands`` module.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="GRIT: one model that embeds and generates.")

ModelOption = Annotated[str, typer.Option("--model", "-m", help="'default', 'smollm2-base', a .gguf file, a model or adapter dir")]


def load_model(spec: str, **kwargs):
    """Load a GritLM or exit with the loader's message (no traceback for a bad spec)."""
    from gritkit import GritLM, ModelLoadError

    try:
        return GritLM.from_pretrained(spec, **kwargs)
    except ModelLoadError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error


@app.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed; '-' reads one text per line from stdin")],
    instruction: Annotated[str, typer.Option("--instruction", "-i", help="GRIT instruction (attended, not pooled)")] = "",
    model: ModelOption = "default",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Save vectors: .npy or .jsonl")] = None,
    batch_size: int = 32,
) -> None:
    """Embed texts; prints one JSON vector per line, or saves them with --output."""
    import numpy as np

    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    grit = load_model(model)
    try:
        vectors = grit.encode(texts, instruction=instruction, batch_size=batch_size, show_progress_bar=len(texts) > batch_size)
    except (ValueError, TypeError) as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    if output is None:
        for vector in vectors:
            print(json.dumps([round(float(x), 6) for x in vector]))
    elif output.suffix == ".npy":
        np.save(output, vectors)
        typer.echo(f"saved {vectors.shape[0]} x {vectors.shape[1]} vectors to {output}", err=True)
    else:
        with output.open("w") as file:
            for text, vector in zip(texts, vectors):
                file.write(json.dumps({"text": text, "embedding": vector.tolist()}) + "\n")
        typer.echo(f"saved {len(texts)} vectors to {output}", err=True)


@app.command()
def similarity(
    query: str,
    documents: list[str],
    instruction: Annotated[str, typer.Option("--instruction", "-i", help="Instruction for the query")] = "Given a query, retrieve relevant passages",
    model: ModelOption = "default",
) -> None:
    """Cosine similarity of a query (with instruction) against documents (without), best first."""
    from rich.console import Console
    from rich.table import Table

    grit = load_model(model)
    query_vector = grit.encode(query, instruction=instruction)
    scores = grit.encode(documents) @ query_vector
    table = Table("rank", "cosine", "document")
    for rank, index in enumerate(scores.argsort()[::-1], start=1):
        table.add_row(str(rank), f"{scores[index]:.4f}", documents[index])
    Console().print(table)


@app.command()
def chat(
    message: Annotated[Optional[str], typer.Argument(help="One-shot message; omit for an interactive chat")] = None,
    model: ModelOption = "default",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: Annotated[Optional[str], typer.Option(help="System message")] = None,
) -> None:
    """Chat with the model: one-shot with a message, interactive without one (Ctrl-D quits)."""
    grit = load_model(model)
    history = [{"role": "system", "content": system}] if system else []

    def reply(text: str) -> None:
        history.append({"role": "user", "content": text})
        pieces = []
        for piece in grit.generate(history, max_new_tokens=max_new_tokens, temperature=temperature, stream=True):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(pieces)})

    if message is not None:
        reply(message)
        return
    while True:
        try:
            text = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text.strip():
            reply(text)


def _register_subcommands() -> None:
    for name in ("training", "rag", "eval", "serve", "export"):
        try:
            module = importlib.import_module(f"gritkit.{name}.commands")
        except ModuleNotFoundError as error:
            if error.name != f"gritkit.{name}.commands" and error.name != f"gritkit.{name}":
                raise
            continue
        module.register(app)


_register_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
