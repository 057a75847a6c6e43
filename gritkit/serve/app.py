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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gritkit.model import GritLM
from gritkit.serve.batching import EmbeddingBatcher, GenerationJob, GenerationWorker, QueueFull
from gritkit.serve.errors import BodyGuard, OpenAIError, install_handlers, queue_full
from gritkit.serve.metrics import Metrics, MetricsMiddleware
from gritkit.serve.schemas import (ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RagRequest,
                                   SamplingRequest)

DEFAULT_MAX_TOKENS = 256  # when a request gives no max_tokens
OPEN_PATHS = ("/health",)  # reachable without the API key


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
    rag_worker: GenerationWorker | None = None
    rag: Any = None
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
    generation_slots: int = 1,
    index_dir: str | Path | None = None,
) -> FastAPI:
    """Build the server app for ``model``.

    Args:
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        model_id: the name clients pass as ``model`` (default ``gritkit-<model name>``).
        max_batch_size / batch_window_ms: micro-batching of concurrent embedding requests.
        max_queue: requests that may wait per queue (embeddings, generation) before 429s.
        max_body_bytes / max_inputs / max_tokens_limit: request size limits (413 / 400 beyond).
        generation_slots: generations run at once (each in its own thread).
        index_dir: a ``gritkit.rag`` index; enables ``POST /v1/rag``.
    """
    metrics = Metrics()
    server = Server(
        model=model,
        model_id=model_id or served_model_id(model),
        metrics=metrics,
        batcher=EmbeddingBatcher(model, max_batch_size=max_batch_size, window_ms=batch_window_ms,
                                 max_queue=max_queue, on_batch=metrics.embedding_batch_size.observe),
        generator=GenerationWorker(slots=generation_slots, max_queue=max_queue),
        max_inputs=max_inputs,
        max_tokens_limit=max_tokens_limit,
    )
    if index_dir is not None:
        server.rag_worker = GenerationWorker(slots=1, max_queue=max_queue)
        server.rag = open_rag(model, index_dir, server.rag_worker)
    metrics.queue_depth.labels("embeddings").set_function(lambda: server.batcher.pending)
    metrics.queue_depth.labels("generation").set_function(lambda: server.generator.waiting)
    metrics.active_generations.set_function(lambda: server.generator.active)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.batcher.start()
        yield
        await server.batcher.stop()
        server.generator.stop()
        if server.rag_worker:
            server.rag_worker.stop()

    app = FastAPI(title="gritkit", summary="OpenAI-compatible embeddings and chat from one GRIT model",
                  lifespan=lifespan)
    app.state.server = server
    install_handlers(app)
    app.include_router(router)
    # Outermost last: metrics see every response, auth runs before the body is read.
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes)
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

    return worker.executor.submit(lambda: RAG(model, Index.open(index_dir, model))).result()


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
    texts, token_count = await asyncio.to_thread(embedding_texts, server.model, body)
    try:
        vectors = await server.batcher.encode(texts, body.instruction)
    except QueueFull:
        raise queue_full("embeddings") from None
    if body.dimensions is not None:  # Matryoshka-style truncation, then unit length again
        vectors = vectors[:, :body.dimensions]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    server.metrics.tokens.labels("embedding").inc(token_count)
    data = [{"object": "embedding", "index": index, "embedding": format_vector(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)]
    usage = {"prompt_tokens": token_count, "total_tokens": token_count}
    return JSONResponse({"object": "list", "data": data, "model": server.model_id, "usage": usage})


def embedding_texts(model: GritLM, body: EmbeddingRequest) -> tuple[list[str], int]:
    """Decode token arrays and check every input before it joins a shared batch.

    Returns the texts and their token count (instruction prompt included). Empty or
    whitespace-only strings and inputs over the model's context are 400s, never truncated.
    """
    items = body.input
    if isinstance(items[0], list):
        vocabulary = len(model.tokenizer)
        for index, ids in enumerate(items):
            if bad := [token for token in ids if not 0 <= token < vocabulary]:
                raise OpenAIError(400, f"input[{index}] has token id {bad[0]}, outside the vocabulary "
                                       f"(0..{vocabulary - 1}).", param="input", code="invalid_value")
        items = model.tokenizer.batch_decode(items)
    token_count = 0
    for index, text in enumerate(items):
        if not text.strip():
            raise OpenAIError(400, f"input[{index}] is empty: an empty or whitespace-only string has no tokens "
                                   "to embed.", param="input", code="invalid_value")
        try:
            batch = model.tokenize_for_embedding([text], body.instruction, truncate=False)
        except ValueError as error:
            raise OpenAIError(400, f"input[{index}]: {error} (the model's context length).", param="input",
                              code="context_length_exceeded") from None
        token_count += int(batch.attention_mask.sum())
    return items, token_count


def format_vector(vector: np.ndarray, encoding_format: Literal["float", "base64"]) -> list[float] | str:
    if encoding_format == "base64":  # what OpenAI sends: little-endian float32 bytes
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
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
    try:
        prompt_ids = await asyncio.to_thread(server.model.prompt_ids, messages)
    except Exception as error:  # the chat template refused these messages (e.g. role order)
        raise OpenAIError(400, f"Could not format 'messages' with the model's chat template: {error}",
                          param="messages", code="invalid_value") from None
    return await complete(server, body, prompt_ids, max_tokens, Reply("chat", server.model_id))


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    server = _server(request)
    server.check_model(body.model)
    max_tokens = server.max_new_tokens(body.max_tokens)
    if not body.prompt_text():
        raise OpenAIError(400, "'prompt' is empty.", param="prompt", code="invalid_value")
    prompt_ids = await asyncio.to_thread(server.model.prompt_ids, body.prompt_text())
    return await complete(server, body, prompt_ids, max_tokens, Reply("text", server.model_id))


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


async def complete(server: Server, body: SamplingRequest, prompt_ids: list[int], max_tokens: int,
                   reply: Reply) -> Response:
    """Queue one generation and answer it whole or as server-sent events."""
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
                    top_p=1.0 if greedy else body.top_p, seed=body.seed)
    try:
        job = server.generator.submit(lambda: server.model.stream_text(prompt_ids, **sampling))
    except QueueFull:
        raise queue_full("generation") from None
    server.metrics.tokens.labels("prompt").inc(len(prompt_ids))
    usage = Usage(server, len(prompt_ids), max_tokens)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(event_stream(job, reply, usage, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(job.cancel))
    try:
        text = "".join([piece async for piece in job])
    except ValueError as error:  # a sampling option the model refused
        raise OpenAIError(400, str(error), code="invalid_value") from None
    finally:
        job.cancel()
    counts, finish_reason = usage.settle(text)
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

    Leaving early (client disconnected) cancels the job, so the worker frees its slot.
    """
    pieces: list[str] = []
    try:
        if reply.kind == "chat":
            yield sse(reply.chunk(role=True))
        async for piece in job:
            pieces.append(piece)
            yield sse(reply.chunk(piece))
        counts, finish_reason = usage.settle("".join(pieces))
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
    options = {"k": body.k, "cache": body.cache, "doc_cache": body.doc_cache, "max_new_tokens": body.max_tokens}
    options = {name: value for name, value in options.items() if value is not None}  # else RAG's defaults
    if body.max_tokens is not None:
        server.max_new_tokens(body.max_tokens)
    try:
        job = server.rag_worker.submit(lambda: [server.rag.answer(body.query, **options)])
    except QueueFull:
        raise queue_full("rag") from None
    try:
        [answer] = [item async for item in job]
    except ValueError as error:  # e.g. an unknown cache mode, or passage states the index does not hold
        raise OpenAIError(400, str(error), code="invalid_value") from None
    finally:
        job.cancel()
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


@router.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok", "model": _server(request).model_id}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = _server(request).metrics
    return Response(registry.render(), media_type=registry.content_type)
