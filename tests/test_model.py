"""GritLM on the real embedded default: encode, generate, loading and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from gritkit import GritLM, ModelLoadError
from gritkit.model import Sampler
from gritkit.loading import default_gguf_path


# ------------------------------------------------------------------ encode

def test_encode_returns_normalised_float32_rows_in_input_order(default_model):
    texts = ["a very much longer sentence about the weather in the mountains today", "short", "medium length one"]
    embeddings = default_model.encode(texts, instruction="Represent the sentence", batch_size=2)
    assert embeddings.shape == (3, default_model.embedding_dim) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([default_model.encode(t, instruction="Represent the sentence") for t in texts])
    np.testing.assert_allclose(embeddings, one_by_one, atol=1e-5)


def test_encode_output_types(default_model):
    assert default_model.encode("x y", convert_to="torch").shape == (default_model.embedding_dim,)
    assert isinstance(default_model.encode(["x y"], convert_to="list")[0], list)
    raw = default_model.encode(["x y"], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3


def test_empty_list_gives_empty_matrix(default_model):
    assert default_model.encode([]).shape == (0, default_model.embedding_dim)


@pytest.mark.parametrize("texts, error", [([""], ValueError), (["ok", "   "], ValueError), (["ok", 3], TypeError),
                                          ([None], TypeError)])
def test_bad_texts_raise_clear_errors(default_model, texts, error):
    with pytest.raises(error, match=r"texts\[\d\]"):
        default_model.encode(texts)


def test_overlong_text_truncates_with_one_warning_or_raises(default_model):
    long_text = "word " * 200
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default_model.encode([long_text, long_text], max_length=64)
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="max_length"):
        default_model.encode([long_text], max_length=64, truncate=False)


def test_pooling_and_attention_options_change_the_embedding(default_model):
    text = "GRIT unifies embedding and generation"
    base = default_model.encode(text)
    for options in ({"pooling": "last"}, {"pooling": "weighted_mean"}, {"attention": "causal"}):
        assert np.abs(default_model.encode(text, **options) - base).max() > 1e-3
    with pytest.raises(ValueError):
        GritLM(default_model.model, default_model.tokenizer, pooling="max")


# ------------------------------------------------------------------ generate

def test_chat_answers_a_simple_question(default_model):
    answer = default_model.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16)
    assert "Paris" in answer


def test_streaming_yields_the_same_text_in_pieces(default_model):
    prompt = "The three primary colours are"
    whole = default_model.generate(prompt, max_new_tokens=20)
    pieces = list(default_model.generate(prompt, max_new_tokens=20, stream=True))
    assert len(pieces) > 1 and "".join(pieces) == whole


def test_stop_string_ends_the_text(default_model):
    prompt = "List: 1. apples\n2. pears\n3."
    full = default_model.generate(prompt, max_new_tokens=24)
    assert "\n" in full
    cut = default_model.generate(prompt, max_new_tokens=24, stop=["\n"])
    assert cut == full[: full.index("\n")]


def test_sampling_is_reproducible_with_a_seed(default_model):
    prompt = [{"role": "user", "content": "Write a word."}]
    first = default_model.generate(prompt, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    second = default_model.generate(prompt, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    assert first == second


def test_penalties_lower_the_logits_of_picked_tokens_only():
    logits = torch.tensor([1.0, 2.0, -1.0, 0.5])
    sampler = Sampler(frequency_penalty=0.5, presence_penalty=0.1, repetition_penalty=2.0)
    assert torch.equal(sampler.penalize(logits), logits)  # nothing picked yet
    assert sampler(logits) == 1
    assert torch.allclose(sampler.penalize(logits), torch.tensor([1.0, 2.0 / 2 - 0.5 - 0.1, -1.0, 0.5]))
    assert sampler(logits) == 0
    assert torch.allclose(sampler.penalize(logits), torch.tensor([1.0 / 2 - 0.6, 2.0 / 2 - 0.6, -1.0, 0.5]))
    assert sampler(logits) == 3  # the one token not yet picked leads now


def test_a_frequency_penalty_breaks_a_loop_and_leaves_the_first_token(default_model):
    prompt = "1, 2, 3, 4,"
    greedy = default_model.generate(prompt, max_new_tokens=12, frequency_penalty=0.0)
    penalised = default_model.generate(prompt, max_new_tokens=12, frequency_penalty=2.0)
    assert greedy.count(",") >= 4 and penalised.count(",") < greedy.count(",")
    first = default_model.tokenizer.encode(greedy, add_special_tokens=False)[0]
    assert default_model.tokenizer.encode(penalised, add_special_tokens=False)[0] == first  # the prompt is not penalised


def test_penalties_in_the_generation_config_are_defaults_a_call_overrides(tiny_model, tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    # A negative presence penalty favours tokens already picked, which a random model otherwise never repeats.
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "presence_penalty": -2.0}))
    model = GritLM.from_pretrained(tmp_path)
    assert model.default_penalties == {"presence_penalty": -2.0}
    prompt, options = "a b a b a b", dict(max_new_tokens=24)
    neutral = model.generate(prompt, presence_penalty=0.0, **options)
    assert model.generate(prompt, **options) == model.generate(prompt, presence_penalty=-2.0, **options) != neutral


@pytest.mark.parametrize("prompt, kwargs, error", [
    ("", {}, ValueError), ([], {}, ValueError), ([{"role": "user"}], {}, TypeError),
    ("hi", {"max_new_tokens": 0}, ValueError), ("hi", {"temperature": -1.0}, ValueError),
    ("hi", {"frequency_penalty": 2.5}, ValueError), ("hi", {"repetition_penalty": 0.0}, ValueError),
])
def test_bad_generation_arguments_raise(default_model, prompt, kwargs, error):
    with pytest.raises(error):
        default_model.generate(prompt, **kwargs)


def test_generation_continues_from_an_embedding_cache(default_model):
    """The KV states of a causal embedding pass are a valid prefix for generation."""
    document = "The Eiffel Tower is in Paris."
    _, cache, ids = default_model.embed_with_cache(document, attention="causal")
    question = default_model.tokenizer("\nQuestion: Where is the Eiffel Tower?\nAnswer:", add_special_tokens=False)["input_ids"]
    cached = list(default_model.generate_ids(question, past_key_values=cache, max_new_tokens=8))
    uncached = list(default_model.generate_ids(ids + question, max_new_tokens=8))
    assert cached == uncached


def test_forwards_in_two_threads_keep_their_own_attention(default_model):
    # transformers applies a forward's is_causal through the model's shared config; unguarded, two threads
    # read each other's value and a bidirectional one outlives its call
    texts = ["the first text", "a second, longer text to embed", "three"]
    prompt = "Paris is the capital of France. Berlin is the capital of"
    alone, reply = default_model.encode(texts), default_model.generate(prompt, max_new_tokens=8)

    def embed_or_generate(index):
        return default_model.generate(prompt, max_new_tokens=8) if index % 4 == 3 else default_model.encode(texts)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(embed_or_generate, range(16)))
    left_behind = default_model.model.config.__dict__.pop("is_causal", True)  # popped: a failure stays here
    assert left_behind is True  # plain causal calls (transformers' generate, training) would run bidirectionally
    assert all(result == reply if index % 4 == 3 else np.allclose(result, alone, atol=1e-5)
               for index, result in enumerate(results))


# ------------------------------------------------------------------ loading

def test_unknown_path_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="never downloads"):
        GritLM.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither"):
        GritLM.from_pretrained(str(tmp_path / "empty"))


def test_corrupt_gguf_raises_model_load_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GRITKIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    with pytest.raises(ModelLoadError, match="Could not read GGUF"):
        GritLM.from_pretrained(str(bad))
    assert not list((tmp_path / "cache").rglob("config.json"))


def test_save_and_load_roundtrip(tiny_model, tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "tiny")
    loaded = GritLM.from_pretrained(str(tmp_path / "tiny"))
    np.testing.assert_allclose(loaded.encode("same text"), model.encode("same text"), atol=1e-6)


def test_saved_settings_and_fingerprint_reload(tiny_model, tmp_path):
    model = tiny_model("llama", pooling="last", attention="causal", max_length=64)
    model.save_pretrained(tmp_path / "tiny")
    saved = json.loads((tmp_path / "tiny" / "gritkit_config.json").read_text())
    assert saved == {"prompt_format": "grit", "attention": "causal", "pooling": "last", "max_length": 64,
                     "quantize": None, "fingerprint": model.fingerprint}
    loaded = GritLM.from_pretrained(str(tmp_path / "tiny"))
    assert (loaded.pooling, loaded.attention, loaded.max_length) == ("last", "causal", 64)
    assert loaded.fingerprint == model.fingerprint  # the same weights by path are the same model
    np.testing.assert_array_equal(loaded.encode("same text"), model.encode("same text"))
    assert GritLM.from_pretrained(str(tmp_path / "tiny"), pooling="mean").pooling == "mean"  # an argument wins
    other = tiny_model("qwen2")
    assert other.fingerprint != model.fingerprint
    with torch.no_grad():
        loaded.model.model.norm.weight.add_(1e-3)
    loaded.save_pretrained(tmp_path / "changed")  # a save refreshes the fingerprint of changed weights
    assert loaded.fingerprint != model.fingerprint


def test_unknown_prompt_format_is_a_load_error(tiny_model, tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    (tmp_path / "tiny" / "gritkit_config.json").write_text(json.dumps({"prompt_format": "e5"}))
    with pytest.raises(ModelLoadError, match="prompt format 'e5'"):
        GritLM.from_pretrained(str(tmp_path / "tiny"))


def test_base_plus_peft_adapter_directory_loads(tiny_model, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = GritLM(peft_model, base.tokenizer).encode("adapted text")
    loaded = GritLM.from_pretrained(str(tmp_path / "adapter"))
    assert not isinstance(loaded.model, PeftModel)  # merged into the weights for inference
    np.testing.assert_allclose(loaded.encode("adapted text"), expected, atol=1e-5)
    trainable = GritLM.from_pretrained(str(tmp_path / "adapter"), merge_adapter=False)
    assert isinstance(trainable.model, PeftModel)
    np.testing.assert_allclose(trainable.encode("adapted text"), expected, atol=1e-6)
    plain = GritLM.from_pretrained(str(tmp_path / "base")).encode("adapted text")
    assert np.abs(plain - expected).max() > 1e-4


CONVERT = "import sys; from gritkit.loading import convert_gguf; print(convert_gguf(sys.argv[1]))"


def test_concurrent_first_loads_share_one_valid_cache(tmp_path):
    """Two processes converting the same GGUF at once both succeed and leave one readable copy."""
    env = {**os.environ, "GRITKIT_CACHE": str(tmp_path)}
    gguf = str(default_gguf_path())
    processes = [subprocess.Popen([sys.executable, "-c", CONVERT, gguf], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0] and outputs[0] == outputs[1]
    converted = list((tmp_path / "gguf").iterdir())
    assert len(converted) == 1 and not converted[0].name.startswith(".")
    model = GritLM.from_pretrained(str(converted[0]))
    assert model.encode("cache works").shape == (model.embedding_dim,)


def test_int8_quantised_model_still_embeds_and_answers(default_model):
    """int8 is a decoding-speed option: embeddings move (cosine 0.90-0.96 to fp32 measured) and answers
    stay fluent but lose facts (the fp32 default says a spider has 8 legs, int8 says 15): opt-in only."""
    quantised = GritLM.from_pretrained(quantize="int8")
    texts = ["The cat sits on the mat.", "Stock markets fell sharply today."]
    cosine = (quantised.encode(texts) * default_model.encode(texts)).sum(1)
    assert cosine.min() > 0.8
    question = [{"role": "user", "content": "What color is the sky on a clear day?"}]
    assert "blue" in quantised.generate(question, max_new_tokens=16)
    # fp32 keeps the fact; int8 stays on topic but may lose it (the four-stage v2 in int8: "France is a
    # country in Western Europe. The answer is France"; the six-stage v2 in int8: "Paris.")
    france = [{"role": "user", "content": "What is the capital of France?"}]
    assert "Paris" in default_model.generate(france, max_new_tokens=16)
    assert any(word in quantised.generate(france, max_new_tokens=16) for word in ("Paris", "France"))
    with pytest.raises(ValueError, match="int8"):
        GritLM.from_pretrained(quantize="int4")
    assert quantised.fingerprint != default_model.fingerprint  # an index of fp32 vectors refuses int8
    with pytest.raises(ValueError, match="cannot be saved"):
        quantised.save_pretrained("unused")
