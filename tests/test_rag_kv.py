"""Key/value cache reuse: re-positioning, concatenation, padding, and cached == uncached generation."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from gritkit import GritLM
from gritkit.rag import RAG, Index, Segment, build_cache, rotate_keys



DOCS = [
    {"id": "paris", "text": "Paris is the capital and largest city of France, on the river Seine."},
    {"id": "berlin", "text": "Berlin is the capital of Germany. The Brandenburg Gate stands in its centre."},
    {"id": "tokyo", "text": "Tokyo is the capital of Japan and the most populous metropolitan area on Earth."},
]


@pytest.fixture(scope="module")
def causal_model(default_model) -> GritLM:
    """The default model's weights with causal attention, so cached and uncached runs must agree."""
    return GritLM(default_model.model, default_model.tokenizer, attention="causal", name=default_model.name)


def _keys_at(model: GritLM, ids: list[int], start: int) -> list[torch.Tensor]:
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model.model(input_ids=torch.tensor([ids]), position_ids=torch.arange(start, start + len(ids))[None],
                    past_key_values=cache, use_cache=True)
    return [layer.keys for layer in cache.layers]


def _max_rotation_error(model: GritLM, offset: int) -> float:
    ids = model.tokenizer("The quick brown fox jumps over the lazy dog near the river bank.",
                          add_special_tokens=False)["input_ids"]
    at_zero, at_offset = _keys_at(model, ids, 0), _keys_at(model, ids, offset)
    return max((rotate_keys(model, k0, offset, i) - k1).abs().max().item()
               for i, (k0, k1) in enumerate(zip(at_zero, at_offset)))


def test_rotated_keys_equal_keys_computed_at_the_offset(default_model):
    assert _max_rotation_error(default_model, 97) < 1e-4


@pytest.mark.parametrize("architecture", ["llama", "qwen3", "gemma3", "phi3"])
def test_rotation_follows_each_architectures_rope(tiny_model, architecture):
    assert _max_rotation_error(tiny_model(architecture), 41) < 1e-5


def _segment(model: GritLM, text: str) -> tuple[Segment, list[int]]:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    cache, _ = model.prefill(ids)
    return Segment.from_cache(cache, len(ids)), ids


def _block_diagonal_logits(model: GritLM, segment_ids: list[list[int]], tail: list[int]) -> torch.Tensor:
    """Last logits of one uncached pass where each segment sees only itself and the tail sees everything."""
    ids = [t for seg in segment_ids for t in seg] + tail
    mask = torch.tril(torch.ones(len(ids), len(ids), dtype=torch.bool))
    start = 0
    for seg in segment_ids:
        mask[start:start + len(seg), :start] = False
        start += len(seg)
    with torch.inference_mode():
        return model.model(input_ids=torch.tensor([ids]), attention_mask=mask[None, None]).logits[0, -1]


def test_concatenated_segments_equal_one_pass_with_block_attention(causal_model):
    model = causal_model
    texts = ["<|embed|>\nParis is in France.", "<|embed|>\nBerlin is in Germany, on the Spree.",
             "<|embed|>\nWhich city is on the Spree?"]
    segments, segment_ids = zip(*(_segment(model, text) for text in texts))
    tail = model.tokenizer("\nThe city is", add_special_tokens=False)["input_ids"]
    reference = _block_diagonal_logits(model, list(segment_ids), tail)

    cache = build_cache(model, segments)
    assert cache.get_seq_length() == sum(len(ids) for ids in segment_ids)
    _, logits = model.prefill(tail, cache)
    assert torch.allclose(logits, reference, atol=1e-3)

    # What the official code does (concatenate without re-positioning) is measurably wrong.
    naive = DynamicCache(config=model.config)
    for layer in range(len(segments[0].keys)):
        naive.update(torch.cat([s.keys[layer] for s in segments], 1)[None],
                     torch.cat([s.values[layer] for s in segments], 1)[None], layer)
    _, naive_logits = model.prefill(tail, naive)
    assert (naive_logits - reference).abs().max() > 1e-1


def test_segment_from_a_padded_batch_drops_the_padding(causal_model):
    model = causal_model
    batch = model.tokenize_for_embedding(["a long text with quite a few more tokens in it", "short"])
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, past_key_values=cache,
                       use_cache=True)
    length = int(batch.attention_mask[1].sum())
    padded = Segment.from_cache(cache, length, row=1)
    alone = Segment.from_cache(model.embed_with_cache("short")[1], length)
    assert padded.length == length and padded.keys[0].shape[1] == length
    for k_padded, k_alone in zip(padded.keys, alone.keys):
        assert torch.allclose(k_padded, k_alone, atol=1e-4)


@pytest.fixture(scope="module")
def causal_rag(causal_model, tmp_path_factory) -> RAG:
    index = Index.open(tmp_path_factory.mktemp("causal-index"), causal_model)
    index.add(DOCS, cache_kv=True)
    return RAG(causal_model, index)


def _embedding_ids(model: GritLM, text: str, instruction: str = "") -> list[int]:
    return model.tokenize_for_embedding([text], instruction).input_ids[0].tolist()


def _uncached(model: GritLM, prompt_ids: list[int], max_new_tokens: int) -> str:
    return model.tokenizer.decode(list(model.generate_ids(prompt_ids, max_new_tokens=max_new_tokens)),
                                  skip_special_tokens=True).strip()


@pytest.mark.parametrize("mode", ["query", "doc"])
def test_cached_generation_equals_uncached_generation(causal_rag, mode):
    """With causal caches, a cached segment is exactly the prefix the model would have computed."""
    rag, model = causal_rag, causal_rag.model
    question = "What is the capital of Germany?"
    answer = rag.answer(question, cache=mode, k=1, max_new_tokens=16)
    assert answer.passages[0].doc_id == "berlin"
    segment = (_embedding_ids(model, question, rag.index.query_instruction) if mode == "query"
               else _embedding_ids(model, answer.passages[0].text))
    tail = model.tokenizer(rag.prompt_after_cache(question, answer.passages, mode), add_special_tokens=False)["input_ids"]
    assert answer.cached_tokens == len(segment)
    assert answer.text and answer.text == _uncached(model, segment + tail, 16)


def test_k_passages_are_cached_alone_and_joined(causal_rag):
    rag, model = causal_rag, causal_rag.model
    question = "Which capital stands on the river Seine?"
    answer = rag.answer(question, cache="doc_query", k=2, max_new_tokens=8)
    segments = [_embedding_ids(model, p.text) for p in answer.passages]
    segments.append(_embedding_ids(model, question, rag.index.query_instruction))
    assert answer.cached_tokens == sum(map(len, segments))
    tail = model.tokenizer(rag.prompt_after_cache(question, answer.passages, "doc_query"),
                           add_special_tokens=False)["input_ids"]
    cache = build_cache(model, [rag.index.kv_segment(p)[0] for p in answer.passages]
                        + [Segment.from_cache(*model.embed_with_cache(question, rag.index.query_instruction)[1:2],
                                              len(segments[-1]))])
    _, logits = model.prefill(tail, cache)
    # fp16 storage of the passage caches costs a little precision, never the ranking of the next token
    reference = _block_diagonal_logits(model, segments, tail)
    assert logits.argmax() == reference.argmax()
    assert torch.allclose(logits, reference, atol=0.1)


def test_all_modes_answer_with_bidirectional_caches(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    index.add(DOCS, cache_kv=True)
    rag = RAG(default_model, index)
    for mode in ("none", "query", "doc", "query_doc", "doc_query"):
        answer = rag.answer("What is the capital of Japan?", cache=mode, k=2, max_new_tokens=4)
        assert [p.doc_id for p in answer.passages][0] == "tokyo"
        assert set(answer.timings) == {"retrieve", "prefill", "generate", "total"}  # caches were stored at add
        assert answer.timings["total"] >= answer.timings["prefill"] + answer.timings["generate"]
        assert (answer.cached_tokens > 0) == (mode != "none")
    no_retrieval = rag.answer("What is the capital of Japan?", k=0, max_new_tokens=4)
    assert no_retrieval.passages == [] and no_retrieval.cached_tokens == 0
    with pytest.raises(ValueError, match="cache must be one of"):
        rag.answer("q", cache="everything")
    with pytest.raises(ValueError, match="k must be"):
        rag.answer("q", cache="doc", k=0)


def test_missing_passage_cache_is_built_once_and_reported_apart(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    index.add(DOCS[:1], cache_kv=True)
    index.kv.delete(index.kv.keys())  # as the LRU budget would
    rag = RAG(default_model, index)
    first = rag.answer("Where is Paris?", cache="doc", max_new_tokens=2)
    second = rag.answer("Where is Paris?", cache="doc", max_new_tokens=2)
    assert first.timings["cache_build"] > 0 and "cache_build" not in second.timings
    assert index.stats()["kv_entries"] == 1
