"""Prompt formats: the one place that says how text is laid out for embedding, chat and RAG.

* embedding: ``<|user|>\\n{instruction}\\n<|embed|>\\n{text}`` (``<|embed|>\\n{text}`` without one);
* chat: the model's own chat template, else GRIT's ``<|user|>``/``<|assistant|>`` format;
* RAG: the question/passage layouts of the paper's Table 7, with the text that follows cached
  segments rendered as a follow-up turn of the chat template;
* instructions: the RAG ones, the generic search one, and the per-task embedding instructions
  (in the style of the GritLM paper's appendix, after E5-Mistral): queries get the instruction and
  documents none (retrieval, reranking); in symmetric tasks (STS, pair classification,
  classification, clustering) every text gets it.

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
# A query searching passages, when no task says more (``gritkit similarity``, retrieval and reranking).
SEARCH_INSTRUCTION = "Given a query, retrieve relevant passages"

# Per-task embedding instructions; keys are gritkit task names and MTEB task names.


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


def continuation_prompt(tokenizer, messages: Sequence[Message]) -> str:
    """Messages rendered as the chat template renders later turns of a conversation, up to the reply.

    No start-of-sequence token and no system preamble: the text continues a cache. Found as the
    suffix the messages add to a short rendered history.
    """
    if not tokenizer.chat_template:
        return grit_chat_prompt(messages)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    before = tokenizer.apply_chat_template(history, tokenize=False)
    full = tokenizer.apply_chat_template([*history, *messages], add_generation_prompt=True, tokenize=False)
    if not full.startswith(before):
        raise ValueError("the model's chat template does not render a follow-up turn as a suffix of the "
                         "conversation, so it cannot continue after cached segments")
    return full[len(before):]


def follow_up_turn(tokenizer, content: str) -> str:
    """A user turn after cached segments: a newline first, as in GritLM's ``<|embed|>\\n{doc}\\n<|user|>\\n...``
    layout, then :func:`continuation_prompt`. Used for the text after cached segments in RAG."""
    return "\n" + continuation_prompt(tokenizer, [{"role": "user", "content": content}])


def cached_segment_kinds(cache: CacheMode) -> tuple[str, ...]:
    """Which cached texts come before the prompt, in order: ``"query"`` and/or ``"doc"`` (all passages)."""
    return {"none": (), "query": ("query",), "doc": ("doc",), "query_doc": ("query", "doc"),
            "doc_query": ("doc", "query")}[cache]


def rag_user_message(question: str, documents: Sequence[str], order: Order = "query_first") -> str:
    """The user's message of classic (uncached) RAG: question, passages and the GRIT RAG instruction."""
    if not documents:
        return question
    joined = "\n\n".join(documents)
    if order == "query_first":
        return f"{question}\n\n{joined}\n\n{QUERY_FIRST_INSTRUCTION}"
    return f"{joined}\n\n{question}\n\n{DOC_FIRST_INSTRUCTION}"


def rag_prompt(tokenizer, question: str, documents: Sequence[str], cache: CacheMode = "none",
               order: Order = "query_first", answer_prefix: str = "") -> str:
    """The text run through the model after the cached segments (the whole prompt for ``none``)."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
    if cache == "none":
        content = rag_user_message(question, documents, order)
        return chat_prompt(tokenizer, [{"role": "user", "content": content}]) + answer_prefix
    joined = "\n\n".join(documents)
    content = {
        "query": f"{joined}\n\n{QUERY_FIRST_INSTRUCTION}",
        "doc": f"{question}\n\n{DOC_FIRST_INSTRUCTION}",
        "query_doc": QUERY_FIRST_INSTRUCTION,
        "doc_query": DOC_FIRST_INSTRUCTION,
    }[cache]
    return follow_up_turn(tokenizer, content) + answer_prefix


INSTRUCTIONS: dict[str, str] = {
    # gritkit tasks
    "stsb": "Retrieve semantically similar text",
    "mrpc": "Retrieve sentences that are paraphrases of the given sentence",
    "banking77": "Given a online banking query, find the corresponding intents",
    "twentynewsgroups": "Identify the topic or theme of the given news articles",
    "trecqa": "Given a question, retrieve sentences that answer the question",
    "wikiqa": "Given a question, retrieve Wikipedia sentences that answer the question",
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    # MTEB names of the same or related tasks, as in the paper
    "STSBenchmark": "Retrieve semantically similar text",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
}

TYPE_INSTRUCTIONS: dict[str, str] = {
    "sts": "Retrieve semantically similar text",
    "pairclassification": "Retrieve text that is semantically equivalent to the given text",
    "classification": "Classify the given text into its category",
    "clustering": "Identify the topic or theme of the given text",
    "reranking": SEARCH_INSTRUCTION,
    "retrieval": SEARCH_INSTRUCTION,
}


def instruction_for(task: str, task_type: str = "") -> str:
    """The query instruction of ``task`` (gritkit or MTEB name), else the generic one of its type."""
    type_key = "".join(char for char in task_type.lower() if char.isalpha())  # "PairClassification", "pair_classification"
    return INSTRUCTIONS.get(task) or TYPE_INSTRUCTIONS.get(type_key, "")
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
