"""The OpenAI-compatible server: one GritLM answers embeddings, chat, completions (and RAG).

``create_app(model)`` returns a FastAPI app; ``gritkit serve`` runs it with uvicorn.
Routes follow OpenAI's wire format so the official client, LangChain and LlamaIndex
work unchanged with ``base_url="http://127.0.0.1:8000/v1"``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gritkit.model import GritLM, compact_embeddings
from gritkit.serve.batching import (Cancelled, EmbeddingBatcher, GenerationJob, GenerationWorker, QueueFull, Ticket,
                                    install_stop_checks)
from gritkit.serve.errors import (BodyGuard, OpenAIError, client_gone, install_handlers, queue_full, shutting_down,
                                  time_limit)
from gritkit.serve.metrics import Metrics, MetricsMiddleware
from gritkit.serve.schemas import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RagRequest,
                                   SamplingRequest)

DEFAULT_MAX_TOKENS = 256  # when a request gives no max_tokens
RAG_DEFAULT_MAX_TOKENS = 16  # answer length when a RAG request gives no max_tokens
OPEN_PATHS = ("/health",)  # reachable without the API key
# Byte-level BPE never makes more tokens than UTF-8 bytes, but one token can span many characters
# (SmolLM2 has an 81-character one). Real text averages ~4 characters per token; a text over 16 per
# allowed token is refused on its length alone, before the tokenizer spends time and memory on it.
CHARS_PER_TOKEN = 16
T = TypeVar("T")


def served_model_id(model: GritLM) -> str:
    """The id clients pass as ``model``: ``gritkit-<name>`` (``gritkit-default`` for the default)."""
    name = Path(model.name or "default").name.removesuffix(".gguf")
    return f"gritkit-{name}"


@dataclasses.dataclass
class Server:
    """What the routes share: the model, its queues, limits and metrics."""

    model: GritLM
    model_id: str
    metrics: Metrics
    batcher: EmbeddingBatcher
    generator: GenerationWorker
    max_inputs: int
    max_tokens_limit: int
    max_embedding_tokens: int
    max_input_tokens: int
    request_timeout: float | None
    rag_worker: GenerationWorker | None = None
    rag: Any = None
    stopping: bool = False
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_id:
            raise OpenAIError(404, f"The model '{name}' does not exist; this server serves '{self.model_id}'.",
                              param="model", code="model_not_found")

    def max_new_tokens(self, requested: int | None, param: str = "max_tokens") -> int:
        if requested is None:
            return min(DEFAULT_MAX_TOKENS, self.max_tokens_limit)
        if not 1 <= requested <= self.max_tokens_limit:
            raise OpenAIError(400, f"'{param}' must be between 1 and {self.max_tokens_limit}, got {requested}.",
                              param=param, code="invalid_value")
        return requested

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def check_length(self, characters: int, room: int, param: str, what: str) -> None:
        """400 before tokenising when ``characters`` cannot fit ``room`` tokens (see CHARS_PER_TOKEN)."""
        if characters > CHARS_PER_TOKEN * room:
            raise OpenAIError(400, f"{what} has {characters} characters, more than this server tokenises for "
                                   f"{room} tokens ({CHARS_PER_TOKEN} characters per token).", param=param,
                              code="context_length_exceeded")

    def ticket(self) -> Ticket:
        return Ticket(self.request_timeout)

    def stop_work(self) -> None:
        """Shutting down: stop every request's work (each answers with what it has, or 503)."""
        self.stopping = True
        jobs = [*self.batcher.jobs]
        for worker in (self.generator, self.rag_worker):
            if worker is not None:
                jobs += [*worker.queue, *worker.running]
        for job in jobs:
            job.ticket.cancel()


def create_app(
    model: GritLM,
    *,
    api_key: str | None = None,
    model_id: str | None = None,
    max_batch_size: int = 32,
    batch_window_ms: float = 5.0,
    max_queue: int = 256,
    max_body_bytes: int = 8 * 1024 * 1024,
    max_inputs: int = 2048,
    max_tokens_limit: int = 2048,
    max_embedding_tokens: int = 16384,
    max_input_tokens: int = 2048,
    max_batch_tokens: int = 4096,
    max_queued_tokens: int = 131072,
    request_timeout: float | None = 120.0,
    read_timeout: float | None = 10.0,
    generation_slots: int = 4,
    index_dir: str | Path | None = None,
) -> FastAPI:
    """Build the server app for ``model``.

    Args:
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        model_id: the name clients pass as ``model`` (default ``gritkit-<model name>``).
        max_batch_size / batch_window_ms: micro-batching of concurrent embedding requests.
        max_queue / max_queued_tokens: requests, and tokens (inputs; prompt + max_tokens), that may be
            queued or running per queue (embeddings, generation, rag) before 429s with Retry-After.
        max_body_bytes / max_inputs / max_tokens_limit: request size limits (413 / 400 beyond).
        max_embedding_tokens: most tokens in one embeddings request, summed over its inputs (400 beyond).
        max_input_tokens: most tokens in one embedding input (at most the context; 400 beyond). One
            forward layer over a long input takes seconds on a CPU, and work stops between layers.
        max_batch_tokens: most padded tokens in one embedding forward pass (a longer input goes alone).
        request_timeout: seconds a request may take; work past it stops (a generation returns what
            it has with finish_reason "length", other requests get 408). None: no limit.
        read_timeout: seconds a client has to send its request body (408 beyond).
        generation_slots: generations decoded at once, interleaved token by token.
        index_dir: a ``gritkit.rag`` index; enables ``POST /v1/rag``.
    """
    if max_queued_tokens < max(max_embedding_tokens, model.max_length):
        raise ValueError(f"max_queued_tokens ({max_queued_tokens}) must be at least max_embedding_tokens "
                         f"({max_embedding_tokens}) and the context ({model.max_length}), or a request within "
                         "budget could never be queued")
    install_stop_checks(model)
    metrics = Metrics()
    server = Server(
        model=model,
        model_id=model_id or served_model_id(model),
        metrics=metrics,
        batcher=EmbeddingBatcher(model, max_batch_size=max_batch_size, max_batch_tokens=max_batch_tokens,
                                 window_ms=batch_window_ms,
                                 max_queue=max_queue, max_queued_tokens=max_queued_tokens,
                                 on_batch=metrics.embedding_batch_size.observe),
        generator=GenerationWorker(slots=generation_slots, max_queue=max_queue, max_queued_tokens=max_queued_tokens),
        max_inputs=max_inputs,
        max_tokens_limit=max_tokens_limit,
        max_embedding_tokens=max_embedding_tokens,
        max_input_tokens=min(max_input_tokens, model.max_length),
        request_timeout=request_timeout,
    )
    if index_dir is not None:
        server.rag_worker = GenerationWorker(slots=1, max_queue=max_queue, max_queued_tokens=max_queued_tokens,
                                             name="rag")
        server.rag = open_rag(model, index_dir, server.rag_worker)
    metrics.queue_depth.labels("embeddings").set_function(lambda: server.batcher.pending)
    metrics.queue_depth.labels("generation").set_function(lambda: server.generator.waiting)
    metrics.active_generations.set_function(lambda: server.generator.active)
    metrics.model_busy.labels("embeddings").set_function(lambda: server.batcher.encoding)
    metrics.model_busy.labels("generation").set_function(lambda: server.generator.active)
    if server.rag_worker:
        metrics.queue_depth.labels("rag").set_function(lambda: server.rag_worker.waiting)
        metrics.model_busy.labels("rag").set_function(lambda: server.rag_worker.active)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        yield
        # uvicorn has waited --graceful-timeout for in-flight requests and cancelled the rest:
        # now stop whatever work is left (each within one layer) rather than let it run on.
        await server.batcher.stop()
        workers = [server.generator] + ([server.rag_worker] if server.rag_worker else [])
        await asyncio.gather(*(asyncio.to_thread(worker.stop) for worker in workers))

    app = FastAPI(title="gritkit", summary="OpenAI-compatible embeddings and chat from one GRIT model",
                  lifespan=lifespan)
    app.state.server = server
    install_handlers(app)
    app.include_router(router)
    # Outermost last: metrics see every response, auth runs before the body is read.
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes, read_timeout=read_timeout)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths={route.path for route in router.routes})
    return app


def open_rag(model: GritLM, index_dir: str | Path, worker: GenerationWorker) -> Any:
    """A ``gritkit.rag.RAG`` over the existing index at ``index_dir``, opened on ``worker``'s thread.

    The index holds a SQLite connection, usable only on the thread that opened it, so the
    RAG worker has one thread that both opens and answers.
    """
    if not Path(index_dir).is_dir():
        raise FileNotFoundError(f"no index directory at {index_dir}")
    from gritkit.rag import RAG, Index  # optional: only --index needs faiss

    return worker.call(lambda: RAG(model, Index.open(index_dir, model)))


class BearerAuth:
    """ASGI middleware: 401 with an OpenAI error body unless ``Authorization: Bearer <api_key>``."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.api_key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key):
            return await self.app(scope, receive, send)
        message = ("Incorrect API key provided." if token else
                   "You didn't provide an API key: send 'Authorization: Bearer YOUR_KEY'.")
        error = OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.response()(scope, receive, send)


router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


async def _until_disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the client leaving (or the response ending).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def guarded(request: Request, ticket: Ticket, work: Awaitable[T], *, limit: float | None = None) -> T:
    """Await ``work`` while watching the client: if it leaves, cancel ``ticket`` (the work stops).

    With ``limit`` (the ticket's time limit) the wait also ends at the ticket's deadline. Raises a
    499 (client gone; nobody reads it) or a 408 (past the time limit) as :class:`OpenAIError`.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        timeout = max(0.0, ticket.deadline - time.monotonic()) if limit and ticket.deadline else None
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            try:
                return task.result()
            except Cancelled:
                pass  # stopped by its ticket: which reason is said below
        gone, expired = watcher in done, ticket.expired
        ticket.cancel()
        if gone:
            raise client_gone()
        if expired or not done:  # nothing done: the wait itself ran out at the deadline
            raise time_limit(limit or 0)
        raise shutting_down()  # stopped by stop_work
    finally:
        watcher.cancel()
        task.cancel()
        ticket.cancel()  # a no-op for finished work; stops it if this handler was cancelled (shutdown)


# ---------------------------------------------------------------- embeddings

@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    server = _server(request)
    server.check_model(body.model)
    if len(body.input) > server.max_inputs:
        raise OpenAIError(400, f"'input' has {len(body.input)} items; at most {server.max_inputs} are allowed.",
                          param="input", code="too_many_inputs")
    if body.dimensions is not None and body.dimensions > server.model.embedding_dim:
        raise OpenAIError(400, f"'dimensions' must be at most {server.model.embedding_dim} for this model.",
                          param="dimensions", code="invalid_value")
    check_embedding_budget(server, body)
    texts, lengths = await asyncio.to_thread(embedding_texts, server.model, body, server.max_input_tokens)
    token_count = sum(lengths)
    if token_count > server.max_embedding_tokens:
        raise OpenAIError(400, f"'input' has {token_count} tokens in all; at most {server.max_embedding_tokens} "
                               "are embedded per request: split it over several requests.", param="input",
                          code="too_many_tokens")
    ticket = server.ticket()
    try:
        encoding = server.batcher.encode(texts, body.instruction, lengths=lengths, ticket=ticket)
        vectors = await guarded(request, ticket, encoding, limit=server.request_timeout)
    except QueueFull:
        raise queue_full("embeddings") from None
    if body.dimensions is not None or body.precision != "float32":
        vectors = compact_embeddings(vectors, dimensions=body.dimensions, precision=body.precision)
    server.metrics.tokens.labels("embedding").inc(token_count)
    data = [{"object": "embedding", "index": index, "embedding": format_vector(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)]
    usage = {"prompt_tokens": token_count, "total_tokens": token_count}
    return JSONResponse({"object": "list", "data": data, "model": server.model_id, "usage": usage})


def check_embedding_budget(server: Server, body: EmbeddingRequest) -> None:
    """Refuse inputs that cannot fit, by their length alone (before any tokenising)."""
    items, budget = body.input, server.max_embedding_tokens
    if isinstance(items[0], list):  # token ids: their count is exact
        total = sum(len(ids) for ids in items)
        if total > budget:
            raise OpenAIError(400, f"'input' has {total} tokens in all; at most {budget} are embedded per request: "
                                   "split it over several requests.", param="input", code="too_many_tokens")
        return
    for index, text in enumerate(items):
        server.check_length(len(text), server.max_input_tokens, "input", f"input[{index}]")
    server.check_length(sum(len(text) for text in items), budget, "input", "'input'")


def embedding_texts(model: GritLM, body: EmbeddingRequest, max_input_tokens: int) -> tuple[list[str], list[int]]:
    """Decode token arrays and check every input before it joins a shared batch.

    Returns the texts and the tokens of each (instruction prompt included). Empty or
    whitespace-only strings and inputs over ``max_input_tokens`` are 400s, never truncated.
    """
    items = body.input
    if isinstance(items[0], list):
        vocabulary = len(model.tokenizer)
        for index, ids in enumerate(items):
            if bad := [token for token in ids if not 0 <= token < vocabulary]:
                raise OpenAIError(400, f"input[{index}] has token id {bad[0]}, outside the vocabulary "
                                       f"(0..{vocabulary - 1}).", param="input", code="invalid_value")
        items = model.tokenizer.batch_decode(items)
    lengths = []
    for index, text in enumerate(items):
        if not text.strip():
            raise OpenAIError(400, f"input[{index}] is empty: an empty or whitespace-only string has no tokens "
                                   "to embed.", param="input", code="invalid_value")
        try:
            batch = model.tokenize_for_embedding([text], body.instruction, truncate=False,
                                                 max_length=max_input_tokens)
        except ValueError as error:
            raise OpenAIError(400, f"input[{index}]: {error} (this server's --max-input-tokens).", param="input",
                              code="context_length_exceeded") from None
        lengths.append(int(batch.attention_mask.sum()))
    return items, lengths


def format_vector(vector: np.ndarray, encoding_format: Literal["float", "base64"]) -> list[float] | str:
    """A JSON list, or base64 of the vector's bytes: little-endian float32 (what OpenAI sends), int8
    or packed bits (uint8) for the compact precisions."""
    if encoding_format == "base64":
        raw = vector.astype("<f4") if vector.dtype == np.float32 else vector
        return base64.b64encode(raw.tobytes()).decode("ascii")
    return vector.tolist()


# ---------------------------------------------------------------- chat and text completions

@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    server = _server(request)
    server.check_model(body.model)
    if body.max_completion_tokens is not None:
        max_tokens = server.max_new_tokens(body.max_completion_tokens, "max_completion_tokens")
    else:
        max_tokens = server.max_new_tokens(body.max_tokens)
    messages = [message.as_dict() for message in body.messages]
    server.check_length(sum(len(message["content"]) for message in messages), server.model.max_length - max_tokens,
                        "messages", "'messages'")
    try:
        prompt_ids = await asyncio.to_thread(server.model.prompt_ids, messages)
    except Exception as error:  # the chat template refused these messages (e.g. role order)
        raise OpenAIError(400, f"Could not format 'messages' with the model's chat template: {error}",
                          param="messages", code="invalid_value") from None
    return await complete(request, body, prompt_ids, max_tokens, Reply("chat", server.model_id))


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    server = _server(request)
    server.check_model(body.model)
    max_tokens = server.max_new_tokens(body.max_tokens)
    if not body.prompt_text():
        raise OpenAIError(400, "'prompt' is empty.", param="prompt", code="invalid_value")
    server.check_length(len(body.prompt_text()), server.model.max_length - max_tokens, "prompt", "'prompt'")
    prompt_ids = await asyncio.to_thread(server.model.prompt_ids, body.prompt_text())
    return await complete(request, body, prompt_ids, max_tokens, Reply("text", server.model_id))


class Reply:
    """OpenAI response and stream-chunk bodies for a chat or a text completion."""

    def __init__(self, kind: Literal["chat", "text"], model_id: str):
        self.kind, self.model_id = kind, model_id
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _body(self, object: str, choices: list[dict], **extra: Any) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model_id,
                "choices": choices, **extra}

    def _choice(self, text: str | None, finish_reason: str | None, *, delta: bool) -> dict:
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        content = {"role": "assistant", "content": text} if not delta else ({"content": text} if text else {})
        return {"index": 0, "delta" if delta else "message": content, "logprobs": None, "finish_reason": finish_reason}

    def full(self, text: str, finish_reason: str, usage: dict) -> dict:
        object = "chat.completion" if self.kind == "chat" else "text_completion"
        return self._body(object, [self._choice(text, finish_reason, delta=False)], usage=usage)

    def chunk(self, text: str | None = None, finish_reason: str | None = None, *, role: bool = False) -> dict:
        object = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        choice = self._choice(text, finish_reason, delta=True)
        if role:
            choice["delta"] = {"role": "assistant", "content": ""}
        return self._body(object, [choice])

    def usage_chunk(self, usage: dict) -> dict:
        object = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self._body(object, [], usage=usage)


async def complete(request: Request, body: SamplingRequest, prompt_ids: list[int], max_tokens: int,
                   reply: Reply) -> Response:
    """Queue one generation and answer it whole or as server-sent events.

    A generation that reaches the time limit ends there, like one that reaches max_tokens
    (finish_reason "length"); one that never started within it is a 408.
    """
    server = _server(request)
    context = server.model.max_length
    if len(prompt_ids) + max_tokens > context:
        raise OpenAIError(400, f"This model's maximum context length is {context} tokens; the request needs "
                               f"{len(prompt_ids) + max_tokens} ({len(prompt_ids)} in the prompt, {max_tokens} "
                               "for the completion).", param="messages" if reply.kind == "chat" else "prompt",
                          code="context_length_exceeded")
    # top_p=0 (OpenAI allows it) keeps only the likeliest token; so do a vanishing top_p or temperature,
    # which would otherwise underflow (top_p) or overflow (logits / temperature) in float32.
    greedy = body.top_p < 1e-6 or body.temperature < 1e-6
    sampling = dict(stop=body.stops(), max_new_tokens=max_tokens, temperature=0.0 if greedy else body.temperature,
                    top_p=1.0 if greedy else body.top_p, seed=body.seed, **body.penalties())
    ticket = server.ticket()
    try:
        job = server.generator.submit(lambda: server.model.stream_text(prompt_ids, **sampling),
                                      tokens=len(prompt_ids) + max_tokens, ticket=ticket)
    except QueueFull:
        raise queue_full("generation") from None
    server.metrics.tokens.labels("prompt").inc(len(prompt_ids))
    usage = Usage(server, len(prompt_ids), max_tokens)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(event_stream(job, reply, usage, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(job.cancel))
    pieces: list[str] = []

    async def collect() -> None:
        async for piece in job:
            pieces.append(piece)

    try:
        # The worker ends the job at the time limit itself; this wait only watches the client.
        await guarded(request, ticket, collect())
    except ValueError as error:  # a sampling option the model refused
        raise OpenAIError(400, str(error), code="invalid_value") from None
    finally:
        job.cancel()
    if ticket.expired and not pieces:
        raise time_limit(server.request_timeout or 0)
    if server.stopping and not pieces:
        raise shutting_down()
    counts, finish_reason = usage.settle("".join(pieces))
    if ticket.expired or server.stopping:  # cut short by the time limit or shutdown: a length limit too
        finish_reason = "length"
    text = "".join(pieces)
    return JSONResponse(reply.full(text, finish_reason, counts))


class Usage:
    """Token counts of one completion; completion tokens are the tokens of the returned text."""

    def __init__(self, server: Server, prompt_tokens: int, max_tokens: int):
        self.server, self.prompt_tokens, self.max_tokens = server, prompt_tokens, max_tokens

    def settle(self, text: str) -> tuple[dict, Literal["stop", "length"]]:
        """The usage body and finish_reason for the final ``text``; counts its tokens in the metrics."""
        completion = self.server.count_tokens(text)
        self.server.metrics.tokens.labels("completion").inc(completion)
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                 "total_tokens": self.prompt_tokens + completion}
        return usage, "length" if completion >= self.max_tokens else "stop"


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def event_stream(job: GenerationJob, reply: Reply, usage: Usage, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text piece, a final chunk with finish_reason, then ``[DONE]``.

    Leaving early (Starlette cancels the stream when the client disconnects) cancels the job,
    so the worker frees its slot at the next layer.
    """
    pieces: list[str] = []
    try:
        if reply.kind == "chat":
            yield sse(reply.chunk(role=True))
        async for piece in job:
            pieces.append(piece)
            yield sse(reply.chunk(piece))
        counts, finish_reason = usage.settle("".join(pieces))
        if job.ticket.should_stop():  # stopped at the time limit or by shutdown: like max_tokens, a length limit
            finish_reason = "length"
        yield sse(reply.chunk(finish_reason=finish_reason))
        if include_usage:
            yield sse(reply.usage_chunk(counts))
    except Exception as error:  # headers are already sent: report the error in-band
        kind, status = ("invalid_request_error", 400) if isinstance(error, ValueError) else ("server_error", 500)
        message = str(error) if status == 400 else "The server had an error while generating."
        yield sse({"error": {"message": message, "type": kind, "param": None, "code": None}})
    finally:
        job.cancel()
    yield sse("[DONE]")


# ---------------------------------------------------------------- RAG, models, health, metrics

@router.post("/v1/rag")
async def answer_with_rag(body: RagRequest, request: Request) -> Response:
    """gritkit extension: retrieve passages from the served index and answer from them."""
    server = _server(request)
    server.check_model(body.model)
    if server.rag is None:
        raise OpenAIError(404, "This server was started without --index, so /v1/rag is off.",
                          code="rag_not_enabled")
    answer_tokens = RAG_DEFAULT_MAX_TOKENS if body.max_tokens is None else server.max_new_tokens(body.max_tokens)
    options = {"k": body.k, "cache": body.cache, "doc_cache": body.doc_cache, "max_new_tokens": answer_tokens}
    options = {name: value for name, value in options.items() if value is not None}  # else RAG's defaults
    # The query, the passages and the answer share the context: check the query here (cheaply first),
    # and RAG.answer checks the whole prompt once it has the passages, before generating.
    room = server.model.max_length - answer_tokens
    server.check_length(len(body.query), room, "query", "'query'")
    query_tokens = await asyncio.to_thread(server.count_tokens, body.query)
    if query_tokens > room:
        raise OpenAIError(400, f"'query' has {query_tokens} tokens; with {answer_tokens} for the answer this is over "
                               f"the model's context of {server.model.max_length} tokens.", param="query",
                          code="context_length_exceeded")
    ticket = server.ticket()
    try:
        job = server.rag_worker.submit(lambda: [server.rag.answer(body.query, **options)],
                                       tokens=query_tokens + answer_tokens, ticket=ticket)
    except QueueFull:
        raise queue_full("rag") from None

    async def collect() -> list:
        return [item async for item in job]

    try:
        answers = await guarded(request, ticket, collect(), limit=server.request_timeout)
    except ValueError as error:  # an unknown cache mode, passage states the index lacks, a prompt over the context
        raise OpenAIError(400, str(error), code="invalid_value") from None
    finally:
        job.cancel()
    if not answers:  # stopped by its ticket before it answered
        raise time_limit(server.request_timeout or 0) if ticket.expired else shutting_down()
    [answer] = answers
    passages = [{"id": p.id, "doc_id": p.doc_id, "text": p.text, "score": float(p.score), "metadata": p.metadata}
                for p in answer.passages]
    usage = {"prompt_tokens": answer.prompt_tokens, "cached_tokens": answer.cached_tokens}
    return JSONResponse({"object": "rag.answer", "model": server.model_id, "answer": answer.text,
                         "passages": passages, "cache": answer.cache, "doc_cache": answer.doc_cache,
                         "timings": answer.timings, "usage": usage})


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(_server(request))]}


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: str, request: Request) -> dict:
    server = _server(request)
    server.check_model(model_id)
    return _model_card(server)


def _model_card(server: Server) -> dict:
    return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "gritkit",
            "embedding_dim": server.model.embedding_dim, "context_length": server.model.max_length}


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(request: Request) -> dict:
    return {"status": "ok", "model": _server(request).model_id}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = _server(request).metrics
    return Response(registry.render(), media_type=registry.content_type)


class GracefulServer(uvicorn.Server):
    """uvicorn, stopping the app's work ``grace`` seconds into a shutdown (SIGTERM, Ctrl-C).

    Requests that finish within ``grace`` finish normally; the rest stop within a layer and still
    answer (a generation with what it has, finish_reason "length"; others 503), rather than
    running on until uvicorn's own timeout cancels them with a 500.
    """

    def __init__(self, config: uvicorn.Config, *, grace: float, stop_work: Callable[[], None]):
        super().__init__(config)
        self.grace, self.stop_work = grace, stop_work

    async def shutdown(self, sockets: list | None = None) -> None:
        asyncio.get_running_loop().call_later(self.grace, self.stop_work)
        await super().shutdown(sockets)
