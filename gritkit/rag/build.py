"""``build_index``: embed a corpus on Ray Data and merge it into a normal gritkit ``Index`` (``gritkit index build``).

The pipeline::

    read_binary_files(JSONL / Parquet, local or any fsspec URL)
      -> flat_map(shard_rows)           rows checked (bad ones reported with their line), cut into shards
      -> map_batches(ShardEmbedder)     a pool of GritLM actors: ``embed_chunks``, the same code as Index.add
      -> driver                         each shard written to <index>/.build/shards/<id>.safetensors
      -> Index.add_embedded             shards merged in corpus order, one transaction each

A shard's id hashes its lines and the build options, so a build killed at any point and restarted
with the same command embeds only the shards it had not written, merges those it had not merged,
and ends with every document once; a second run over the same corpus adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gritkit.model import Precision
from gritkit.rag.index import (ChunkUnit, EmbeddedChunks, Index, SearchKind, check_chunking, check_precision,
                               embed_chunks, new_vector_index)
from gritkit.rag.kv import Segment

BUILD_DIR = ".build"


@dataclass
class BuildReport:
    """What a build did: documents and chunks merged now, shards embedded/skipped, bad rows, timings."""

    documents: int = 0
    chunks: int = 0
    shards: int = 0
    shards_embedded: int = 0
    shards_merged: int = 0
    bad_rows: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- reading (Ray tasks)

def _documents_of(path: str, data: bytes) -> Iterator[tuple[int, bytes | None, dict | str]]:
    """``(line, raw bytes, row or error)`` for each row of a JSONL or Parquet file."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        import pyarrow as pa

        for number, row in enumerate(pq.read_table(pa.BufferReader(data)).to_pylist(), start=1):
            yield number, json.dumps(row, sort_keys=True, default=str).encode(), row
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield number, line, "not UTF-8"
            continue
        except json.JSONDecodeError as error:
            yield number, line, f"not JSON ({error.msg})"
            continue
        yield number, line, row


def _check_row(row: dict | str) -> tuple[str, str, dict] | str:
    """``(id, text, metadata)`` as ``read_documents`` makes it, or why the row is skipped."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return "not a JSON object"
    row = dict(row)
    if "id" not in row and "_id" in row:
        row["id"] = row.pop("_id")
    if row.get("id") is None:
        return "no 'id' (or '_id')"
    text = row.get("text")
    if text is None:
        return "no 'text'"
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    return str(row["id"]), text, {k: v for k, v in row.items() if k not in ("id", "text")}


def shard_rows(file: dict[str, Any], *, shard_size: int, options: str) -> list[dict[str, Any]]:
    """One file (``read_binary_files`` row) -> its shards: good documents as JSON, bad rows as messages."""
    path, shards, documents, errors, digest, first = file["path"], [], [], [], hashlib.sha256(), None

    def close() -> None:
        if documents or errors:
            shards.append({"path": path, "first_line": first, "documents": json.dumps(documents),
                           "errors": json.dumps(errors),
                           "shard_id": hashlib.sha256(f"{options}\0{path}\0{first}".encode() + digest.digest()).hexdigest()[:24]})

    for number, raw, row in _documents_of(path, file["bytes"]):
        if first is None:
            first = number
        digest.update(raw + b"\n")
        checked = _check_row(row)
        if isinstance(checked, str):
            errors.append(f"{path}:{number}: {checked}")
        else:
            documents.append(checked)
        if len(documents) + len(errors) >= shard_size:
            close()
            documents, errors, digest, first = [], [], hashlib.sha256(), None
    close()
    return shards


# ---------------------------------------------------------------- embedding (Ray actors)

def encode_shard(embedded: EmbeddedChunks) -> bytes:
    """A shard as one safetensors blob: vectors, key/value segments, and the rows as JSON metadata."""
    from safetensors.torch import save

    tensors = {"vectors": torch.from_numpy(np.ascontiguousarray(embedded.vectors))}
    for number, (_, _, segment) in enumerate(embedded.segments):
        tensors |= {f"{number}.k.{i}": k.contiguous() for i, k in enumerate(segment.keys)}
        tensors |= {f"{number}.v.{i}": v.contiguous() for i, v in enumerate(segment.values)}
    metadata = {"documents": json.dumps(embedded.documents), "chunks": json.dumps(embedded.chunks),
                "segments": json.dumps([(row, kind, segment.length, len(segment.keys))
                                        for row, kind, segment in embedded.segments])}
    return save(tensors, metadata)


def decode_shard(data: bytes) -> EmbeddedChunks:
    from safetensors.torch import load

    tensors = load(data)
    header_length = int.from_bytes(data[:8], "little")  # safetensors: u64 header size, then the JSON header
    metadata = json.loads(data[8:8 + header_length])["__metadata__"]
    segments = [(row, kind, Segment([tensors[f"{n}.k.{i}"] for i in range(layers)],
                                    [tensors[f"{n}.v.{i}"] for i in range(layers)], length))
                for n, (row, kind, length, layers) in enumerate(json.loads(metadata["segments"]))]
    return EmbeddedChunks([tuple(d) for d in json.loads(metadata["documents"])],
                          [tuple(c) for c in json.loads(metadata["chunks"])], tensors["vectors"].numpy(), segments)


class ShardEmbedder:
    """A Ray Data actor: loads the model once, then embeds whole shards with ``embed_chunks``."""

    def __init__(self, model_spec: str, chunking: dict[str, Any], cache_kv: bool, finished: Sequence[str]):
        from gritkit import GritLM

        started = time.perf_counter()
        self.model = GritLM.from_pretrained(model_spec, device="cuda" if torch.cuda.is_available() else "cpu")
        self.load_seconds = time.perf_counter() - started
        self.chunking, self.cache_kv, self.finished = chunking, cache_kv, set(finished)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads, seconds = [], []
        for shard_id, documents in zip(batch["shard_id"], batch["documents"]):
            started = time.perf_counter()
            documents = [tuple(d) for d in json.loads(documents)]
            if shard_id in self.finished or not documents:  # written by an earlier run: nothing to embed
                payloads.append(b"")
            else:
                payloads.append(encode_shard(embed_chunks(self.model, documents, cache_kv=self.cache_kv,
                                                          **self.chunking)))
            seconds.append(time.perf_counter() - started)
        output = {key: batch[key] for key in ("shard_id", "path", "first_line", "errors")}
        return output | {"payload": np.array(payloads, dtype=object), "embed_s": np.array(seconds),
                         "model_load_s": np.full(len(payloads), self.load_seconds)}


# ---------------------------------------------------------------- the driver

def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def build_index(
    paths: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike,
    *,
    model: str = "default",
    ray_address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    cache_kv: bool = False,
    chunk_size: int = 256,
    chunk_overlap: int = 32,
    chunk_unit: ChunkUnit = "tokens",
    shard_size: int = 100,
    kv_budget_bytes: int | None = None,
    search: SearchKind | None = None,
    precision: Precision | None = None,
) -> BuildReport:
    """Embed JSONL/Parquet corpora on Ray Data with ``workers`` GritLM actors and merge them into the
    index at ``index_dir`` (created if missing; documents with the same id are replaced).

    ``ray_address`` None starts a local Ray (or uses the one already initialised); ``"auto"`` or
    ``"ray://host:10001"`` joins a cluster. Each actor reserves ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs and loads the model once. Rows without an id or text, with empty text
    or that are not UTF-8/JSON are reported in ``BuildReport.bad_rows`` as ``path:line: reason``.
    ``search`` sets the index's search kind and ``precision`` a new index's precision (``Index.open``).
    """
    import ray

    from gritkit import GritLM

    check_chunking(chunk_size, chunk_overlap, chunk_unit)
    if workers < 1 or shard_size < 1:
        raise ValueError("workers and shard_size must be >= 1")
    if search is not None:
        new_vector_index(search, 1)  # a bad kind fails before any work
    if precision is not None:
        check_precision(precision)
        if (Path(index_dir) / "index.sqlite").exists():  # another recorded precision fails before any work
            Index.open(index_dir, precision=precision).close()
    files = [str(Path(p).resolve()) if "://" not in str(p) else str(p) for p in paths]
    for file in files:
        if "://" not in file and not Path(file).exists():
            raise ValueError(f"no such file or directory: {file}")
    report, timer = BuildReport(), time.perf_counter()
    index_dir = Path(index_dir)
    shard_dir, merged_dir = index_dir / BUILD_DIR / "shards", index_dir / BUILD_DIR / "merged"
    shard_dir.mkdir(parents=True, exist_ok=True)
    merged_dir.mkdir(parents=True, exist_ok=True)
    chunking = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "chunk_unit": chunk_unit}
    options = json.dumps({"model": model, "cache_kv": cache_kv, **chunking}, sort_keys=True)
    merged = {p.name for p in merged_dir.iterdir()}
    for leftover in shard_dir.iterdir():  # a kill between merging a shard and removing its file, or mid-write
        if leftover.suffix == ".tmp" or leftover.stem in merged:
            leftover.unlink()
    finished = sorted({p.stem for p in shard_dir.glob("*.safetensors")} | merged)

    if not ray.is_initialized():
        if ray_address is None:  # a local Ray, with room for the actors even on a small machine
            ray.init(num_cpus=max(os.cpu_count() or 1, int(workers * cpus_per_worker)), include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(address=ray_address, log_to_driver=False)
    report.seconds["ray_start"] = time.perf_counter() - timer

    started = time.perf_counter()
    # Reading and cutting shards reserve no CPU: they are light, and actors holding every CPU of a
    # small machine must not leave them unscheduled. A block size of one byte puts each shard in a
    # block of its own, so the actor pool hands shards out one by one (a repartition would need a CPU).
    context = ray.data.DataContext.get_current()
    block_size, context.target_max_block_size = context.target_max_block_size, 1
    try:
        dataset = (ray.data.read_binary_files(files, include_paths=True, num_cpus=0)
                   .flat_map(shard_rows, fn_kwargs={"shard_size": shard_size, "options": options}, num_cpus=0)
                   .map_batches(ShardEmbedder, fn_constructor_kwargs={"model_spec": model, "chunking": chunking,
                                                                       "cache_kv": cache_kv, "finished": finished},
                                batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                                num_cpus=cpus_per_worker, num_gpus=gpus_per_worker))
        order, embed_seconds, load_seconds = [], 0.0, set()
        for row in dataset.iter_rows():  # streamed: each payload is written as it arrives
            shard_id = str(row["shard_id"])
            report.shards += 1
            report.bad_rows += json.loads(row["errors"])
            order.append((str(row["path"]), int(row["first_line"]), shard_id))
            embed_seconds += float(row["embed_s"])
            load_seconds.add(float(row["model_load_s"]))
            if row["payload"]:
                _atomic_write(shard_dir / f"{shard_id}.safetensors", bytes(row["payload"]))
                report.shards_embedded += 1
    finally:
        context.target_max_block_size = block_size
    report.seconds["pipeline"] = time.perf_counter() - started
    report.seconds["embed_in_actors"] = embed_seconds
    report.seconds["model_load_per_actor"] = max(load_seconds, default=0.0)

    started = time.perf_counter()
    pending = [shard_id for _, _, shard_id in sorted(order) if not (merged_dir / shard_id).exists()]
    files_left = [shard_id for shard_id in pending if (shard_dir / f"{shard_id}.safetensors").exists()]
    if pending:
        with Index.open(index_dir, GritLM.from_pretrained(model), kv_budget_bytes=kv_budget_bytes,
                        search=search, precision=precision) as index:
            for shard_id in pending:
                shard_file = shard_dir / f"{shard_id}.safetensors"
                if shard_file.exists():  # absent: a shard of bad rows only
                    embedded = decode_shard(shard_file.read_bytes())
                    # faiss is written once, after the last shard (Index.open rebuilds it if a kill came first)
                    report.chunks += index.add_embedded(embedded, save_vectors=shard_id == files_left[-1])
                    report.documents += len(embedded.documents)
                (merged_dir / shard_id).touch()  # merging again would only replace the same documents
                shard_file.unlink(missing_ok=True)
                report.shards_merged += 1
    report.seconds["merge"] = time.perf_counter() - started
    report.seconds["total"] = time.perf_counter() - timer
    return report
