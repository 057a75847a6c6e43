"""Causal doc caching: passages run causally in the doc-first chat layout at index time, so that
``cache="doc"`` answers equal uncached doc-first RAG; which KV kinds an index holds, and the errors."""

from __future__ import annotations

import pytest

from gritkit import GritLM
from gritkit.prompts import doc_first_layout, rag_prompt
from gritkit.rag import RAG, Index
from gritkit.rag.index import kv_kinds_of

DOCS = [
    {"id": "eiffel", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889."},
    # Ends in a newline: joint tokenisation would merge it with the blank line after the passage.
    {"id": "python", "text": "Python is a programming language created by Guido van Rossum and first released in 1991.\n"},
    {"id": "amazon", "text": "The Amazon River in South America is the largest river in the world by discharge volume of water."},
    {"id": "moon", "text": "The Moon is Earth's only natural satellite. Apollo 11 landed the first humans on it in 1969."},
]
QUESTIONS = ["When was the Eiffel Tower completed?", "Who created Python?", "Which river has the largest discharge?",
             "When did humans first land on the Moon?"]


@pytest.fixture(scope="module")
def both_kinds(default_model, tmp_path_factory) -> RAG:
    index = Index.open(tmp_path_factory.mktemp("both"), default_model)
    index.add(DOCS, cache_kv="both")
    return RAG(default_model, index)


def test_doc_first_layout_cuts_the_uncached_prompt_at_passage_boundaries(tokenizer):
    documents = [d["text"] for d in DOCS[:3]]
    preamble, pieces, tail = doc_first_layout(tokenizer, "Who?", documents, "The answer is")
    assert preamble + "".join(pieces) + tail == rag_prompt(tokenizer, "Who?", documents, "none", "doc_first",
                                                           "The answer is")
    assert pieces == [f"{text}\n\n" for text in documents] and tail.startswith("Who?\n\n")
    # The boundary matters: tokenised jointly, the passage's own newline and the blank line after it
    # split differently before the next text than at the end of a piece.
    joint = tokenizer(pieces[1] + tail, add_special_tokens=False)["input_ids"]
    apart = tokenizer(pieces[1], add_special_tokens=False)["input_ids"] + \
        tokenizer(tail, add_special_tokens=False)["input_ids"]
    assert joint != apart


def test_k1_causal_doc_cache_answers_equal_uncached_doc_first_rag(both_kinds):
    rag = both_kinds
    for question, doc in zip(QUESTIONS, DOCS):
        uncached = rag.answer(question, cache="none", order="doc_first", k=1, max_new_tokens=24)
        cached = rag.answer(question, cache="doc", doc_cache="causal", k=1, max_new_tokens=24)
        assert cached.passages[0].doc_id == uncached.passages[0].doc_id == doc["id"]
        assert cached.doc_cache == "causal" and uncached.doc_cache is None
        assert cached.prompt_tokens == uncached.prompt_tokens and cached.cached_tokens > 0
        assert cached.text and cached.text == uncached.text, question


def test_k2_causal_doc_cache_runs_the_same_prompt_with_later_passages_repositioned(both_kinds):
    rag = both_kinds
    uncached = rag.answer(QUESTIONS[0], cache="none", order="doc_first", k=2, max_new_tokens=8)
    cached = rag.answer(QUESTIONS[0], cache="doc", doc_cache="causal", k=2, max_new_tokens=8)
    assert [p.id for p in cached.passages] == [p.id for p in uncached.passages]
    tail = rag.prompt_ids_after_cache(QUESTIONS[0], cached.passages, "doc", doc_cache="causal")
    assert cached.prompt_tokens == uncached.prompt_tokens == cached.cached_tokens + len(tail)
    assert cached.text


def test_default_doc_cache_is_what_the_index_holds(both_kinds, default_model, tmp_path):
    assert both_kinds.index.kv_kinds == ("bidirectional", "causal")
    assert both_kinds.resolve_doc_cache("doc") == "causal"
    assert both_kinds.resolve_doc_cache("doc_query") == "bidirectional"
    assert both_kinds.resolve_doc_cache("query") is None
    assert both_kinds.answer(QUESTIONS[1], cache="doc", max_new_tokens=2).doc_cache == "causal"

    index = Index.open(tmp_path / "bidirectional", default_model)
    index.add(DOCS[:2], cache_kv=True)  # True: the embedding pass, as before kinds existed
    assert index.kv_kinds == ("bidirectional",) and index.stats()["kv_kinds"] == ["bidirectional"]
    assert RAG(default_model, index).answer(QUESTIONS[1], cache="doc", max_new_tokens=2).doc_cache == "bidirectional"


def test_asking_for_states_the_index_does_not_hold_is_an_error(both_kinds, default_model, tmp_path):
    bidirectional = Index.open(tmp_path / "bidirectional", default_model)
    bidirectional.add(DOCS[:2], cache_kv="bidirectional")
    with pytest.raises(ValueError, match="holds only 'bidirectional' states.*cache_kv='causal'"):
        RAG(default_model, bidirectional).answer(QUESTIONS[0], cache="doc", doc_cache="causal")

    causal = Index.open(tmp_path / "causal", default_model)
    causal.add(DOCS[:2], cache_kv="causal")
    assert causal.kv_kinds == ("causal",) and len(causal.kv) == 2
    with pytest.raises(ValueError, match="cache='doc_query' needs passage key/value states of kind 'bidirectional'"):
        RAG(default_model, causal).answer(QUESTIONS[0], cache="doc_query")

    plain = Index.open(tmp_path / "plain", default_model)
    plain.add(DOCS[:2])
    with pytest.raises(ValueError, match="holds no key/value states"):
        RAG(default_model, plain).answer(QUESTIONS[0], cache="doc")
    assert RAG(default_model, plain).answer(QUESTIONS[0], cache="query", max_new_tokens=1).doc_cache is None

    with pytest.raises(ValueError, match="laid out for cache='doc'"):
        both_kinds.answer(QUESTIONS[0], cache="query_doc", doc_cache="causal")
    with pytest.raises(ValueError, match="doc_cache must be one of"):
        both_kinds.answer(QUESTIONS[0], cache="doc", doc_cache="sideways")
    with pytest.raises(ValueError, match="cache_kv must be"):
        plain.add(DOCS[:1], cache_kv="sideways")
    assert kv_kinds_of("both") == kv_kinds_of(["causal", "bidirectional"]) == ("bidirectional", "causal")


def test_evicted_causal_states_are_rebuilt_in_the_same_kind(default_model, tmp_path):
    index = Index.open(tmp_path / "index", default_model)
    index.add(DOCS[:1], cache_kv="causal")
    rag = RAG(default_model, index)
    stored = rag.answer(QUESTIONS[0], cache="doc", max_new_tokens=8)
    index.kv.delete(index.kv.keys())  # as the LRU budget would
    rebuilt = rag.answer(QUESTIONS[0], cache="doc", max_new_tokens=8)
    assert "cache_build" not in stored.timings and rebuilt.timings["cache_build"] > 0
    chunk_id = index.search("Eiffel", 1)[0].chunk_id
    assert rebuilt.text == stored.text and index.kv.keys() == [f"{chunk_id}-chat-{default_model.fingerprint[:16]}"]


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3"])  # gemma3: sliding windows, two RoPEs
def test_k1_causal_doc_cache_equals_uncached_on_tiny_models(tiny_model, architecture, tmp_path):
    model: GritLM = tiny_model(architecture)
    index = Index.open(tmp_path / "index", model)
    index.add(DOCS, cache_kv="causal")
    rag = RAG(model, index)
    for question in QUESTIONS[:2]:
        uncached = rag.answer(question, cache="none", order="doc_first", max_new_tokens=12)
        cached = rag.answer(question, cache="doc", max_new_tokens=12)
        assert cached.passages[0].id == uncached.passages[0].id
        assert cached.text == uncached.text and cached.prompt_tokens == uncached.prompt_tokens
