"""Prompt formats: the one place that says how text is laid out for embedding, chat and RAG.

* embedding: ``<|user|>\\n{instruction}\\n<|embed|>\\n{text}`` (``<|embed|>\\n{text}`` without one);
* chat: the model's own chat template, else GRIT's ``<|user|>``/``<|assistant|>`` format;
* RAG: the question/passage layouts of the paper's Table 7, with the text that follows cached
  segments rendered as a follow-up turn of the chat template.

Everything here is plain text in, text out (a tokenizer only to read its chat template), so the
model, training, RAG, eval and the server all build the same strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Message = dict[str, str]
CacheMode = Literal["none", "query", "doc", "query_doc", "doc_query"]
Order = Literal["query_first", "doc_first"]
CACHE_MODES: tuple[str, ...] = ("none", "query", "doc", "query_doc", "doc_query")

# Instructions from the official GritLM RAG prompts (rag/eval.py), chosen by which text comes first.
QUERY_FIRST_INSTRUCTION = "Optionally using the prior context answer the query prior to it"
DOC_FIRST_INSTRUCTION = "Answer the prior query while optionally using the context prior to it"
# The instruction a RAG question is embedded with (retrieval and query caching alike).
RAG_QUERY_INSTRUCTION = "Given a question, retrieve passages that answer it"


def embedding_prefix(instruction: str = "") -> str:
    """The GRIT prompt put before a text to embed; its tokens are attended to, never pooled."""
    return f"<|user|>\n{instruction}\n<|embed|>\n" if instruction else "<|embed|>\n"


def grit_chat_prompt(messages: Sequence[Message]) -> str:
    """GRIT's own chat format, used when a model has no chat template."""
    parts = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant":
            parts.append(f"<|assistant|>\n{content}</s>")
        else:  # system text is folded into a user turn, as GritLM was trained without one
            parts.append(f"<|user|>\n{content}\n")
    return "".join(parts) + "<|assistant|>\n"


def chat_prompt(tokenizer, messages: Sequence[Message]) -> str:
    """The text that precedes the assistant's reply: the tokenizer's chat template, else GRIT's."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return (tokenizer.bos_token or "") + grit_chat_prompt(messages)


def follow_up_turn(tokenizer, content: str) -> str:
    """A user turn rendered as the chat template renders a later message of a conversation.

    No start-of-sequence token and no second system preamble; a newline first, as in GritLM's
    ``<|embed|>\\n{doc}\\n<|user|>\\n...`` layout. Used for the text after cached segments.
    """
    message = {"role": "user", "content": content}
    if not tokenizer.chat_template:
        return "\n" + grit_chat_prompt([message])
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    before = tokenizer.apply_chat_template(history, tokenize=False)
    full = tokenizer.apply_chat_template([*history, message], add_generation_prompt=True, tokenize=False)
    if not full.startswith(before):
        raise ValueError("the model's chat template does not render a follow-up turn as a suffix of the "
                         "conversation, so it cannot continue after cached segments")
    return "\n" + full[len(before):]


def cached_segment_kinds(cache: CacheMode) -> tuple[str, ...]:
    """Which cached texts come before the prompt, in order: ``"query"`` and/or ``"doc"`` (all passages)."""
    return {"none": (), "query": ("query",), "doc": ("doc",), "query_doc": ("query", "doc"),
            "doc_query": ("doc", "query")}[cache]


def rag_prompt(tokenizer, question: str, documents: Sequence[str], cache: CacheMode = "none",
               order: Order = "query_first", answer_prefix: str = "") -> str:
    """The text run through the model after the cached segments (the whole prompt for ``none``)."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
    joined = "\n\n".join(documents)
    if cache == "none":
        if not documents:
            content = question
        elif order == "query_first":
            content = f"{question}\n\n{joined}\n\n{QUERY_FIRST_INSTRUCTION}"
        else:
            content = f"{joined}\n\n{question}\n\n{DOC_FIRST_INSTRUCTION}"
        return chat_prompt(tokenizer, [{"role": "user", "content": content}]) + answer_prefix
    content = {
        "query": f"{joined}\n\n{QUERY_FIRST_INSTRUCTION}",
        "doc": f"{question}\n\n{DOC_FIRST_INSTRUCTION}",
        "query_doc": QUERY_FIRST_INSTRUCTION,
        "doc_query": DOC_FIRST_INSTRUCTION,
    }[cache]
    return follow_up_turn(tokenizer, content) + answer_prefix


# ---------------------------------------------------------------- causal doc caching

_CONTENT_MARK = "\x00gritkit-content\x00"


def user_turn_parts(tokenizer) -> tuple[str, str]:
    """The chat prompt of one user message split around its content: ``(before, after)``.

    ``before`` is everything up to the user's text (start of sequence, system preamble, user
    marker); ``after`` closes the turn and opens the assistant's. An error for a template that
    renders the content more than once or not at all.
    """
    text = chat_prompt(tokenizer, [{"role": "user", "content": _CONTENT_MARK}])
    if text.count(_CONTENT_MARK) != 1:
        raise ValueError("the model's chat template does not render a user message's text exactly once")
    before, after = text.split(_CONTENT_MARK)
    return before, after


def doc_first_piece(passage: str) -> str:
    """A passage as it stands in the doc-first prompt: the passage and the blank line after it."""
    return f"{passage}\n\n"


def doc_first_layout(tokenizer, question: str, documents: Sequence[str],
                     answer_prefix: str = "") -> tuple[str, list[str], str]:
    """``rag_prompt(..., cache="none", order="doc_first")`` cut at the passage boundaries.

    Returns ``(preamble, pieces, tail)``: the chat text before the user's message, one
    :func:`doc_first_piece` per passage, and the question, instruction and assistant start.
    Their concatenation is the doc-first prompt whenever the chat template inserts the message
    text unchanged (templates that trim it differ by that whitespace). Causal doc caching stores
    the states of ``preamble + piece`` per passage at index time and runs only ``tail`` when asked.
    """
    before, after = user_turn_parts(tokenizer)
    tail = f"{question}\n\n{DOC_FIRST_INSTRUCTION}{after}{answer_prefix}"
    return before, [doc_first_piece(document) for document in documents], tail
