"""``gritkit index build`` on a local Ray (2 CPUs): the same index as ``Index.add``, bad rows, kill -9 and resume.

Needs the ``ray`` extra (``pip install -e ".[ray]"``); skipped without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray build needs the 'ray' extra: pip install -e '.[ray]'")

from gritkit import GritLM  # noqa: E402
from gritkit.rag import Index  # noqa: E402
from gritkit.rag.build import build_index  # noqa: E402
from gritkit.rag.commands import read_documents  # noqa: E402

CHUNKING = {"chunk_size": 12, "chunk_overlap": 3}
TOPICS = ["cats purr and sleep", "volcanoes erupt lava", "the stock market fell", "rivers flow to the sea",
          "chess openings", "baking sourdough bread"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tiny_model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    tiny_model("llama").save_pretrained(folder / "model")
    documents = [{"id": f"doc{i}", "text": f"Document {i} is about {TOPICS[i % len(TOPICS)]}. " * (1 + i % 4),
                  "source": f"s{i % 3}"} for i in range(14)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in documents))
    return {"model": folder / "model", "jsonl": folder / "corpus.jsonl", "folder": folder}


def reference_index(corpus, path: Path, cache_kv: bool) -> Index:
    index = Index.open(path, GritLM.from_pretrained(str(corpus["model"])))
    index.add(list(read_documents([corpus["jsonl"]])), cache_kv=cache_kv, **CHUNKING)
    return index


def rows(index: Index) -> list[tuple]:
    return index.db.execute("SELECT c.id, c.doc_id, c.position, c.text, c.tokens, d.metadata FROM chunks c "
                            "JOIN documents d ON d.id = c.doc_id ORDER BY c.id").fetchall()


def vectors(index: Index) -> np.ndarray:
    return np.stack([np.frombuffer(v, np.float32) for v, in index.db.execute("SELECT vector FROM chunks ORDER BY id")])


@pytest.mark.parametrize("cache_kv", [False, True], ids=["vectors", "with-kv"])
def test_ray_build_equals_index_add(local_ray, corpus, tmp_path, cache_kv):
    report = build_index([corpus["jsonl"]], tmp_path / "ray", model=str(corpus["model"]), workers=2, shard_size=3,
                         cache_kv=cache_kv, **CHUNKING)
    assert report.documents == 14 and report.shards == 5 and report.shards_embedded == 5 and not report.bad_rows
    built, expected = Index.open(tmp_path / "ray"), reference_index(corpus, tmp_path / "add", cache_kv)
    assert report.chunks == expected.stats()["chunks"] > 14  # long documents were cut into several chunks
    assert built.document_ids() == expected.document_ids()
    assert rows(built) == rows(expected)  # same chunk ids, positions, texts, token counts and metadata
    np.testing.assert_allclose(vectors(built), vectors(expected), atol=1e-5)
    for query in vectors(expected)[::4]:
        assert [p.id for p in built.search(query, k=5)] == [p.id for p in expected.search(query, k=5)]
    assert sorted(built.kv.keys()) == sorted(expected.kv.keys())
    assert len(built.kv.keys()) == (report.chunks if cache_kv else 0)
    for key in expected.kv.keys():
        got, want = built.kv.get(key), expected.kv.get(key)
        assert got.length == want.length
        for a, b in zip(got.keys + got.values, want.keys + want.values):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=0)  # both stored in fp16

    again = build_index([corpus["jsonl"]], tmp_path / "ray", model=str(corpus["model"]), workers=2, shard_size=3,
                        cache_kv=cache_kv, **CHUNKING)
    assert (again.shards_embedded, again.shards_merged, again.documents) == (0, 0, 0)  # nothing added twice
    assert rows(Index.open(tmp_path / "ray")) == rows(expected)


def test_bad_rows_are_reported_with_their_line_and_skipped(local_ray, corpus, tmp_path):
    lines = [json.dumps({"id": "good1", "text": "Cats purr."}).encode(),
             json.dumps({"id": "notext"}).encode(),
             b'{"id": "latin1", "text": "caf\xe9"}',
             json.dumps({"id": "empty", "text": "   "}).encode(),
             b"{not json",
             json.dumps({"text": "no id here"}).encode(),
             json.dumps({"_id": "good2", "text": "Volcanoes erupt."}).encode()]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = build_index([path], tmp_path / "index", model=str(corpus["model"]), workers=1, shard_size=2, **CHUNKING)
    assert [line.split(": ", 1)[1] for line in report.bad_rows] == [
        "no 'text'", "not UTF-8", "empty text", "not JSON (Expecting property name enclosed in double quotes)",
        "no 'id' (or '_id')"]
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in report.bad_rows] == ["2", "3", "4", "5", "6"]
    assert Index.open(tmp_path / "index").document_ids() == ["good1", "good2"]


def test_parquet_corpus_gives_the_same_documents(local_ray, corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    documents = [json.loads(line) for line in corpus["jsonl"].read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(documents), tmp_path / "corpus.parquet")
    report = build_index([tmp_path / "corpus.parquet"], tmp_path / "index", model=str(corpus["model"]), **CHUNKING)
    assert report.documents == 14 and not report.bad_rows
    expected = reference_index(corpus, tmp_path / "add", cache_kv=False)
    assert rows(Index.open(tmp_path / "index")) == rows(expected)


def test_killed_build_resumes_and_ends_with_each_document_once(corpus, tmp_path):
    """kill -9 while shards are being written; the same command again finishes the index."""
    command = [sys.executable, "-m", "gritkit", "index", "build", str(corpus["jsonl"]), "--index", str(tmp_path / "idx"),
               "--model", str(corpus["model"]), "--workers", "1", "--shard-size", "1",
               "--chunk-size", "12", "--chunk-overlap", "3"]
    # Ray's files under a short folder of this test's own (socket paths are length-limited), so the
    # processes of the killed run can be found by it: a few of Ray's are in sessions of their own
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_TMPDIR": str(ray_dir)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)  # its own group: Ray's local processes die with it
    shards = tmp_path / "idx" / ".build" / "shards"
    deadline = time.monotonic() + 1200  # Ray start and model load: minutes on 2 busy cores
    while not list(shards.glob("*.safetensors")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    kill_processes_using(ray_dir)
    written = len(list(shards.glob("*.safetensors")))
    assert 1 <= written < 14  # killed part-way

    try:  # a generous limit: starting Ray on 2 busy cores can take minutes
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        kill_processes_using(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"embedded {14 - written} of 14 shards" in result.stderr  # the finished ones were skipped
    index = Index.open(tmp_path / "idx")
    expected = reference_index(corpus, tmp_path / "add", cache_kv=False)
    assert sorted(index.document_ids()) == sorted(expected.document_ids())
    assert sorted(r[1:] for r in rows(index)) == sorted(r[1:] for r in rows(expected))  # each document once
    assert index.vectors.ntotal == expected.vectors.ntotal


def kill_processes_using(folder: Path) -> None:
    """SIGKILL every process whose command line names ``folder`` (what a killed Ray run left behind)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
