"""Embedding tokenisation equals GritLM's joint tokenisation, also for SentencePiece tokenisers that put a
prefix space before a text; continuing a cache adds no BOS or preamble and leaves the caller's cache alone."""

from __future__ import annotations

import pytest
import torch
import transformers
from tokenizers import SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast

from gritkit import GritLM
from gritkit.prompts import embedding_prefix

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "hello world from a small tokenizer",
          "represent the sentence for retrieval", "<|user|> <|embed|> <|assistant|>"] * 20


@pytest.fixture(scope="module")
def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2/Mistral-style tokenizer trained here: SentencePiece BPE, "▁" before each text, BOS added."""
    trainer = SentencePieceBPETokenizer()  # Metaspace pre-tokenizer, prepend_scheme="always"
    trainer.train_from_iterator(CORPUS, vocab_size=200, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"],
                                initial_alphabet=["\n"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    from tokenizers.processors import TemplateProcessing

    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer


def test_text_tokens_match_the_joint_tokenisation_with_a_prefix_space_tokenizer(sentencepiece_tokenizer):
    tokenizer = sentencepiece_tokenizer
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, vocab_size=len(tokenizer), max_position_embeddings=128)
    torch.manual_seed(0)
    model = GritLM(transformers.AutoModelForCausalLM.from_config(config), tokenizer)
    instruction, text = "represent the sentence", "hello world"
    prefix = embedding_prefix(instruction)
    joint = tokenizer(prefix + text)["input_ids"]
    prefix_ids = tokenizer(prefix)["input_ids"]
    alone = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert joint[0] == tokenizer.bos_token_id and joint[:len(prefix_ids)] == prefix_ids
    assert alone != joint[len(prefix_ids):]  # tokenised apart, the text starts with "▁": what used to differ

    batch = model.tokenize_for_embedding([text, "the cat"], instruction)
    assert batch.input_ids[0, :len(joint)].tolist() == joint
    assert batch.pooling_mask[0].tolist() == [0] * len(prefix_ids) + [1] * (len(joint) - len(prefix_ids))
    no_instruction = model.tokenize_for_embedding([text])
    assert no_instruction.input_ids[0].tolist() == tokenizer(embedding_prefix() + text)["input_ids"]


def test_byte_level_tokenizer_is_unchanged(default_model):
    """For the default (byte-level BPE) joint and separate tokenisation agree, so its embeddings did not move."""
    tokenizer, instruction = default_model.tokenizer, "Represent the sentence"
    prefix_ids = tokenizer(embedding_prefix(instruction))["input_ids"]
    for text in ["GRIT unifies embedding and generation", " leading space", "ünïcode and 数字 42"]:
        ids = default_model.tokenize_for_embedding([text], instruction).input_ids[0].tolist()
        assert ids == prefix_ids + tokenizer(text, add_special_tokens=False)["input_ids"]


def _snapshot(cache) -> list[torch.Tensor]:
    return [tensor.clone() for layer in cache.layers for tensor in (layer.keys, layer.values)]


@pytest.mark.parametrize("architecture", ["llama", "mistral"])  # mistral: sliding-window layers
def test_prefill_and_generate_leave_the_callers_cache_alone(tiny_model, architecture):
    model = tiny_model(architecture)
    cache, _ = model.prefill(model.tokenizer("A cached document about the sea.")["input_ids"])
    length, before = cache.get_seq_length(), _snapshot(cache)
    extended, _ = model.prefill([10, 11, 12], cache)
    assert extended.get_seq_length() == length + 3
    list(model.generate_ids([13], past_key_values=cache, max_new_tokens=4))
    model.generate("Question:", past_key_values=cache, max_new_tokens=4)
    assert cache.get_seq_length() == length
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(cache)))


def test_generation_after_a_cache_adds_no_bos_or_preamble(default_model):
    tokenizer = default_model.tokenizer
    cache, _ = default_model.prefill(default_model.prompt_ids("The Eiffel Tower is in Paris."))
    messages = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
    after = tokenizer.decode(default_model.prompt_ids(messages, after_cache=True))
    fresh = tokenizer.decode(default_model.prompt_ids(messages))
    assert "system" in fresh and "system" not in after  # SmolLM2's template adds a default system turn
    assert after.startswith("<|im_start|>user") and fresh.endswith(after)
    raw = tokenizer("raw text", add_special_tokens=False)["input_ids"]
    assert default_model.prompt_ids("raw text", after_cache=True) == raw
    expected = default_model.generate_ids(default_model.prompt_ids(messages, after_cache=True), past_key_values=cache,
                                          max_new_tokens=6)
    assert default_model.generate(messages, past_key_values=cache, max_new_tokens=6) == tokenizer.decode(
        list(expected), skip_special_tokens=True)
