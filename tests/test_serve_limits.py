"""A server a careless or hostile client cannot stall (issue 15), run for real with the default model:
budgets refuse work before it starts, a client that leaves stops its work, a short chat is served
while a long generation runs, slow bodies time out and shutdown cancels what is left."""

from __future__ import annotations

import json
import signal
import socket

import httpx
import pytest
from test_serve import assert_openai_error, metric, running_server, wait_until

BUDGETS = ["--max-embedding-tokens", "8000", "--max-batch-tokens", "1000", "--max-queued-tokens", "9000", "--read-timeout", "2",
           "--request-timeout", "60"]
LONG_CHAT = {"messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
             "max_tokens": 1500, "temperature": 0}


@pytest.fixture(scope="module")
def server(default_model, tmp_path_factory):
    from gritkit.rag import Index

    directory = tmp_path_factory.mktemp("rag") / "index"
    with Index.open(directory, default_model) as index:
        index.add([{"id": "paris", "text": "Paris is the capital of France."}])
    with running_server(*BUDGETS, "--index", str(directory)) as (process, url):
        yield process, url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[1], timeout=120) as session:
        yield session


def busy(http: httpx.Client) -> float:
    """Requests queued, or whose work is still inside the model (cancelled work counts until it has stopped)."""
    return sum(metric(http, f'gritkit_{name}{{{label}="{worker}"}}') for worker in ("embeddings", "generation", "rag")
               for name, label in (("queue_depth", "queue"), ("model_busy", "worker")))


@pytest.mark.parametrize("path, body, code", [
    # 5 MB would take seconds and a gigabyte to tokenise: refused by its length alone.
    ("/v1/embeddings", {"input": "word " * 1_000_000}, "context_length_exceeded"),
    ("/v1/embeddings", {"input": ["a few more words in this input to embed"] * 1000}, "too_many_tokens"),
    ("/v1/embeddings", {"input": [list(range(100, 1100))] * 9}, "too_many_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 200_000}]}, "context_length_exceeded"),
    ("/v1/completions", {"prompt": "hi " * 200_000, "max_tokens": 4}, "context_length_exceeded"),
    ("/v1/rag", {"query": "where? " * 20_000}, "context_length_exceeded"),
    ("/v1/rag", {"query": "where? " * 4500, "max_tokens": 16}, "context_length_exceeded"),
])
def test_over_budget_requests_are_refused_before_any_work(http, path, body, code):
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert assert_openai_error(response)["code"] == code
    assert busy(http) == 0


def test_head_health(server):
    assert httpx.head(f"{server[1]}/health").status_code == 200


def test_a_body_sent_too_slowly_gets_408(server):
    host, port = server[1].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"input\": ")  # and then nothing more
        reply = b""
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply


def abandon(url: str, path: str, body: dict, after: float) -> None:
    """Send a request and hang up after ``after`` seconds, as an impatient client does."""
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + path, json=body, timeout=httpx.Timeout(after, connect=10))


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", LONG_CHAT),
    ("/v1/completions", {"prompt": "1, 2, 3, 4,", "max_tokens": 1500, "temperature": 0}),
    ("/v1/embeddings", {"input": ["The quick brown fox jumps over the lazy dog. " * 90] * 8}),
    ("/v1/rag", {"query": "where? " * 1500, "max_tokens": 1500}),  # a long prompt: seconds of work whatever the answer
])
def test_a_client_that_leaves_stops_its_work(server, http, path, body):
    batches = metric(http, "gritkit_embedding_batch_size_count")
    abandon(server[1], path, body, after=1.5)
    # Generations of 1,500 tokens take minutes here; stopped, they free the model within a layer.
    assert wait_until(lambda: busy(http) == 0, timeout=60)
    if path == "/v1/embeddings":  # 8 inputs of ~900 tokens, one per batch (--max-batch-tokens 1000)
        assert metric(http, "gritkit_embedding_batch_size_count") - batches < 8
    quick = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert quick.status_code == 200


def test_a_short_chat_is_answered_while_a_long_generation_runs(server, http):
    with http.stream("POST", "/v1/chat/completions", json={**LONG_CHAT, "stream": True}) as long:
        lines = long.iter_lines()
        assert next(lines).startswith("data: ")
        short = http.post("/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4})
        assert short.status_code == 200
        assert metric(http, "gritkit_active_generations") == 1  # the long one is still running


def test_sigterm_stops_long_work_after_the_grace_period_and_still_answers():
    with running_server("--graceful-timeout", "1") as (process, url), httpx.Client(base_url=url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json={**LONG_CHAT, "stream": True}) as response:
            events = (line.removeprefix("data: ") for line in response.iter_lines() if line)
            next(events), next(events)  # the role chunk and a first piece of text: it is generating
            process.send_signal(signal.SIGTERM)
            rest = list(events)  # the server ends the stream itself after the grace period
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"  # cut short, like max_tokens
        assert process.wait(30) in (0, -signal.SIGTERM)  # not the minutes the generation would take
