"""``generation_backend="llamacpp"``: llama.cpp decodes gritkit's token ids on a cached GGUF export,
giving the PyTorch path's replies (exactly, from an f32 export), with streaming, stop strings, RAG
and the server unchanged."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import pytest

from gritkit import GritLM, ModelLoadError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (optional extra: pip install 'gritkit[llamacpp]', builds from source)",
)

PROMPTS = ["What is the capital of France?", "Name three colours.", "How many legs does a spider have?",
           "Write one sentence about the sea."]
DOCS = [
    {"id": "paris", "text": "Paris is the capital and largest city of France, on the river Seine."},
    {"id": "berlin", "text": "Berlin is the capital of Germany. The Brandenburg Gate stands in its centre."},
]


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def llamacpp_default(default_model, gguf_cache):
    """The default model's weights, decoding with llama.cpp on an f32 export (the same numbers)."""
    from gritkit.backends.llamacpp import LlamaCppDecoder

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRITKIT_CACHE", str(gguf_cache))
        decoder = LlamaCppDecoder.for_model(default_model, dtype="f32")
    model = copy.copy(default_model)  # shares the weights and tokenizer
    model.llamacpp = decoder
    return model


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_greedy_replies_equal_the_torch_fp32_path(default_model, llamacpp_default):
    for prompt in PROMPTS:
        expected = default_model.generate(chat(prompt), max_new_tokens=40)
        assert llamacpp_default.generate(chat(prompt), max_new_tokens=40) == expected


@pytest.mark.slow
def test_seeded_sampling_uses_gritkits_sampler(default_model, llamacpp_default):
    options = dict(max_new_tokens=24, temperature=0.9, top_p=0.9, seed=7, frequency_penalty=0.5)
    assert llamacpp_default.generate(chat("Write a poem."), **options) == default_model.generate(chat("Write a poem."), **options)


@pytest.mark.slow
def test_streamed_pieces_join_to_the_reply_and_stop_strings_cut(llamacpp_default):
    whole = llamacpp_default.generate(chat("Count from one to ten, in words."), max_new_tokens=40)
    pieces = list(llamacpp_default.generate(chat("Count from one to ten, in words."), max_new_tokens=40, stream=True))
    assert len(pieces) > 1 and "".join(pieces) == whole
    word = whole.split()[2]
    cut = llamacpp_default.generate(chat("Count from one to ten, in words."), max_new_tokens=40, stop=word)
    assert cut == whole[:whole.index(word)]


@pytest.mark.slow
def test_interleaved_generations_each_get_their_own_context(llamacpp_default):
    """The server steps several generations in one thread; each must decode as if it ran alone."""
    alone = [list(llamacpp_default.generate_ids(llamacpp_default.prompt_ids(chat(p)), max_new_tokens=12)) for p in PROMPTS[:2]]
    streams = [llamacpp_default.generate_ids(llamacpp_default.prompt_ids(chat(p)), max_new_tokens=12) for p in PROMPTS[:2]]
    interleaved: list[list[int]] = [[], []]
    for _ in range(12):
        for tokens, stream in zip(interleaved, streams):
            token = next(stream, None)
            if token is not None:
                tokens.append(token)
    assert interleaved == alone


@pytest.mark.slow
def test_a_prompt_over_the_context_is_a_clear_error(llamacpp_default):
    with pytest.raises(ValueError, match="context"):
        list(llamacpp_default.generate_ids([1] * 10, max_new_tokens=llamacpp_default.max_length))


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["doc", "none"])
def test_rag_answers_equal_the_torch_models(default_model, llamacpp_default, tmp_path, cache):
    """Cached RAG generation stays on torch (it continues a DynamicCache); the answers are the same."""
    from gritkit.rag import RAG, Index

    causal = GritLM(default_model.model, default_model.tokenizer, attention="causal", name=default_model.name)
    backend = copy.copy(causal)
    backend.llamacpp = llamacpp_default.llamacpp
    index = Index.open(tmp_path / "index", causal)
    index.add(DOCS, cache_kv=True)
    expected = RAG(causal, index).answer("What is the capital of Germany?", cache=cache, k=1, max_new_tokens=16)
    answer = RAG(backend, index).answer("What is the capital of Germany?", cache=cache, k=1, max_new_tokens=16)
    assert answer.passages[0].doc_id == "berlin"
    assert answer.text and answer.text == expected.text


@pytest.mark.slow
def test_the_server_answers_chat_on_the_backend(llamacpp_default):
    from fastapi.testclient import TestClient

    from gritkit.serve.app import create_app

    with TestClient(create_app(llamacpp_default)) as client:
        response = client.post("/v1/chat/completions", json={"messages": chat(PROMPTS[0]), "max_tokens": 24,
                                                              "temperature": 0})
    assert response.status_code == 200, response.text
    reply = response.json()["choices"][0]["message"]["content"]
    assert reply == llamacpp_default.generate(chat(PROMPTS[0]), max_new_tokens=24)


def test_from_pretrained_exports_once_and_reuses_the_file(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GRITKIT_CACHE", str(tmp_path / "cache"))
    torch_model = GritLM.from_pretrained(str(tiny_llama_dir), device="cpu")
    model = GritLM.from_pretrained(str(tiny_llama_dir), device="cpu", generation_backend="llamacpp", gguf_dtype="f32")
    exported = list((tmp_path / "cache" / "gguf").glob("*.gguf"))
    assert [path.name for path in exported] == [f"{model.fingerprint[:24]}.f32.gguf"]
    written = exported[0].stat().st_mtime_ns
    again = GritLM.from_pretrained(str(tiny_llama_dir), device="cpu", generation_backend="llamacpp", gguf_dtype="f32")
    assert again.llamacpp.path == exported[0] and exported[0].stat().st_mtime_ns == written
    for prompt in PROMPTS[:2]:
        assert again.generate(chat(prompt), max_new_tokens=16) == torch_model.generate(chat(prompt), max_new_tokens=16)
    # Embeddings never leave PyTorch.
    assert (again.encode("a text") == torch_model.encode("a text")).all()


def test_bad_options_fail_before_loading(monkeypatch):
    with pytest.raises(ValueError, match="generation_backend"):
        GritLM.from_pretrained("/nonexistent", generation_backend="vllm")
    with pytest.raises(ValueError, match="gguf_dtype"):
        GritLM.from_pretrained("/nonexistent", generation_backend="llamacpp", gguf_dtype="q4_0")
    with pytest.raises(ValueError, match="q8_0"):
        GritLM.from_pretrained("/nonexistent", generation_backend="llamacpp", quantize="int8")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "llama_cpp" else find_spec(name, *args))
    with pytest.raises(ModelLoadError, match=r"pip install 'gritkit\[llamacpp\]'"):
        GritLM.from_pretrained("/nonexistent", generation_backend="llamacpp")


def test_the_cli_takes_the_backend_flag(tiny_llama_dir, tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "gritkit", "chat", *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=600,
                                       env={**os.environ, "GRITKIT_CACHE": str(tmp_path)})
    answered = run("Hi", "-m", str(tiny_llama_dir), "--max-new-tokens", "4", "--generation-backend", "llamacpp")
    assert answered.returncode == 0, answered.stderr
    assert list((tmp_path / "gguf").glob("*.f16.gguf"))
    refused = run("Hi", "-m", str(tiny_llama_dir), "--generation-backend", "nope")
    assert refused.returncode == 2 and "generation_backend must be one of" in refused.stderr
    assert "Traceback" not in refused.stderr
