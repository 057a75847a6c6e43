"""Core commands (embed, similarity, chat) and what every commands module shares: loading a model
or exiting with its message, and the error exit. ``gritkit.cli`` assembles these into one app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from gritkit.prompts import SEARCH_INSTRUCTION

ModelOption = Annotated[str, typer.Option("--model", "-m", help="'default', 'smollm2-base', a .gguf file, a model or adapter dir")]
BackendOption = Annotated[str, typer.Option(
    "--generation-backend", help="torch, or llamacpp: decode with llama.cpp on a GGUF export of the model, written "
                                 "once to the cache (needs gritkit[llamacpp]); embeddings and RAG-cached answers stay on torch")]
GgufDtypeOption = Annotated[str, typer.Option("--gguf-dtype", help="Weight type of the llamacpp backend's export: f16, f32 or q8_0")]


def backend_options(generation_backend: str = "torch", gguf_dtype: str = "f16") -> dict:
    """``GritLM.from_pretrained`` options for the --generation-backend/--gguf-dtype flags."""
    return {"generation_backend": generation_backend, "gguf_dtype": gguf_dtype}


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on stderr; raise the returned exit (status 2: bad input)."""
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


def load_model(spec: str | None, **options):
    """Load a GritLM through :func:`gritkit.specs.load_model`, or exit with its message (no traceback)."""
    from gritkit.loading import ModelLoadError
    from gritkit.specs import load_model as resolve

    try:
        return resolve(spec, **options)
    except (ModelLoadError, ValueError) as error:
        raise fail(str(error)) from error


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
        raise fail(str(error)) from error
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


def similarity(
    query: str,
    documents: list[str],
    instruction: Annotated[str, typer.Option("--instruction", "-i", help="Instruction for the query")] = SEARCH_INSTRUCTION,
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


def chat(
    message: Annotated[Optional[str], typer.Argument(help="One-shot message; omit for an interactive chat")] = None,
    model: ModelOption = "default",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: Annotated[Optional[str], typer.Option(help="System message")] = None,
    generation_backend: BackendOption = "torch",
    gguf_dtype: GgufDtypeOption = "f16",
) -> None:
    """Chat with the model: one-shot with a message, interactive without one (Ctrl-D quits)."""
    grit = load_model(model, **backend_options(generation_backend, gguf_dtype))
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


cache_app = typer.Typer(no_args_is_help=True, help="The converted models under ~/.cache/gritkit (or $GRITKIT_CACHE).")


@cache_app.command("list")
def cache_list() -> None:
    """One line per cached model: size, kind, whether the current default loads it, path."""
    from gritkit.loading import cache_dir, cache_entries

    entries = cache_entries()
    for entry in entries:
        typer.echo(f"{entry.size / 1e6:8.0f} MB  {entry.kind:<7} {'in use' if entry.in_use else '      '}  {entry.path}")
    typer.echo(f"{sum(entry.size for entry in entries) / 1e9:.1f} GB in {len(entries)} entries under {cache_dir()}")


@cache_app.command("prune")
def cache_prune(
    everything: Annotated[bool, typer.Option("--all", help="Also delete what the current default loads")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted")] = False,
) -> None:
    """Delete the cached models the current default does not load (older adapters, other GGUF files, exports).
    Anything deleted is converted again when a model next needs it."""
    from gritkit.loading import prune_cache

    doomed = prune_cache(everything=everything, dry_run=dry_run)
    for entry in doomed:
        typer.echo(f"{'would delete' if dry_run else 'deleted'} {entry.path}")
    typer.echo(f"{'would free' if dry_run else 'freed'} {sum(entry.size for entry in doomed) / 1e9:.1f} GB "
               f"({len(doomed)} entries)")


def register(app: typer.Typer) -> None:
    app.command()(embed)
    app.command()(similarity)
    app.command()(chat)
    app.add_typer(cache_app, name="cache")
