"""Retrieval-augmented generation with GRIT's key/value caching.

One model embeds and generates, so the key/value states computed while embedding a passage
(at index time) or the question (at retrieval time) can be the prefix of generation instead of
running those tokens through the model again. Five modes (the paper's Table 7):

* ``none``: classic RAG, question and passages in one user turn run from scratch
  (``order="query_first"`` or ``"doc_first"``); ``k=0`` answers without retrieval;
* ``query``: the question's cache from the retrieval pass is the prefix, passages then run;
* ``doc``: the passages' caches from the index are the prefix, the question then runs;
* ``query_doc`` / ``doc_query``: both cached, concatenated in that order.

Every cached segment was computed alone from position 0; segments after the first are
re-positioned by rotating their keys (``gritkit.rag.kv.build_cache``). Passage states are of one
of two kinds (``doc_cache``): ``"bidirectional"``, those of the embedding pass, or ``"causal"``,
the passage run causally in the doc-first chat layout at index time, so that ``cache="doc"`` with
one passage gives exactly the answer of uncached doc-first RAG.
The prompt texts follow the official GritLM RAG code; the user/assistant markers come from the
model's own chat format (``GritLM.chat_prompt``). See docs/rag.md for the exact layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gritkit.model import GritLM
from gritkit.prompts import (CACHE_MODES, CacheMode, Order, cached_segment_kinds, doc_first_layout, rag_prompt,
                             user_turn_parts)
from gritkit.rag.index import KV_KINDS, Index, KVKind, Passage, chat_token_ids
from gritkit.rag.kv import Segment, build_cache


@dataclass
class Answer:
    """A generated answer with the passages it used and seconds per stage.

    ``timings`` has ``retrieve``, ``prefill`` (building the prefix cache and running the prompt),
    ``generate`` and ``total``; ``cache_build`` too when a passage cache had to be computed now
    (it is part of ``total``; a cache stored at index time costs nothing here).
    """

    text: str
    passages: list[Passage]
    timings: dict[str, float]
    cache: CacheMode
    order: Order
    cached_tokens: int = 0
    prompt_tokens: int = 0
    doc_cache: KVKind | None = None  # the kind of passage states used (cache modes with passages)


class RAG:
    """Answer questions over an :class:`Index` with one GritLM, reusing embedding caches.

    Example::

        rag = RAG(model, Index.open("./myindex", model))
        answer = rag.answer("Who wrote Hamlet?", cache="doc", k=1)
        print(answer.text, answer.passages[0].score, answer.timings["total"])
    """

    def __init__(self, model: GritLM, index: Index, *, answer_prefix: str = ""):
        """Raises :class:`~gritkit.rag.index.StaleIndexError` if ``model`` does not embed as the index was built."""
        index.check_model(model)
        self.model = model
        self.index = index
        self.answer_prefix = answer_prefix
        self._preamble: Segment | None = None

    # ------------------------------------------------------------ prompts

    def prompt_after_cache(self, question: str, passages: list[Passage], cache: CacheMode = "none",
                           order: Order = "query_first", doc_cache: KVKind = "bidirectional") -> str:
        """The text run through the model after the cached segments (the whole prompt for ``none``)."""
        texts = [p.text for p in passages]
        if cache == "doc" and doc_cache == "causal":
            return doc_first_layout(self.model.tokenizer, question, texts, self.answer_prefix)[2]
        return rag_prompt(self.model.tokenizer, question, texts, cache, order, self.answer_prefix)

    def prompt_ids_after_cache(self, question: str, passages: list[Passage], cache: CacheMode = "none",
                               order: Order = "query_first", doc_cache: KVKind = "bidirectional") -> list[int]:
        """Token ids of :meth:`prompt_after_cache`.

        Uncached doc-first RAG is tokenised in the pieces of ``doc_first_layout`` (preamble, each
        passage, the rest), the very ids causal doc caching stores and runs, so the two agree
        token for token even where a passage ends in whitespace that joint tokenisation would merge.
        """
        tokenizer = self.model.tokenizer
        text = self.prompt_after_cache(question, passages, cache, order, doc_cache)
        if cache == "none" and order == "doc_first" and passages:
            preamble, pieces, tail = doc_first_layout(tokenizer, question, [p.text for p in passages],
                                                      self.answer_prefix)
            if preamble + "".join(pieces) + tail == text:  # else a template that rewrites the message
                return [token for piece in (preamble, *pieces, tail) for token in chat_token_ids(tokenizer, piece)]
        return chat_token_ids(tokenizer, text)

    def _causal_preamble(self) -> Segment:
        """The chat preamble's causal states, shared by every causal passage segment (computed once)."""
        if self._preamble is None:
            ids = chat_token_ids(self.model.tokenizer, user_turn_parts(self.model.tokenizer)[0])
            self._preamble = Segment.from_cache(self.model.prefill(ids)[0], len(ids))
        return self._preamble

    def resolve_doc_cache(self, cache: CacheMode, doc_cache: KVKind | None = None) -> KVKind | None:
        """The passage-state kind ``answer`` uses: ``doc_cache`` if the index holds it, else the kind the
        index holds (``"causal"`` first for ``cache="doc"``); an error when it holds none that fits."""
        if doc_cache is not None and doc_cache not in KV_KINDS:
            raise ValueError(f"doc_cache must be one of {', '.join(KV_KINDS)}, not {doc_cache!r}")
        if "doc" not in cached_segment_kinds(cache):
            return None
        held = self.index.kv_kinds
        usable = ("causal", "bidirectional") if cache == "doc" else ("bidirectional",)
        if doc_cache == "causal" and cache != "doc":
            raise ValueError(f"causal passage states are laid out for cache='doc' (the doc-first chat prompt); "
                             f"cache={cache!r} needs bidirectional ones")
        if doc_cache is None:
            doc_cache = next((kind for kind in usable if kind in held), None)
            if doc_cache is None:
                raise ValueError(f"cache={cache!r} needs passage key/value states of kind "
                                 f"{' or '.join(repr(kind) for kind in usable)}, and the index at {self.index.path} "
                                 f"holds {self._held(held)}: add the documents with cache_kv="
                                 f"{usable[0]!r} (CLI: --cache-kv {usable[0]}), or use cache='none'")
        elif doc_cache not in held:
            raise ValueError(f"doc_cache={doc_cache!r}, but the index at {self.index.path} holds {self._held(held)}: "
                             f"add the documents with cache_kv={doc_cache!r} (CLI: --cache-kv {doc_cache})")
        return doc_cache

    @staticmethod
    def _held(kinds: tuple[str, ...]) -> str:
        return f"only {' and '.join(repr(kind) for kind in kinds)} states" if kinds else "no key/value states"

    # ------------------------------------------------------------ answering

    def answer(
        self,
        question: str,
        *,
        cache: CacheMode = "none",
        k: int = 1,
        max_new_tokens: int = 16,
        order: Order = "query_first",
        temperature: float = 0.0,
        seed: int | None = None,
        doc_cache: KVKind | None = None,
        **penalties: float,
    ) -> Answer:
        """Retrieve ``k`` passages for ``question`` and generate an answer using the ``cache`` mode.

        ``order`` applies to ``cache="none"`` only; ``k=0`` (with ``cache="none"``) skips retrieval.
        ``doc_cache`` picks the passage states of the modes with passages: ``"causal"`` (``cache="doc"``
        only; with ``k=1`` the answer equals ``cache="none", order="doc_first"``) or ``"bidirectional"``
        (the embedding pass). Default: what the index holds, causal first for ``"doc"``. Asking for a
        kind the index does not hold is a ``ValueError``. ``penalties`` are those of :meth:`GritLM.generate`.
        """
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        if order not in ("query_first", "doc_first"):
            raise ValueError(f"order must be 'query_first' or 'doc_first', not {order!r}")
        if k < 0 or (k == 0 and cache != "none"):
            raise ValueError("k must be >= 1 (k=0, no retrieval, works with cache='none' only)")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
        doc_cache = self.resolve_doc_cache(cache, doc_cache)
        model, timings = self.model, {}
        start = time.perf_counter()

        query_segment, passages = None, []
        if k:
            if cache in ("query", "query_doc", "doc_query"):
                vector, query_cache, token_ids = model.embed_with_cache(question, self.index.query_instruction)
                query_segment = Segment.from_cache(query_cache, len(token_ids))
            else:
                vector = model.encode(question, instruction=self.index.query_instruction)
            passages = self.index.search(vector, k)
            if not passages:
                raise ValueError(f"the index at {self.index.path} is empty: add documents first")
        timings["retrieve"] = time.perf_counter() - start

        prefill_start = time.perf_counter()
        doc_segments, build_seconds = [], 0.0
        if doc_cache:
            for passage in passages:
                fetch_start = time.perf_counter()
                segment, built = self.index.kv_segment(passage, model, kind=doc_cache)
                build_seconds += (time.perf_counter() - fetch_start) if built else 0.0
                doc_segments.append(segment)
            if doc_cache == "causal":  # the chat preamble once, then every passage piece after it
                doc_segments.insert(0, self._causal_preamble())
        segments = [s for kind in cached_segment_kinds(cache) for s in ([query_segment] if kind == "query" else doc_segments)]
        prompt_ids = self.prompt_ids_after_cache(question, passages, cache, order, doc_cache or "bidirectional")
        cached_tokens = sum(segment.length for segment in segments)
        if cached_tokens + len(prompt_ids) + max_new_tokens > model.max_length:
            raise ValueError(f"the prompt ({cached_tokens + len(prompt_ids)} tokens with the passages) and "
                             f"max_new_tokens={max_new_tokens} are over the model's context of {model.max_length}")
        prefix = build_cache(model, segments) if segments else None
        # Everything but the last prompt token is prefilled here; the last one starts generation.
        past = model.prefill(prompt_ids[:-1], prefix)[0] if len(prompt_ids) > 1 else prefix
        timings["prefill"] = time.perf_counter() - prefill_start - build_seconds
        if build_seconds:
            timings["cache_build"] = build_seconds

        generate_start = time.perf_counter()
        text = "".join(model.stream_text(prompt_ids[-1:], past_key_values=past, max_new_tokens=max_new_tokens,
                                         temperature=temperature, seed=seed, **penalties))
        timings["generate"] = time.perf_counter() - generate_start
        timings["total"] = time.perf_counter() - start
        return Answer(text=text.strip(), passages=passages, timings=timings, cache=cache, order=order,
                      cached_tokens=cached_tokens, prompt_tokens=cached_tokens + len(prompt_ids), doc_cache=doc_cache)
