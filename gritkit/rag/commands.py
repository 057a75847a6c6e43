"""CLI: ``gritkit index add|search|delete|stats`` and ``gritkit ask``, thin over gritkit.rag."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from gritkit.commands import (BackendOption, FrequencyPenaltyOption, GgufDtypeOption, RepetitionPenaltyOption,
                              backend_options, fail, given_penalties, load_model)

index_app = typer.Typer(no_args_is_help=True, help="A persistent GRIT index: add, search, delete, stats, rebuild.")

IndexOption = Annotated[Path, typer.Option("--index", "-x", help="Index directory")]
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model spec; defaults to the one the index was built with, else 'default'")]
PrecisionOption = Annotated[Optional[str], typer.Option(
    help="What faiss searches, fixed when the index is created: float32 | int8 | binary (compact codes; "
         "searches rescore their candidates with the stored float32 vectors); default: the index's, else float32")]
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}


def parse_size(text: str) -> int | None:
    """'4GB', '512MiB', '1000000' -> bytes; 'none' -> None (no limit)."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 4GB, 512MB, none)")
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
             "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
    if match.group(2) not in units:
        raise ValueError(f"unknown size unit in {text!r}")
    return int(float(match.group(1)) * units[match.group(2)])


def read_documents(paths: list[Path]) -> Iterator[dict]:
    """Documents from text files (id = path), directories (their text and JSONL files) and JSONL
    files (one object per line with ``id`` or ``_id``, ``text``, and any metadata)."""
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES | {".jsonl"})
            yield from read_documents(files)
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as file:
                for number, line in enumerate(file, start=1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if "id" not in row and "_id" in row:
                        row["id"] = row.pop("_id")
                    if "id" not in row or "text" not in row:
                        raise ValueError(f"{path}:{number}: each JSONL line needs 'id' (or '_id') and 'text'")
                    yield row
        elif path.is_file():
            yield {"id": str(path), "text": path.read_text(encoding="utf-8", errors="replace"), "source": str(path)}
        else:
            raise ValueError(f"no such file or directory: {path}")


def _stored_model(index_dir: Path) -> str | None:
    import sqlite3

    database = index_dir / "index.sqlite"
    if not database.exists():
        return None
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT value FROM settings WHERE key = 'model'").fetchone()
    return row[0] if row else None


def _open(index_dir: Path, model_spec: str | None, *, need_model: bool, must_exist: bool = True,
          model_options: dict | None = None, **kwargs):
    from gritkit.rag import Index

    if must_exist and not (index_dir / "index.sqlite").exists():
        raise fail(f"no index at {index_dir} (create one with: gritkit index add FILES --index {index_dir})")
    model = load_model(model_spec or _stored_model(index_dir) or "default", **(model_options or {})) if need_model else None
    try:
        return Index.open(index_dir, model, **kwargs)
    except ValueError as error:
        raise fail(str(error)) from error


@index_app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="Text files, directories or JSONL files ({'id', 'text', ...})")],
    index: IndexOption,
    model: ModelOption = None,
    chunk_size: Annotated[int, typer.Option(help="Chunk length")] = 256,
    chunk_overlap: Annotated[int, typer.Option(help="Overlap between consecutive chunks")] = 32,
    chunk_unit: Annotated[str, typer.Option(help="'tokens' or 'chars'")] = "tokens",
    batch_size: Annotated[int, typer.Option(help="Documents per transaction")] = 16,
    cache_kv: Annotated[Optional[str], typer.Option(
        "--cache-kv", help="Keep key/value states of each chunk for RAG caching: 'causal' (doc-first chat layout; "
                           "cached answers equal uncached doc-first RAG), 'bidirectional' (the embedding pass) or 'both'",
    )] = None,
    kv_budget: Annotated[str, typer.Option(help="Size budget of the KV store (LRU), e.g. 4GB or none")] = "4GB",
    precision: PrecisionOption = None,
) -> None:
    """Add (or replace, by id) documents in an index, creating it if missing."""
    from gritkit.rag.index import check_precision, kv_kinds_of

    try:
        if precision is not None:
            check_precision(precision)  # before the model loads
        kinds = kv_kinds_of(cache_kv)
        documents = list(read_documents(paths))
        budget = parse_size(kv_budget)
    except (ValueError, OSError) as error:
        raise fail(str(error)) from error
    with _open(index, model, need_model=True, must_exist=False, kv_budget_bytes=budget,
               precision=precision) as opened:
        try:
            chunks = opened.add(documents, chunk_size=chunk_size, chunk_overlap=chunk_overlap, chunk_unit=chunk_unit,
                                batch_size=batch_size, cache_kv=kinds, show_progress_bar=True)
        except (ValueError, TypeError) as error:
            raise fail(str(error)) from error
        typer.echo(f"added {len(documents)} documents ({chunks} chunks); index has {len(opened)} documents", err=True)


@index_app.command("build")
def build(
    paths: Annotated[list[str], typer.Argument(help="JSONL or Parquet files ({'id' or '_id', 'text', ...}): paths or fsspec URLs")],
    index: IndexOption,
    model: Annotated[str, typer.Option("--model", "-m", help="Model spec each worker loads")] = "default",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster ('auto', 'ray://host:10001'); default: local")] = None,
    workers: Annotated[int, typer.Option(help="GritLM actors (each loads the model once)")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs each actor reserves (0: CPU)")] = 0,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs each actor reserves")] = 1,
    chunk_size: Annotated[int, typer.Option(help="Chunk length")] = 256,
    chunk_overlap: Annotated[int, typer.Option(help="Overlap between consecutive chunks")] = 32,
    chunk_unit: Annotated[str, typer.Option(help="'tokens' or 'chars'")] = "tokens",
    shard_size: Annotated[int, typer.Option(help="Documents per shard (the unit of work and of resuming)")] = 100,
    cache_kv: Annotated[bool, typer.Option("--cache-kv", help="Keep each chunk's key/value cache for RAG")] = False,
    kv_budget: Annotated[str, typer.Option(help="Size budget of the KV store (LRU), e.g. 4GB or none")] = "none",
    search: Annotated[Optional[str], typer.Option(help="'exact' or 'hnsw' (approximate); default: the index's")] = None,
    precision: PrecisionOption = None,
) -> None:
    """Embed a corpus on Ray Data (a pool of GritLM actors) into an index; resumable, bad rows reported."""
    try:
        from gritkit.rag.build import build_index
    except ImportError as error:
        raise fail(f"gritkit index build needs Ray: pip install 'gritkit[ray]' ({error})") from error
    try:
        report = build_index(paths, index, model=model, ray_address=ray_address, workers=workers,
                             gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, cache_kv=cache_kv,
                             chunk_size=chunk_size, chunk_overlap=chunk_overlap, chunk_unit=chunk_unit,
                             shard_size=shard_size, kv_budget_bytes=parse_size(kv_budget), search=search,
                             precision=precision)
    except ValueError as error:
        raise fail(str(error)) from error
    for line in report.bad_rows:
        typer.secho(f"skipped {line}", fg="yellow", err=True)
    timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.seconds.items())
    typer.echo(f"embedded {report.shards_embedded} of {report.shards} shards, merged {report.documents} documents "
               f"({report.chunks} chunks), skipped {len(report.bad_rows)} bad rows; {timings}", err=True)


@index_app.command("search")
def search(
    query: str,
    index: IndexOption,
    k: Annotated[int, typer.Option("-k", help="Number of passages")] = 5,
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per passage")] = False,
    rescore_multiplier: Annotated[int, typer.Option(
        help="int8/binary indexes: candidates per passage rescored with the float32 vectors (0: none)")] = 4,
) -> None:
    """Search an index; prints the k closest chunks, best first."""
    with _open(index, model, need_model=True) as opened:
        try:
            passages = opened.search(query, k, rescore_multiplier=rescore_multiplier)
        except ValueError as error:
            raise fail(str(error)) from error
    if as_json:
        for passage in passages:
            print(json.dumps({"id": passage.id, "doc_id": passage.doc_id, "score": round(passage.score, 6),
                              "text": passage.text, "metadata": passage.metadata}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("rank", "score", "id", "text")
    for rank, passage in enumerate(passages, start=1):
        snippet = passage.text if len(passage.text) < 200 else passage.text[:200] + "..."
        table.add_row(str(rank), f"{passage.score:.4f}", passage.id, snippet)
    Console().print(table)


@index_app.command("rebuild")
def rebuild(index: IndexOption, model: ModelOption = None) -> None:
    """Re-embed every stored chunk with a model (after the model changed); cached key/value states are dropped."""
    with _open(index, model, need_model=True, rebuild=True) as opened:
        typer.echo(f"re-embedded {opened.stats()['chunks']} chunks of {len(opened)} documents with "
                   f"{opened.model_name!r}", err=True)


@index_app.command("delete")
def delete(ids: Annotated[list[str], typer.Argument(help="Document ids")], index: IndexOption) -> None:
    """Delete documents by id."""
    with _open(index, None, need_model=False) as opened:
        removed = opened.delete(ids)
        typer.echo(f"deleted {removed} of {len(ids)} documents; index has {len(opened)} documents", err=True)


@index_app.command("stats")
def stats(index: IndexOption) -> None:
    """Documents, chunks, tokens, vectors and KV-store size (bytes per token) of an index, as JSON."""
    with _open(index, None, need_model=False) as opened:
        print(json.dumps(opened.stats(), indent=2))


def ask(
    question: str,
    index: IndexOption,
    cache: Annotated[str, typer.Option(help="none | query | doc | query_doc | doc_query")] = "none",
    k: Annotated[int, typer.Option("-k", help="Passages to retrieve (0: no retrieval, cache none)")] = 1,
    order: Annotated[str, typer.Option(help="query_first | doc_first (cache none only)")] = "query_first",
    doc_cache: Annotated[Optional[str], typer.Option(
        help="Passage states for the modes with passages: causal | bidirectional (default: what the index holds, "
             "causal first for --cache doc)")] = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    frequency_penalty: FrequencyPenaltyOption = None,
    repetition_penalty: RepetitionPenaltyOption = None,
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer, passages and timings as JSON")] = False,
    generation_backend: BackendOption = "torch",
    gguf_dtype: GgufDtypeOption = "f16",
) -> None:
    """Answer a question from an index with GRIT key/value caching."""
    from gritkit.rag import RAG

    penalties = given_penalties(frequency_penalty, repetition_penalty)
    with _open(index, model, need_model=True, model_options=backend_options(generation_backend, gguf_dtype)) as opened:
        try:
            answer = RAG(opened.model, opened).answer(question, cache=cache, k=k, order=order, doc_cache=doc_cache,
                                                      max_new_tokens=max_new_tokens, temperature=temperature,
                                                      **penalties)
        except ValueError as error:
            raise fail(str(error)) from error
    if as_json:
        print(json.dumps({"answer": answer.text, "cache": answer.cache, "doc_cache": answer.doc_cache,
                          "timings": answer.timings,
                          "passages": [{"id": p.id, "score": p.score, "text": p.text} for p in answer.passages]}))
        return
    print(answer.text)
    for passage in answer.passages:
        typer.echo(f"  [{passage.score:.3f}] {passage.id}", err=True)
    timings = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in answer.timings.items())
    kind = f" ({answer.doc_cache} passage states)" if answer.doc_cache else ""
    typer.echo(f"  cache={answer.cache}{kind}: {timings}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
    app.command("ask")(ask)
