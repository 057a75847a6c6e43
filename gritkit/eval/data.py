"""Generic readers for evaluation data: CSV/TSV (with or without header), JSONL (optionally gzipped).

Paths are taken as given, or relative to :func:`gritkit.paths.data_dir` (``$GRITKIT_DATA``).
Loaders name the columns they need by a list of accepted spellings, so any data set whose
files use one of them plugs in.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gritkit.paths import data_dir

T = TypeVar("T")

# Column spellings accepted by the loaders; a CSV whose first row holds one of them has a header.
TEXT_COLUMNS = ("text", "sentence", "query", "question")
TEXT1_COLUMNS = ("sentence1", "text1", "#1 String", "question1", "s1")
TEXT2_COLUMNS = ("sentence2", "text2", "#2 String", "question2", "s2")
SCORE_COLUMNS = ("score", "similarity", "label", "Quality")
LABEL_COLUMNS = ("label", "category", "intent", "class")
QUERY_COLUMNS = ("qtext", "question", "query")
CANDIDATE_COLUMNS = ("atext", "sentence", "candidate", "answer", "passage", "text")
KNOWN_COLUMNS = {*TEXT_COLUMNS, *TEXT1_COLUMNS, *TEXT2_COLUMNS, *SCORE_COLUMNS, *LABEL_COLUMNS,
                 *QUERY_COLUMNS, *CANDIDATE_COLUMNS, "id", "qid", "subject"}


def resolve(path: str | Path) -> Path:
    """An existing path as given, else relative to the data folder; a clear error when missing."""
    path = Path(path).expanduser()
    for candidate in (path, data_dir() / path):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{path} not found (also looked in {data_dir()}; set GRITKIT_DATA to move it)")


def _open_text(path: Path):
    # utf-8-sig drops the byte-order mark some TSVs start with (MRPC)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig", newline="")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .jsonl.gz file. Lines are split on "\\n" only (texts may hold U+2028)."""
    with _open_text(resolve(path)) as file:
        return [json.loads(line) for line in file.read().split("\n") if line.strip()]


def read_table(path: str | Path, columns: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV/TSV file as dicts. A first row that names a known column is the header;
    otherwise ``columns`` names the fields by position."""
    path = resolve(path)
    if ".jsonl" in path.suffixes:
        return read_jsonl(path)
    tsv = ".tsv" in path.suffixes
    with _open_text(path) as file:
        rows = list(csv.reader(file, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL))
    rows = [row for row in rows if row]
    if rows and KNOWN_COLUMNS.intersection(cell.strip() for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    elif columns:
        header = list(columns)
    else:
        raise ValueError(f"{path}: no header row with a known column name, and no column names given")
    return [dict(zip(header, row)) for row in rows]


def column(row: Mapping[str, Any], names: Iterable[str], path: str | Path = "") -> Any:
    """The value of the first of ``names`` present in ``row``."""
    for name in names:
        if name in row:
            return row[name]
    raise KeyError(f"{path}: none of the columns {list(names)} in a row with {list(row)}")


def subset(items: Sequence[T], limit: int | None, seed: int = 0) -> list[T]:
    """A deterministic random subset of at most ``limit`` items, in their original order.

    Random rather than the first ``limit``: several files are sorted by label.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[index] for index in keep]
