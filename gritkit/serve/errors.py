"""Every error the server returns, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Client mistakes (bad JSON, wrong types, unknown fields, non-UTF-8 or oversized bodies)
become 4xx here; only a genuine server fault is a 500.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("gritkit.serve")


class OpenAIError(Exception):
    """An error answered with ``status`` and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def queue_full(queue: str, retry_after: int = 1) -> OpenAIError:
    return OpenAIError(429, f"The {queue} queue is full; retry after {retry_after} s.", type="rate_limit_error",
                       code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


def time_limit(seconds: float) -> OpenAIError:
    return OpenAIError(408, f"The request ran past the server's time limit of {seconds:g} s and was stopped.",
                       code="timeout")


def shutting_down(retry_after: int = 5) -> OpenAIError:
    return OpenAIError(503, "The server is shutting down; retry on another instance or after a restart.",
                       type="server_error", code="shutting_down", headers={"Retry-After": str(retry_after)})


def client_gone() -> OpenAIError:
    # nginx's "client closed request": nobody reads it, but the metrics and logs say what happened.
    return OpenAIError(499, "The client closed the request before the answer was ready.", code="client_closed")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``"messages[0].role"``, without pydantic's union tags."""
    param = ""
    for part in loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part != "body" and part.isidentifier() and part not in _TYPE_TAGS:  # tags look like "list[str]"
            param += f".{part}" if param else part
    return param or None


def _validation_error(errors: list[dict]) -> OpenAIError:
    """Pydantic/FastAPI errors -> one OpenAI error; ``param`` is the field path."""
    # For a union (str | list[str]) pydantic reports every branch; a constraint error (too long,
    # out of range) says more than "not a string", so prefer it.
    error = next((e for e in errors if not e.get("type", "").endswith("_type")), errors[0])
    param = _param(error.get("loc", ()))
    fields = [part for part in error.get("loc", ()) if isinstance(part, str)]
    kind = error.get("type", "")
    if kind == "json_invalid":
        return OpenAIError(400, "We could not parse the JSON body of your request: it is not valid JSON.",
                           code="invalid_json")
    if kind == "extra_forbidden":
        return OpenAIError(400, f"Unrecognized request argument supplied: {fields[-1]}", param=param,
                           code="unknown_parameter")
    if kind == "missing":
        return OpenAIError(400, f"Missing required parameter: '{param}'." if param else "The request body is missing.",
                           param=param, code="missing_required_parameter")
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"Invalid value for '{param}': " if param else "Invalid request body: "
    return OpenAIError(400, where + message, param=param, code="invalid_value")


async def _on_openai_error(request: Request, error: OpenAIError) -> JSONResponse:
    return error.response()


async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return _validation_error(list(error.errors())).response()


async def _on_http_exception(request: Request, error: HTTPException) -> JSONResponse:
    if error.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif error.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(error.detail)
    kind = "invalid_request_error" if error.status_code < 500 else "server_error"
    return OpenAIError(error.status_code, message, type=kind, headers=error.headers).response()


async def _on_unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return OpenAIError(500, "The server had an error while processing your request.", type="server_error").response()


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenAIError, _on_openai_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)


class BodyGuard:
    """ASGI middleware: refuse bodies over ``max_bytes`` (declared or streamed), bodies not received
    within ``read_timeout`` seconds (408) and non-UTF-8 bodies.

    The body is read here once and replayed to the app, so FastAPI never parses an oversized
    or undecodable request. The API is JSON-only, so bodies are parsed as JSON whatever
    their Content-Type says (``curl -d`` sends a form type).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float | None = None):
        self.app, self.max_bytes, self.read_timeout = app, max_bytes, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = OpenAIError(413, f"Request body is over the limit of {self.max_bytes} bytes.",
                                code="request_too_large")
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large.response()(scope, receive, send)
        body = bytearray()
        deadline = asyncio.get_running_loop().time() + self.read_timeout if self.read_timeout else None
        while True:
            try:  # a client that sends its body slowly (or never) must not hold the connection
                remaining = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                slow = OpenAIError(408, f"The request body was not received within {self.read_timeout:g} s.",
                                   code="request_timeout", headers={"Connection": "close"})
                return await slow.response()(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await too_large.response()(scope, receive, send)
            if not message.get("more_body", False):
                break
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = OpenAIError(400, f"Request body is not valid UTF-8 (invalid byte at offset {error.start}).",
                              code="invalid_encoding")
            return await bad.response()(scope, receive, send)
        headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
        scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then defers (e.g. for ``http.disconnect``)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
