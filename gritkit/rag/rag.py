"""Retrieval-augmented generation with GRIT's key/value caching.

One model embeds and generates, so the key/value states computed while embedding a passage
(at index time) or the question (at retrieval time) can be the prefix of generation instead of
running those tokens through the model again. Five modes (the paper's Table 7):

* ``none``: classic RAG, question and passages in one user turn run from scratch
  (``order="query_first"`` or ``"doc_first"``); ``k=0`` answers without retrieval;
* ``query``: the question's cache from the retrieval pass is the prefix, passages then run;
* ``doc``: the passages' caches from the index are the prefix, the question then runs;
* ``query_doc`` / ``doc_query``: both cached, concatenated in that order.

Every cached segment was computed alone from position 0 (bidirectionally, as embedded); segments
after the first are re-positioned by rotating their keys (``gritkit.rag.kv.build_cache``).
The prompt texts follow the official GritLM RAG code; the user/assistant markers come from the
model's own chat format (``GritLM.chat_prompt``). See docs/rag.md for the exact layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gritkit.model import GritLM
from gritkit.prompts import CACHE_MODES, CacheMode, Order, cached_segment_kinds, rag_prompt
from gritkit.rag.index import Index, Passage
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

    # ------------------------------------------------------------ prompts

    def prompt_after_cache(self, question: str, passages: list[Passage], cache: CacheMode = "none",
                           order: Order = "query_first") -> str:
        """The text run through the model after the cached segments (the whole prompt for ``none``)."""
        return rag_prompt(self.model.tokenizer, question, [p.text for p in passages], cache, order, self.answer_prefix)

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
    ) -> Answer:
        """Retrieve ``k`` passages for ``question`` and generate an answer using the ``cache`` mode.

        ``order`` applies to ``cache="none"`` only; ``k=0`` (with ``cache="none"``) skips retrieval.
        """
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        if order not in ("query_first", "doc_first"):
            raise ValueError(f"order must be 'query_first' or 'doc_first', not {order!r}")
        if k < 0 or (k == 0 and cache != "none"):
            raise ValueError("k must be >= 1 (k=0, no retrieval, works with cache='none' only)")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question is empty")
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
        if cache in ("doc", "query_doc", "doc_query"):
            for passage in passages:
                fetch_start = time.perf_counter()
                segment, built = self.index.kv_segment(passage, model)
                build_seconds += (time.perf_counter() - fetch_start) if built else 0.0
                doc_segments.append(segment)
        segments = [s for kind in cached_segment_kinds(cache) for s in ([query_segment] if kind == "query" else doc_segments)]
        prompt_ids = model.tokenizer(self.prompt_after_cache(question, passages, cache, order),
                                     add_special_tokens=False)["input_ids"]
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
                                         temperature=temperature, seed=seed))
        timings["generate"] = time.perf_counter() - generate_start
        timings["total"] = time.perf_counter() - start
        return Answer(text=text.strip(), passages=passages, timings=timings, cache=cache, order=order,
                      cached_tokens=cached_tokens, prompt_tokens=cached_tokens + len(prompt_ids))
