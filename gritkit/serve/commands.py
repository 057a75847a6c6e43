"""``gritkit serve``: run the OpenAI-compatible server with uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import typer

from gritkit.commands import BackendOption, GgufDtypeOption, backend_options, load_model


def serve(
    model: Annotated[str, typer.Option("--model", "-m", help="'default', 'smollm2-base', a .gguf file, "
                                       "a model or adapter dir")] = "default",
    host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless an API key is set")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="GRITKIT_API_KEY",
                                                   help="Require 'Authorization: Bearer KEY' on every route but "
                                                        "/health")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="A gritkit.rag index directory; "
                                                  "enables POST /v1/rag")] = None,
    model_id: Annotated[Optional[str], typer.Option("--model-id", help="Name clients pass as 'model' "
                                                    "(default gritkit-<model>)")] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Most texts in one embedding forward pass")] = 32,
    max_batch_tokens: Annotated[int, typer.Option(min=1, help="Most padded tokens in one embedding forward pass "
                                                  "(a longer input goes alone)")] = 4096,
    batch_window_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits for more requests")] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests that may wait per queue before 429")] = 256,
    max_queued_tokens: Annotated[int, typer.Option(min=1, help="Tokens (inputs; prompt + max_tokens) queued or "
                                                   "running per queue before 429")] = 131072,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body (413 beyond)")] = 8 * 1024 * 1024,
    max_inputs: Annotated[int, typer.Option(min=1, help="Most inputs in one embeddings request")] = 2048,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for")] = 2048,
    max_embedding_tokens: Annotated[int, typer.Option(min=1, help="Most tokens in one embeddings request, summed "
                                                      "over its inputs")] = 16384,
    max_input_tokens: Annotated[int, typer.Option(min=1, help="Most tokens in one embedding input (capped at the "
                                                  "context)")] = 2048,
    request_timeout: Annotated[float, typer.Option(min=0, help="Seconds a request may run (0: no limit); a "
                                                   "generation then ends with finish_reason 'length', others "
                                                   "get 408")] = 120.0,
    read_timeout: Annotated[float, typer.Option(min=0, help="Seconds a client has to send its request body "
                                                "(0: no limit)")] = 10.0,
    generation_slots: Annotated[int, typer.Option(min=1, help="Generations decoded at once, interleaved token "
                                                  "by token")] = 4,
    graceful_timeout: Annotated[float, typer.Option(help="Seconds SIGTERM waits for in-flight requests before "
                                                    "cancelling them")] = 5.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    generation_backend: BackendOption = "torch",
    gguf_dtype: GgufDtypeOption = "f16",
) -> None:
    """Serve embeddings, chat and completions over the OpenAI API (base URL http://HOST:PORT/v1)."""
    import uvicorn

    from gritkit.serve.app import GracefulServer, create_app

    if not api_key and not _is_loopback(host):
        typer.secho(f"warning: serving on {host} without --api-key: anyone who can reach it can use it",
                    fg="yellow", err=True)
    if index is not None and not index.is_dir():
        typer.secho(f"error: --index {index} is not a directory (build one with gritkit.rag first)",
                    fg="red", err=True)
        raise typer.Exit(2)
    grit = load_model(model, **backend_options(generation_backend, gguf_dtype))
    try:
        app = create_app(grit, api_key=api_key, model_id=model_id, max_batch_size=max_batch_size,
                         batch_window_ms=batch_window_ms, max_queue=max_queue, max_body_bytes=max_body_bytes,
                         max_inputs=max_inputs, max_tokens_limit=max_tokens_limit,
                         max_embedding_tokens=max_embedding_tokens, max_input_tokens=max_input_tokens,
                         max_batch_tokens=max_batch_tokens, max_queued_tokens=max_queued_tokens,
                         request_timeout=request_timeout or None, read_timeout=read_timeout or None,
                         generation_slots=generation_slots, index_dir=index)
    except (ImportError, OSError, ValueError) as error:  # a missing or unreadable --index, or limits that clash
        typer.secho(f"error: cannot start the server: {error}", fg="red", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"serving {app.state.server.model_id} at http://{host}:{port}/v1", err=True)
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown: stop accepting, wait for in-flight requests.
    # After graceful_timeout their work is stopped, so they still answer (a generation with what it has);
    # uvicorn cancels whatever has not answered a few seconds later.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_timeout + 5)
    GracefulServer(config, grace=graceful_timeout, stop_work=app.state.server.stop_work).run()



def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def register(app: typer.Typer) -> None:
    app.command()(serve)
