"""GRIT's embedding and generation contract, proven on tiny random models of every supported architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ARCHITECTURES

LONG_TEXTS = [
    "A considerably longer text that will force the short one to be padded on the right " * 3,
    "Another long passage, long enough to need many more tokens than the short text does. " * 2,
]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request, tiny_model):
    return tiny_model(request.param)


def first_token_state(model, input_ids, attention):
    with torch.inference_mode():
        return model.hidden_states(torch.tensor([input_ids]), attention=attention)[0, 0]


def test_bidirectional_attention_sees_later_tokens(model):
    ids = model.tokenizer("the first token should feel the last one", add_special_tokens=False)["input_ids"]
    changed = ids[:-1] + [ids[-1] + 1]
    before = first_token_state(model, ids, "bidirectional")
    after = first_token_state(model, changed, "bidirectional")
    assert (before - after).abs().max() > 1e-4


def test_causal_attention_does_not_see_later_tokens(model):
    ids = model.tokenizer("the first token must not feel the last one", add_special_tokens=False)["input_ids"]
    changed = ids[:-1] + [ids[-1] + 1]
    before = first_token_state(model, ids, "causal")
    after = first_token_state(model, changed, "causal")
    torch.testing.assert_close(before, after, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_embedding_is_the_same_alone_and_in_a_padded_batch(model, attention):
    text = "short text"
    alone = model.encode([text], instruction="Represent it", attention=attention)
    batched = model.encode([LONG_TEXTS[0], text, LONG_TEXTS[1]], instruction="Represent it",
                           batch_size=3, attention=attention)
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)


def test_pooling_covers_text_tokens_only(model):
    batch = model.tokenize_for_embedding(["pool these words only"], "An instruction that is attended to")
    prefix_length = int((batch.attention_mask[0] - batch.pooling_mask[0]).sum())
    assert prefix_length == len(model.tokenizer("<|user|>\nAn instruction that is attended to\n<|embed|>\n")["input_ids"])
    with torch.inference_mode():
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask)[0]
        pooled = model.embed_batch(batch)[0]
    torch.testing.assert_close(pooled, hidden[prefix_length:].mean(0), rtol=1e-5, atol=1e-6)
    assert (pooled - hidden.mean(0)).abs().max() > 1e-4


def test_instruction_changes_the_embedding(model):
    first = model.encode("the same text", instruction="Retrieve passages about cooking")
    second = model.encode("the same text", instruction="Classify the sentiment of the review")
    assert np.abs(first - second).max() > 1e-4


def test_greedy_generation_equals_transformers_generate(model):
    prompt = [{"role": "user", "content": "Count to five."}]
    ids = model.prompt_ids(prompt)
    ours = list(model.generate_ids(ids, max_new_tokens=12))
    with torch.inference_mode():
        theirs = model.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=12, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    reference = theirs[0, len(ids):].tolist()
    stop = model.stop_token_ids()
    reference = reference[: next((i for i, t in enumerate(reference) if t in stop), len(reference))]
    assert ours == reference
