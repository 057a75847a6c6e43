"""Compact embeddings: the first `dimensions` renormalised, stored as float32, int8 or packed sign bits."""

from __future__ import annotations

import numpy as np
import pytest

from gritkit.model import compact_embeddings

TEXTS = ["GRIT unifies embedding and generation.", "The cat sat on the mat.", "A kitten rests on a rug."]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model("llama")


def test_dimensions_keep_a_renormalised_prefix(tiny):
    full = tiny.encode(TEXTS)
    short = tiny.encode(TEXTS, dimensions=16)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    assert short.dtype == np.float32


def test_int8_keeps_the_cosines(tiny):
    full = tiny.encode(TEXTS)
    quantised = tiny.encode(TEXTS, precision="int8")
    assert quantised.dtype == np.int8 and np.abs(quantised).max(axis=1).tolist() == [127] * len(TEXTS)
    as_float = quantised.astype(np.float32)
    as_float /= np.linalg.norm(as_float, axis=1, keepdims=True)
    np.testing.assert_allclose(as_float @ as_float.T, full @ full.T, atol=0.02)


def test_binary_packs_sign_bits_eight_per_byte(tiny):
    full = tiny.encode(TEXTS)
    bits = tiny.encode(TEXTS, precision="binary")
    assert bits.dtype == np.uint8 and bits.shape == (len(TEXTS), tiny.embedding_dim // 8)
    np.testing.assert_array_equal(np.unpackbits(bits, axis=1)[:, :tiny.embedding_dim], full > 0)


def test_a_single_text_and_lists(tiny):
    assert tiny.encode(TEXTS[0], dimensions=8, precision="int8").shape == (8,)
    assert isinstance(tiny.encode(TEXTS, dimensions=8, convert_to="list")[0], list)


@pytest.mark.parametrize("options", [{"dimensions": 0}, {"dimensions": 10_000}, {"precision": "int4"}])
def test_bad_options_are_value_errors(tiny, options):
    with pytest.raises(ValueError):
        tiny.encode(TEXTS, **options)


def test_compact_embeddings_matches_encode(tiny):
    full = tiny.encode(TEXTS)
    np.testing.assert_array_equal(compact_embeddings(full, dimensions=32, precision="binary"),
                                  tiny.encode(TEXTS, dimensions=32, precision="binary"))
