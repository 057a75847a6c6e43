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
