"""A server a careless or hostile client cannot stall (issue 15), run for real with the default model:
budgets refuse work before it starts, a client that leaves stops its work, a short chat is served
while a long generation runs, slow bodies time out and shutdown cancels what is left."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest
from test_serve import assert_openai_error, metric, running_server, wait_until

BUDGETS = ["--max-embedding-tokens", "8000", "--max-queued-tokens", "9000", "--read-timeout", "2",
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
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply


def abandon(url: str, path: str, body: dict, after: float) -> None:
    """Send a request and hang up after ``after`` seconds, as an impatient client does."""
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + path, json=body, timeout=httpx.Timeout(after, connect=10))


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", LONG_CHAT),
    ("/v1/completions", {"prompt": "1, 2, 3, 4,", "max_tokens": 1500, "temperature": 0}),
    ("/v1/embeddings", {"input": ["The quick brown fox jumps over the lazy dog. " * 90] * 8}),
    ("/v1/rag", {"query": "What is the capital of France?", "max_tokens": 1500}),
])
def test_a_client_that_leaves_stops_its_work(server, http, path, body):
    abandon(server[1], path, body, after=1.5)
    left = time.monotonic()
    assert wait_until(lambda: busy(http) == 0, timeout=20)
    stopped_after = time.monotonic() - left
    # Finishing the work would take a minute or more; stopping takes a layer (plus the metrics poll).
    assert stopped_after < 10, stopped_after
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
    with running_server("--graceful-timeout", "1") as (process, url):
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            response=httpx.post(f"{url}/v1/chat/completions", json=LONG_CHAT, timeout=120)))
        thread.start()
        with httpx.Client(base_url=url) as http:
            assert wait_until(lambda: metric(http, "gritkit_active_generations") == 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) in (0, -signal.SIGTERM)  # not the minutes the generation would take
        thread.join(30)
        response = result["response"]
        assert response.status_code == 200  # what it had generated when the grace period ended
        assert response.json()["choices"][0]["finish_reason"] == "length"
        assert response.json()["usage"]["completion_tokens"] < LONG_CHAT["max_tokens"]
