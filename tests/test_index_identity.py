"""An index knows which model made its vectors: any other model is a clear error, never a silent mix."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from gritkit import GritLM
from gritkit.cli import app
from gritkit.rag import RAG, Index, StaleIndexError

DOCS = [{"id": "paris", "text": "Paris is the capital of France."},
        {"id": "tokyo", "text": "Tokyo is the capital of Japan."}]


@pytest.fixture(scope="module")
def base_model():
    """The untouched base: the same architecture as the default, other weights."""
    return GritLM.from_pretrained("smollm2-base")


@pytest.fixture
def default_index(default_model, tmp_path):
    Index.open(tmp_path / "index", default_model).add(DOCS, cache_kv=True)
    return tmp_path / "index"


@pytest.fixture
def tiny_saved(tiny_model, tmp_path):
    """A tiny model saved to a directory, and an index it built with key/value caches."""
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    Index.open(tmp_path / "index", model).add(DOCS, cache_kv=True)
    return model, tmp_path / "tiny", tmp_path / "index"


def _vectors(index_dir) -> list[bytes]:
    with sqlite3.connect(index_dir / "index.sqlite") as db:
        return [row[0] for row in db.execute("SELECT vector FROM chunks ORDER BY id")]


def test_another_model_by_name_is_refused_everywhere(default_index, default_model, base_model):
    before = _vectors(default_index)
    with pytest.raises(StaleIndexError, match="built with model 'default'.*fingerprint.*index rebuild"):
        Index.open(default_index, base_model)
    runner, where = CliRunner(), ["--index", str(default_index), "--model", "smollm2-base"]
    note = default_index.parent / "rome.txt"
    note.write_text("Rome is the capital of Italy.")
    for command in (["index", "search", "capital of France"], ["ask", "capital of France?"],
                    ["index", "add", str(note)]):
        result = runner.invoke(app, [*command, *where])
        assert result.exit_code == 2, (command, result.output)
        assert "gritkit index rebuild" in result.output and "Traceback" not in result.output
    assert _vectors(default_index) == before  # nothing of the other model was written
    from gritkit.serve.app import create_app

    with pytest.raises(StaleIndexError):
        create_app(base_model, index_dir=default_index)
    result = runner.invoke(app, ["serve", *where])
    assert result.exit_code == 2 and "gritkit index rebuild" in result.output
    assert Index.open(default_index, default_model).search("capital of France", k=1)[0].doc_id == "paris"


def test_same_weights_by_path_are_the_same_model(tiny_saved):
    model, directory, index_dir = tiny_saved
    reloaded = GritLM.from_pretrained(str(directory))
    index = Index.open(index_dir, reloaded)  # another name, the same weights: no error
    hit = index.search(reloaded.encode(DOCS[1]["text"]), k=1)[0]
    assert hit.doc_id == "tokyo" and hit.score == pytest.approx(1.0, abs=1e-5)
    segment, built = index.kv_segment(hit)
    assert not built  # the stored states are reused, as they were computed by these weights


def test_int8_and_other_pooling_of_the_same_weights_are_refused(tiny_saved):
    _, directory, index_dir = tiny_saved
    with pytest.raises(StaleIndexError, match="fingerprint"):
        Index.open(index_dir, GritLM.from_pretrained(str(directory), quantize="int8"))
    with pytest.raises(StaleIndexError, match="pooling 'mean' vs 'last'"):
        Index.open(index_dir, GritLM.from_pretrained(str(directory), pooling="last"))


def test_cached_states_of_another_model_are_refused(tiny_saved, tiny_model):
    model, _, index_dir = tiny_saved
    other = tiny_model("qwen2")
    index = Index.open(index_dir)  # no model: reading vectors works
    passage = index.search(model.encode(DOCS[0]["text"]), k=1)[0]
    with pytest.raises(StaleIndexError):
        index.kv_segment(passage, other)
    with pytest.raises(StaleIndexError):
        RAG(other, index).answer("capital of France?", cache="doc")
    assert index.kv_segment(passage, model)[1] is False  # its own model reuses the stored states


def test_index_without_a_fingerprint_must_be_rebuilt(tiny_saved, tiny_model):
    model, _, index_dir = tiny_saved
    with sqlite3.connect(index_dir / "index.sqlite") as db:  # as written before fingerprints were recorded
        db.execute("DELETE FROM settings WHERE key IN ('fingerprint', 'attention', 'pooling')")
    with pytest.raises(StaleIndexError, match="before gritkit recorded model fingerprints.*rebuild"):
        Index.open(index_dir, model)
    other = tiny_model("qwen2")
    index = Index.open(index_dir, other, rebuild=True)
    assert index.fingerprint == other.fingerprint and index.stats()["kv_entries"] == 0
    hit = index.search(other.encode(DOCS[0]["text"]), k=1)[0]
    assert hit.doc_id == "paris" and hit.score == pytest.approx(1.0, abs=1e-5)
    index.add([{"id": "rome", "text": "Rome is the capital of Italy."}])
    assert len(index) == 3
    with pytest.raises(StaleIndexError):
        Index.open(index_dir, model)


def test_cli_rebuild_makes_the_index_usable_with_the_new_model(default_index, base_model):
    runner = CliRunner()
    result = runner.invoke(app, ["index", "rebuild", "--index", str(default_index), "--model", "smollm2-base"])
    assert result.exit_code == 0, result.output
    assert "re-embedded 2 chunks" in result.output
    index = Index.open(default_index, base_model)
    assert index.model_name == "smollm2-base" and index.fingerprint == base_model.fingerprint
    vector = base_model.encode(DOCS[1]["text"])
    np.testing.assert_allclose(index.search(vector, k=1)[0].score, 1.0, atol=1e-5)
