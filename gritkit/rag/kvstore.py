"""On-disk store of key/value segments: fp16 safetensors, memory-mapped on read, LRU to a byte budget.

One file per entry (``<key>.safetensors``, tensors ``k.<layer>`` / ``v.<layer>``), written to a
temporary name and renamed into place, so a crash never leaves a half-written entry under a
real name. A small SQLite table holds sizes and last use; files it does not list (a crash
between rename and insert) are removed when the store opens.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gritkit.rag.kv import Segment

_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, bytes INTEGER NOT NULL, tokens INTEGER NOT NULL, last_used INTEGER NOT NULL
);
"""


class KVStore:
    """Key/value segments keyed by a string, kept under ``budget_bytes`` by evicting the least recently used.

    Example::

        store = KVStore("index/kv", budget_bytes=2 * 1024**3)
        store.put("17-bidirectional", segment)
        segment = store.get("17-bidirectional")       # None when absent or evicted
    """

    def __init__(self, directory: str | os.PathLike, budget_bytes: int | None = None):
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError("budget_bytes must be >= 0 (or None for no limit)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self.db = sqlite3.connect(self.directory / "entries.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self._remove_strays()

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"KV store keys are [A-Za-z0-9_.-]+, not {key!r}")
        return self.directory / f"{key}.safetensors"

    def _remove_strays(self) -> None:
        listed = {row[0] for row in self.db.execute("SELECT key FROM entries")}
        for path in self.directory.glob("*.safetensors*"):
            if path.name.endswith(".tmp") or path.name.removesuffix(".safetensors") not in listed:
                path.unlink(missing_ok=True)
        missing = [(key,) for key in listed if not self._path(key).exists()]
        self.db.executemany("DELETE FROM entries WHERE key = ?", missing)

    def _touch(self, key: str) -> None:
        self.db.execute("UPDATE entries SET last_used = (SELECT COALESCE(MAX(last_used), 0) + 1 FROM entries) "
                        "WHERE key = ?", (key,))

    def put(self, key: str, segment: Segment) -> bool:
        """Store ``segment`` in fp16 (replacing any entry under ``key``); False when it alone is over budget."""
        path = self._path(key)
        tensors = {f"k.{i}": k.to(torch.float16).contiguous() for i, k in enumerate(segment.keys)}
        tensors |= {f"v.{i}": v.to(torch.float16).contiguous() for i, v in enumerate(segment.values)}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.budget_bytes is not None and size > self.budget_bytes:
            return False
        self.evict(self.budget_bytes - size if self.budget_bytes is not None else None, keep=key)
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".safetensors.tmp")
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata={"length": str(segment.length), "layers": str(len(segment.keys))})
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
        self.db.execute("INSERT OR REPLACE INTO entries (key, bytes, tokens, last_used) VALUES (?, ?, ?, 0)",
                        (key, size, segment.length))
        self._touch(key)
        return True

    def get(self, key: str) -> Segment | None:
        """The segment under ``key`` (fp16, read through a memory map), or None."""
        path = self._path(key)
        if self.db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is None or not path.exists():
            return None
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata()
            layers = int(metadata["layers"])
            keys = [file.get_tensor(f"k.{i}") for i in range(layers)]
            values = [file.get_tensor(f"v.{i}") for i in range(layers)]
        self._touch(key)
        return Segment(keys, values, int(metadata["length"]))

    def __contains__(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def keys(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT key FROM entries ORDER BY last_used")]

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.db.execute("DELETE FROM entries WHERE key = ?", (key,))
            self._path(key).unlink(missing_ok=True)

    def evict(self, budget_bytes: int | None = None, keep: str | None = None) -> list[str]:
        """Drop least recently used entries until the total fits ``budget_bytes``; returns the dropped keys."""
        budget = self.budget_bytes if budget_bytes is None else budget_bytes
        if budget is None:
            return []
        total = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries WHERE key != ?", (keep,)).fetchone()[0]
        dropped = []
        for key, size in self.db.execute("SELECT key, bytes FROM entries WHERE key != ? ORDER BY last_used",
                                         (keep,)).fetchall():
            if total <= budget:
                break
            dropped.append(key)
            total -= size
        self.delete(dropped)
        return dropped

    def stats(self) -> dict[str, float]:
        entries, size, tokens = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(tokens), 0) FROM entries").fetchone()
        return {"entries": entries, "bytes": size, "tokens": tokens,
                "bytes_per_token": size / tokens if tokens else 0.0,
                "budget_bytes": self.budget_bytes if self.budget_bytes is not None else -1}

    def close(self) -> None:
        self.db.close()
