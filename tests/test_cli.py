"""The core CLI commands, run as a user runs them (a real process)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def gritkit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gritkit", *args], input=stdin, capture_output=True, text=True, timeout=300)


def test_embed_prints_one_vector_per_text_matching_encode(default_model):
    result = gritkit("embed", "a sentence", "another", "--instruction", "Represent the sentence")
    assert result.returncode == 0, result.stderr
    vectors = np.array([json.loads(line) for line in result.stdout.splitlines()])
    expected = default_model.encode(["a sentence", "another"], instruction="Represent the sentence")
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_embed_saves_npy_and_reads_stdin(tmp_path):
    output = tmp_path / "vectors.npy"
    result = gritkit("embed", "-", "--output", str(output), stdin="first line\nsecond line\n")
    assert result.returncode == 0, result.stderr
    assert np.load(output).shape == (2, 576)


def test_embed_rejects_an_empty_text_without_traceback():
    result = gritkit("embed", "fine", "")
    assert result.returncode == 2 and "texts[1] is empty" in result.stderr and "Traceback" not in result.stderr


def test_unknown_model_is_a_clear_error():
    result = gritkit("embed", "x", "--model", "/nonexistent/model")
    assert result.returncode == 2 and "No model at" in result.stderr and "Traceback" not in result.stderr


def test_similarity_ranks_documents():
    result = gritkit("similarity", "capital of France", "Paris is the capital of France.", "Bananas are yellow.")
    assert result.returncode == 0, result.stderr
    assert "cosine" in result.stdout and result.stdout.count("│ 1 ") + result.stdout.count("│ 2 ") == 2


def test_chat_one_shot_and_interactive():
    one_shot = gritkit("chat", "What is the capital of France?", "--max-new-tokens", "16")
    assert one_shot.returncode == 0 and "Paris" in one_shot.stdout
    interactive = gritkit("chat", "--max-new-tokens", "16", stdin="What is the capital of France?\n")
    assert interactive.returncode == 0 and "Paris" in interactive.stdout and ">>>" in interactive.stdout


def test_chat_decodes_with_the_models_default_penalty_unless_told(default_model):
    prompt = "List ten fruits, one per line."  # greedy repeats fruits from the fourth line on
    messages = [{"role": "user", "content": prompt}]
    by_default = default_model.generate(messages, max_new_tokens=32)  # frequency_penalty 0.5, the shipped default
    assert by_default != default_model.generate(messages, max_new_tokens=32, frequency_penalty=0.0)
    plain = gritkit("chat", prompt, "--max-new-tokens", "32")
    assert plain.returncode == 0 and plain.stdout.strip() == by_default.strip(), plain.stderr
    penalised = gritkit("chat", prompt, "--max-new-tokens", "32", "--frequency-penalty", "2")
    expected = default_model.generate(messages, max_new_tokens=32, frequency_penalty=2.0)
    assert expected != by_default
    assert penalised.returncode == 0 and penalised.stdout.strip() == expected.strip(), penalised.stderr
    bad = gritkit("chat", prompt, "--repetition-penalty", "0")
    assert bad.returncode == 2 and "repetition_penalty must be > 0" in bad.stderr and "Traceback" not in bad.stderr


def test_cache_prune_keeps_what_the_default_loads(tmp_path, monkeypatch):
    from gritkit.loading import cache_entries, merged_default_dir

    monkeypatch.setenv("GRITKIT_CACHE", str(tmp_path))
    merged = merged_default_dir()  # converts the GGUF and merges the adapter into this empty cache
    stale_merge = tmp_path / "merged" / "gritsmol-000000000000-on-old"
    stale_merge.mkdir()
    (stale_merge / "model.safetensors").write_bytes(b"x" * 1000)
    stale_export = tmp_path / "gguf" / "0123456789abcdef01234567.q8_0.gguf"
    stale_export.write_bytes(b"y" * 10)
    assert {(entry.kind, entry.in_use) for entry in cache_entries()} == {
        ("gguf", True), ("merged", True), ("merged", False), ("export", False)}

    dry = gritkit("cache", "prune", "--dry-run")
    assert dry.returncode == 0 and "would free" in dry.stdout and stale_merge.exists() and stale_export.exists()
    pruned = gritkit("cache", "prune")
    assert pruned.returncode == 0 and "(2 entries)" in pruned.stdout, pruned.stdout
    assert not stale_merge.exists() and not stale_export.exists()
    assert (merged / "config.json").is_file() and merged_default_dir() == merged
    listed = gritkit("cache", "list")
    assert listed.returncode == 0 and listed.stdout.count("in use") == 2 and "in 2 entries" in listed.stdout
