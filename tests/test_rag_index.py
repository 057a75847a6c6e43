"""The persistent index, the KV store, crash safety under kill -9, and the index/ask CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gritkit.cli import app
from gritkit.rag import Index, KVStore, Segment, chunk_text
from gritkit.rag.commands import parse_size



DOCS = [
    {"id": "paris", "text": "Paris is the capital and largest city of France.", "title": "Paris"},
    {"id": "berlin", "text": "Berlin is the capital of Germany."},
    {"id": "tokyo", "text": "Tokyo is the capital of Japan."},
]


def test_token_chunks_are_overlapping_exact_substrings(tokenizer):
    text = " ".join(f"word{i}" for i in range(300))
    chunks = chunk_text(text, tokenizer, size=50, overlap=10)
    assert len(chunks) > 5 and all(chunk in text for chunk in chunks)
    assert chunks[0].startswith("word0 ") and chunks[-1].endswith("word299")
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(lengths) <= 51
    shared = set(chunks[0].split()) & set(chunks[1].split())
    assert 2 <= len(shared) <= 12  # ~10 tokens of overlap
    assert chunk_text("short text", tokenizer, size=50, overlap=10) == ["short text"]


def test_char_chunks_and_bad_settings(tokenizer):
    assert chunk_text("abcdefghij", tokenizer, size=4, overlap=1, unit="chars") == ["abcd", "defg", "ghij"]
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("abc", tokenizer, size=4, overlap=4)
    with pytest.raises(ValueError, match="unit"):
        chunk_text("abc", tokenizer, size=4, overlap=1, unit="words")


def test_add_search_replace_delete_and_reopen(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    assert index.add(DOCS) == 3
    best = index.search("What is the capital of Japan?", k=2)
    assert best[0].doc_id == "tokyo" and best[0].score > best[1].score and best[0].id == "tokyo#0"
    metadata = {p.doc_id: p.metadata for p in index.search("Paris", k=3)}
    assert metadata == {"paris": {"title": "Paris"}, "berlin": {}, "tokyo": {}}

    index.add([{"id": "tokyo", "text": "Tokyo hosted the Summer Olympics in 1964 and 2021."}])  # replaces
    assert len(index) == 3 and index.stats()["chunks"] == 3 and index.vectors.ntotal == 3
    assert "Olympics" in index.search("Which city hosted the Olympics?", k=1)[0].text

    assert index.delete(["berlin", "nope"]) == 1
    index.close()

    reopened = Index.open(tmp_path / "index", default_model)
    assert reopened.document_ids() == ["paris", "tokyo"]
    assert {p.doc_id for p in reopened.search("capital", k=5)} == {"paris", "tokyo"}
    reopened.close()


def test_bad_input_writes_nothing(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    index.add(DOCS[:1])
    with pytest.raises(ValueError, match="no text"):
        index.add([{"id": "a", "text": "fine"}, {"id": "b", "text": "  "}])
    with pytest.raises(ValueError, match="twice"):
        index.add([{"id": "a", "text": "one"}, {"id": "a", "text": "two"}])
    with pytest.raises(TypeError, match="'id' and 'text'"):
        index.add([{"text": "no id"}])
    with pytest.raises(ValueError, match="overlap"):
        index.add([{"id": "a", "text": "fine"}], chunk_size=8, chunk_overlap=8)
    assert index.document_ids() == ["paris"]


def test_other_models_dimensions_are_refused(default_model, tiny_model, tmp_path):
    Index.open(tmp_path / "index", default_model).add(DOCS[:1])
    with pytest.raises(ValueError, match="576-d"):
        Index.open(tmp_path / "index", tiny_model("llama"))


def test_faiss_file_is_rebuilt_from_sqlite(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    index.add(DOCS)
    expected = [p.id for p in index.search("capital of Germany", k=3)]
    index.close()
    (tmp_path / "index" / "vectors.faiss").write_bytes(b"garbage")
    reopened = Index.open(tmp_path / "index", default_model)
    assert [p.id for p in reopened.search("capital of Germany", k=3)] == expected


def test_two_writers_on_one_index_stay_consistent(default_model, tmp_path):
    # Two processes indexing into one folder (two connections here): each sees the other's commits.
    first, second = Index.open(tmp_path / "idx", default_model), Index.open(tmp_path / "idx", default_model)
    first.add(DOCS)
    assert second.search("capital of Japan", k=1)[0].doc_id == "tokyo"
    second.add(DOCS)  # replaces every chunk the first wrote
    second.delete(["berlin"])
    hits = first.search("capital of Germany", k=3)
    assert [hit.doc_id for hit in hits] and "berlin" not in {hit.doc_id for hit in hits}
    first.add([{"id": "rome", "text": "Rome is the capital of Italy."}])
    assert second.search("capital of Italy", k=1)[0].doc_id == "rome"
    first.close(), second.close()
    with Index.open(tmp_path / "idx", default_model) as reopened:
        assert sorted(reopened.document_ids()) == ["paris", "rome", "tokyo"] and len(reopened.search("city", k=5)) == 3


def test_cached_kv_is_fp16_and_dropped_with_its_document(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    index.add(DOCS, cache_kv=True)
    stats = index.stats()
    config = default_model.config
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 2  # k+v, fp16
    assert stats["kv_entries"] == 3 and stats["kv_bytes_per_token"] == per_token
    segment, built = index.kv_segment(index.search("Paris", k=1)[0])
    assert not built and segment.keys[0].dtype == torch.float16
    index.add([{"id": "paris", "text": "Paris has the Louvre."}])  # replaced without a cache
    index.delete(["berlin"])
    assert index.stats()["kv_entries"] == 1


def _segment(tokens: int, fill: float = 1.0) -> Segment:
    tensor = torch.full((2, tokens, 4), fill)
    return Segment([tensor, tensor], [tensor, tensor], tokens)


def test_kv_store_evicts_least_recently_used(tmp_path):
    entry_bytes = 4 * 2 * 10 * 4 * 2  # 4 tensors of 2x10x4 in fp16
    store = KVStore(tmp_path / "kv", budget_bytes=2 * entry_bytes)
    assert store.put("a", _segment(10)) and store.put("b", _segment(10, 2.0))
    assert store.get("a") is not None  # a is now more recent than b
    assert store.put("c", _segment(10))
    assert "b" not in store and store.get("b") is None and set(store.keys()) == {"a", "c"}
    assert store.get("a").values[1][0, 0, 0].item() == 1.0
    stats = store.stats()
    assert stats["entries"] == 2 and stats["bytes"] == 2 * entry_bytes and stats["bytes_per_token"] == entry_bytes / 10
    assert not store.put("huge", _segment(100))  # alone over the budget: refused, nothing evicted
    assert set(store.keys()) == {"a", "c"}
    with pytest.raises(ValueError):
        store.put("../escape", _segment(1))
    store.close()
    (tmp_path / "kv" / "stray.safetensors").write_bytes(b"half-written")
    assert set(KVStore(tmp_path / "kv").keys()) == {"a", "c"}
    assert not (tmp_path / "kv" / "stray.safetensors").exists()


def _committed_documents(index_dir) -> int:
    try:
        with sqlite3.connect(index_dir / "index.sqlite", timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_kill_9_during_add_leaves_exactly_the_committed_documents(default_model, tmp_path):
    index_dir = tmp_path / "index"
    first = Index.open(index_dir, default_model)
    first.add([{"id": "before", "text": "A document added before the crash."}])
    first.close()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    docs = [{"id": f"doc{i:03d}", "text": " ".join(words[(i + j) % 10] for j in range(60))} for i in range(200)]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    process = subprocess.Popen(
        [sys.executable, "-m", "gritkit", "index", "add", str(source), "--index", str(index_dir),
         "--batch-size", "2", "--cache-kv", "bidirectional"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 600
    while _committed_documents(index_dir) < 7 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the add finished before it could be killed"

    index = Index.open(index_dir, default_model)
    ids = index.document_ids()
    added = ids[1:]
    assert ids[0] == "before" and len(added) >= 6
    assert added == [d["id"] for d in docs[:len(added)]]  # whole batches, in order
    assert len(added) % 2 == 0 and len(added) < len(docs)
    assert index.vectors.ntotal == index.stats()["chunks"] == len(ids)  # faiss agrees with SQLite
    last = docs[len(added) - 1]
    hit = index.search(default_model.encode(last["text"]), k=1)[0]  # its own vector: found exactly
    assert hit.doc_id == last["id"] and hit.score > 0.999
    assert all(key.split("-")[0].isdigit() for key in index.kv.keys())
    index.add([{"id": "after", "text": "The index keeps working after a crash."}])
    assert "after" in index


def test_cli_index_and_ask(tmp_path, default_model):
    runner = CliRunner()
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "seine.txt").write_text("The Seine flows through Paris.")
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    index_dir = str(tmp_path / "index")

    result = runner.invoke(app, ["index", "add", str(folder), "--index", index_dir, "--cache-kv", "sideways"])
    assert result.exit_code == 2 and "cache_kv must be" in result.output
    result = runner.invoke(app, ["index", "add", str(folder), str(rows), "--index", index_dir, "--cache-kv", "causal"])
    assert result.exit_code == 0, result.output
    stats = json.loads(runner.invoke(app, ["index", "stats", "--index", index_dir]).stdout)
    assert stats["documents"] == 4 and stats["kv_entries"] == 4 and stats["model"] == "default"
    assert stats["kv_kinds"] == ["causal"]

    result = runner.invoke(app, ["index", "search", "The Seine flows through Paris.", "--index", index_dir,
                                 "-k", "1", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["doc_id"].endswith("seine.txt")

    result = runner.invoke(app, ["ask", "What is the capital of Japan?", "--index", index_dir, "--cache", "doc",
                                 "-k", "1", "--max-new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.stdout)
    assert reply["passages"][0]["id"] == "tokyo#0" and reply["cache"] == "doc" and reply["timings"]["total"] > 0
    assert reply["doc_cache"] == "causal"
    result = runner.invoke(app, ["ask", "q", "--index", index_dir, "--cache", "doc", "--doc-cache", "bidirectional"])
    assert result.exit_code == 2 and "holds only 'causal' states" in result.output

    result = runner.invoke(app, ["index", "delete", "tokyo", "--index", index_dir])
    assert result.exit_code == 0 and "deleted 1 of 1" in result.output
    result = runner.invoke(app, ["ask", "q", "--index", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no index" in result.output
    result = runner.invoke(app, ["ask", "q", "--index", index_dir, "--cache", "bogus"])
    assert result.exit_code == 2 and "cache must be one of" in result.output


def test_parse_size():
    assert parse_size("4GB") == 4_000_000_000 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1000") == 1000 and parse_size("none") is None
    with pytest.raises(ValueError):
        parse_size("lots")


def test_search_by_vector_without_a_model(default_model, tmp_path):
    Index.open(tmp_path / "index", default_model).add(DOCS)
    index = Index.open(tmp_path / "index")
    hit = index.search(default_model.encode(DOCS[0]["text"]), k=1)[0]
    assert hit.doc_id == "paris" and hit.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="without a model"):
        index.search("text needs a model")
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones(3, dtype=np.float32))


def test_hnsw_search_option_is_stored_rebuilt_after_removals_and_matches_exact_on_a_small_index(tiny_model, tmp_path):
    import faiss

    model = tiny_model("llama")
    docs = [{"id": f"d{i}", "text": f"document {i} about {['cats', 'lava', 'stocks', 'rivers'][i % 4]} {i * 7}"}
            for i in range(40)]
    queries = [model.encode(f"{topic} {n}") for topic in ("cats", "lava", "rivers") for n in (3, 11)]
    exact, hnsw = Index.open(tmp_path / "exact", model), Index.open(tmp_path / "hnsw", model, search="hnsw")

    def same_results():
        assert hnsw.vectors.ntotal == exact.vectors.ntotal
        for query in queries:  # a graph this small is searched exhaustively: the same top 5
            assert [p.id for p in hnsw.search(query, k=5)] == [p.id for p in exact.search(query, k=5)]

    for index in (exact, hnsw):
        index.add(docs)
    assert isinstance(faiss.downcast_index(hnsw.vectors.index), faiss.IndexHNSWFlat)
    assert hnsw.stats()["search"].startswith("hnsw") and exact.stats()["search"].startswith("exact")
    same_results()
    for index in (exact, hnsw):  # HNSW cannot drop entries: replacing and deleting rebuild the graph
        index.add([{"id": "d3", "text": "cats 3 replaced"}])
        index.delete(["d4", "d5"])
    same_results()
    hnsw.close()
    reopened = Index.open(tmp_path / "hnsw", model)
    assert reopened.search_kind == "hnsw" and isinstance(faiss.downcast_index(reopened.vectors.index), faiss.IndexHNSWFlat)
    reopened.close()
    switched = Index.open(tmp_path / "hnsw", model, search="exact")  # rebuilt from the stored vectors
    assert isinstance(faiss.downcast_index(switched.vectors.index), faiss.IndexFlatIP) and switched.vectors.ntotal == 38
    with pytest.raises(ValueError, match="search"):
        Index.open(tmp_path / "other", model, search="ivf")
