"""The OpenAI-compatible server, run for real: `python -m gritkit serve` in a subprocess on a free
loopback port, spoken to with the official `openai` client and raw httpx."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import openai
import pytest

API_KEY = "test-key"
MODEL_ID = "gritkit-default"
LIMITS = ["--max-body-bytes", "200000", "--max-inputs", "64", "--max-tokens-limit", "512"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(*args: str, startup_timeout: float = 180):
    """Start `python -m gritkit serve ARGS` on a free port; yield (process, base_url); stop it after."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "gritkit", "serve", "--port", str(port), "--log-level", "warning", *args]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"server exited with {process.returncode}:\n{log.read()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("server did not become healthy in time")
            time.sleep(0.3)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        log.close()
        os.unlink(log.name)


def metric(http: httpx.Client, name: str) -> float:
    """The value of one sample (exact name with labels) from /metrics."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def assert_openai_error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


@pytest.fixture(scope="module")
def server_url():
    with running_server("--api-key", API_KEY, "--generation-slots", "1", *LIMITS) as (_, url):
        yield url


@pytest.fixture(scope="module")
def client(server_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server_url):
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as session:
        yield session


# ---------------------------------------------------------------- embeddings

TEXTS = ["GRIT unifies embedding and generation.", "The cat sat on the mat.", "Paris is the capital of France."]


def test_embeddings_equal_encode(client, default_model):
    response = client.embeddings.create(model=MODEL_ID, input=TEXTS)  # the client asks for base64
    served = np.array([item.embedding for item in response.data], dtype=np.float32)
    np.testing.assert_allclose(served, default_model.encode(TEXTS), atol=1e-5)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert response.model == MODEL_ID and response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_embeddings_float_format_and_instruction_match_encode(http, default_model):
    instruction = "Retrieve passages that answer the question"
    body = {"model": MODEL_ID, "input": "What is GRIT?", "encoding_format": "float", "instruction": instruction}
    data = http.post("/v1/embeddings", json=body).json()["data"]
    expected = default_model.encode(["What is GRIT?"], instruction=instruction)
    np.testing.assert_allclose(np.array([data[0]["embedding"]], dtype=np.float32), expected, atol=1e-5)


def test_embeddings_base64_is_little_endian_float32(http, default_model):
    body = {"input": TEXTS[0], "encoding_format": "base64"}
    encoded = http.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    vector = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_allclose(vector, default_model.encode(TEXTS[0]), atol=1e-5)


def test_embeddings_of_token_arrays_embed_the_decoded_text(client, default_model):
    ids = [default_model.tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS[:2]]
    response = client.embeddings.create(model=MODEL_ID, input=ids)
    decoded = default_model.tokenizer.batch_decode(ids)
    np.testing.assert_allclose(np.array([d.embedding for d in response.data]), default_model.encode(decoded), atol=1e-5)


def test_dimensions_truncate_then_renormalise(client, default_model):
    response = client.embeddings.create(model=MODEL_ID, input=TEXTS[:1], dimensions=64)
    vector = np.array(response.data[0].embedding)
    full = default_model.encode(TEXTS[0])[:64]
    assert vector.shape == (64,)
    np.testing.assert_allclose(vector, full / np.linalg.norm(full), atol=1e-5)


@pytest.mark.parametrize("precision, dtype", [("int8", np.int8), ("binary", np.uint8)])
def test_compact_precisions_equal_encode_as_lists_and_base64(http, default_model, precision, dtype):
    expected = default_model.encode(TEXTS[:2], dimensions=128, precision=precision)
    body = {"input": TEXTS[:2], "dimensions": 128, "precision": precision}
    listed = http.post("/v1/embeddings", json=body).json()["data"]
    packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()["data"]
    for row, as_list, as_base64 in zip(expected, listed, packed):
        # int8 may round one step apart where the batched float differs in its last bits
        np.testing.assert_allclose(np.array(as_list["embedding"], dtype=dtype), row, atol=1)
        np.testing.assert_allclose(np.frombuffer(base64.b64decode(as_base64["embedding"]), dtype=dtype), row, atol=1)


def test_concurrent_requests_share_batches_and_keep_their_own_results(http, default_model):
    texts = [f"sentence number {i} about topic {i % 4}" for i in range(8)]
    expected = default_model.encode(texts)
    calls_before = metric(http, "gritkit_embedding_batch_size_count")
    results: dict[int, list[float]] = {}

    def embed(i: int) -> None:
        results[i] = http.post("/v1/embeddings", json={"input": texts[i]}).json()["data"][0]["embedding"]

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_allclose(np.array([results[i] for i in range(len(texts))]), expected, atol=1e-5)
    assert metric(http, "gritkit_embedding_batch_size_count") - calls_before < len(texts)  # some were batched


# ---------------------------------------------------------------- generation

MESSAGES = [{"role": "user", "content": "Name a colour."}]


def test_chat_equals_generate_with_usage(client, default_model):
    response = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=6, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == default_model.generate(MESSAGES, max_new_tokens=6)
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == len(default_model.prompt_ids(MESSAGES))
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(client):
    kwargs = dict(model=MODEL_ID, messages=MESSAGES, max_tokens=6, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_raw_stream_is_sse_ending_with_done(http):
    body = {"messages": MESSAGES, "max_tokens": 3, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_continue_a_prompt_whole_and_streamed(client, default_model):
    prompt = "1, 2, 3, 4,"
    response = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=4, temperature=0)
    assert response.choices[0].text == default_model.generate(prompt, max_new_tokens=4)
    assert response.choices[0].finish_reason == "length"
    streamed = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=4, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == response.choices[0].text


def test_stop_string_ends_the_text(client):
    response = client.completions.create(model=MODEL_ID, prompt="1, 2, 3, 4,", max_tokens=8, temperature=0,
                                         stop=["6"])
    assert "6" not in response.choices[0].text and response.choices[0].finish_reason == "stop"


def test_penalties_reach_the_model(client, default_model):
    prompt = "1, 2, 3, 4,"
    greedy = default_model.generate(prompt, max_new_tokens=12, frequency_penalty=0.0)
    for native, extra in (({"frequency_penalty": 2.0, "presence_penalty": 0.5}, {}), ({}, {"repetition_penalty": 3.0})):
        response = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0,
                                             extra_body=extra, **native)
        assert response.choices[0].text == default_model.generate(prompt, max_new_tokens=12, **native, **extra)
        assert response.choices[0].text != greedy


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model=MODEL_ID, messages=MESSAGES, max_tokens=5, temperature=1.2, seed=7)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


# ---------------------------------------------------------------- models, health, metrics, auth

def test_models_health_and_metrics(client, http, server_url):
    assert [model.id for model in client.models.list()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID
    assert httpx.get(f"{server_url}/health").json()["status"] == "ok"  # no key needed
    text = http.get("/metrics").text
    for name in ("gritkit_requests_total", "gritkit_request_latency_seconds_bucket", "gritkit_tokens_total",
                 'gritkit_queue_depth{queue="embeddings"}', "gritkit_active_generations"):
        assert name in text
    assert metric(http, 'gritkit_requests_total{route="/v1/embeddings",status="200"}') > 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"},
                                     {"Authorization": API_KEY}])
@pytest.mark.parametrize("method, path", [("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("GET", "/metrics"),
                                          ("POST", "/v1/chat/completions")])
def test_every_route_but_health_needs_the_key(server_url, headers, method, path):
    response = httpx.request(method, server_url + path, headers=headers, json={"input": "hi"})
    assert response.status_code == 401
    assert assert_openai_error(response)["code"] == "invalid_api_key"


def test_openai_client_with_wrong_key_raises_authentication_error(server_url):
    wrong = openai.OpenAI(base_url=f"{server_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=MODEL_ID, input="hi")


# ---------------------------------------------------------------- bad requests: 4xx + OpenAI error body

OVER_CONTEXT = "hello " * 9000  # > 8192 tokens, < the 200 kB body limit
CHAT = {"messages": MESSAGES, "max_tokens": 2}
BAD_REQUESTS = [
    # (id, path, body: dict -> JSON, bytes -> raw, status, param)
    ("malformed-json", "/v1/embeddings", b'{"input": ', 400, None),
    ("json-array-body", "/v1/embeddings", b"[1, 2]", 400, None),
    ("json-string-body", "/v1/embeddings", b'"hello"', 400, None),
    ("empty-body", "/v1/embeddings", b"", 400, None),
    ("non-utf8-body", "/v1/embeddings", b'{"input": "\xff\xfe"}', 400, None),
    ("input-missing", "/v1/embeddings", {}, 400, "input"),
    ("input-wrong-type", "/v1/embeddings", {"input": 5}, 400, "input"),
    ("input-empty-list", "/v1/embeddings", {"input": []}, 400, "input"),
    ("input-empty-string", "/v1/embeddings", {"input": ""}, 400, "input"),
    ("input-whitespace-string", "/v1/embeddings", {"input": ["ok", "   "]}, 400, "input"),
    ("input-mixed-types", "/v1/embeddings", {"input": ["ok", 3]}, 400, "input"),
    ("input-empty-token-array", "/v1/embeddings", {"input": [[]]}, 400, "input"),
    ("input-negative-token", "/v1/embeddings", {"input": [[1, -5]]}, 400, "input"),
    ("input-token-out-of-vocab", "/v1/embeddings", {"input": [10**9]}, 400, "input"),
    ("input-too-many", "/v1/embeddings", {"input": ["x"] * 65}, 400, "input"),
    ("input-over-context", "/v1/embeddings", {"input": OVER_CONTEXT}, 400, "input"),
    ("input-lone-surrogate", "/v1/embeddings", b'{"input": "abc \\ud800"}', 400, "input"),
    ("deeply-nested-json", "/v1/embeddings", b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
    ("encoding-format-unknown", "/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    ("dimensions-zero", "/v1/embeddings", {"input": "a", "dimensions": 0}, 400, "dimensions"),
    ("dimensions-too-big", "/v1/embeddings", {"input": "a", "dimensions": 100000}, 400, "dimensions"),
    ("dimensions-string", "/v1/embeddings", {"input": "a", "dimensions": "8"}, 400, "dimensions"),
    ("instruction-not-string", "/v1/embeddings", {"input": "a", "instruction": 5}, 400, "instruction"),
    ("unknown-field", "/v1/embeddings", {"input": "a", "colour": "red"}, 400, "colour"),
    ("unknown-embedding-model", "/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404, "model"),
    ("messages-missing", "/v1/chat/completions", {"max_tokens": 2}, 400, "messages"),
    ("messages-empty", "/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("message-bad-role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages[0].role"),
    ("message-content-number", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content"),
    ("message-unknown-field", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "x": 1}]},
     400, "messages[0].x"),
    ("max-tokens-zero", "/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ("max-tokens-negative", "/v1/chat/completions", {**CHAT, "max_tokens": -1}, 400, "max_tokens"),
    ("max-tokens-over-limit", "/v1/chat/completions", {**CHAT, "max_tokens": 100000}, 400, "max_tokens"),
    ("max-tokens-float", "/v1/chat/completions", {**CHAT, "max_tokens": 2.5}, 400, "max_tokens"),
    ("max-completion-tokens-zero", "/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ("temperature-too-high", "/v1/chat/completions", {**CHAT, "temperature": 2.5}, 400, "temperature"),
    ("temperature-negative", "/v1/chat/completions", {**CHAT, "temperature": -0.1}, 400, "temperature"),
    ("temperature-string", "/v1/chat/completions", {**CHAT, "temperature": "hot"}, 400, "temperature"),
    ("top-p-too-high", "/v1/chat/completions", {**CHAT, "top_p": 1.5}, 400, "top_p"),
    ("n-two", "/v1/chat/completions", {**CHAT, "n": 2}, 400, "n"),
    ("seed-too-big", "/v1/chat/completions", {**CHAT, "seed": 10**30}, 400, "seed"),
    ("stop-five-strings", "/v1/chat/completions", {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("stream-not-bool", "/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream"),
    ("presence-penalty-too-high", "/v1/chat/completions", {**CHAT, "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("frequency-penalty-string", "/v1/chat/completions", {**CHAT, "frequency_penalty": "x"}, 400,
     "frequency_penalty"),
    ("repetition-penalty-zero", "/v1/chat/completions", {**CHAT, "repetition_penalty": 0.0}, 400,
     "repetition_penalty"),
    ("logit-bias-unsupported", "/v1/chat/completions", {**CHAT, "logit_bias": {"42": 5.0}}, 400, "logit_bias"),
    ("logprobs-unsupported", "/v1/chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs"),
    ("tools-unsupported", "/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ("unknown-chat-model", "/v1/chat/completions", {**CHAT, "model": "gpt-4o"}, 404, "model"),
    ("chat-over-context", "/v1/chat/completions", {"messages": [{"role": "user", "content": OVER_CONTEXT}],
                                                   "max_tokens": 2}, 400, "messages"),
    ("prompt-missing", "/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("prompt-empty", "/v1/completions", {"prompt": "", "max_tokens": 2}, 400, "prompt"),
    ("prompt-two-strings", "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 2}, 400, "prompt"),
    ("echo-unsupported", "/v1/completions", {"prompt": "a", "echo": True}, 400, "echo"),
    ("completion-max-tokens-zero", "/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("rag-without-index", "/v1/rag", {"query": "what?"}, 404, None),
    ("unknown-route", "/v1/nothing-here", {"input": "a"}, 404, None),
]


@pytest.mark.parametrize("path, body, status, param", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_4xx_with_openai_error_body(http, path, body, status, param):
    if isinstance(body, bytes):
        response = http.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = assert_openai_error(response)
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("options", [{"temperature": 1e-300}, {"temperature": 1.0, "top_p": 1e-300},
                                     {"top_p": 0.0}, {"temperature": 2.0, "seed": -5}, {"stop": ""}])
def test_extreme_but_valid_sampling_options_still_answer(http, options):
    response = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2, **options})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/embeddings", 405), ("DELETE", "/v1/models", 405),
                                                  ("GET", "/v1/models/gpt-4", 404)])
def test_wrong_method_or_unknown_model_card(http, method, path, status):
    response = http.request(method, path)
    assert response.status_code == status
    assert_openai_error(response)


def test_body_over_the_limit_is_413_whether_declared_or_streamed(http):
    big = json.dumps({"input": "a" * 250_000}).encode()
    declared = http.post("/v1/embeddings", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413 and assert_openai_error(declared)["code"] == "request_too_large"
    chunked = http.post("/v1/embeddings", content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]))
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and assert_openai_error(chunked)["code"] == "request_too_large"


def test_openai_client_raises_bad_request_with_the_message(client):
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.embeddings.create(model=MODEL_ID, input=[""])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)


# ---------------------------------------------------------------- streams, queues, shutdown

LONG = {"prompt": "1, 2, 3, 4,", "max_tokens": 500, "temperature": 0, "stream": True}


def test_client_disconnecting_mid_stream_frees_the_slot(http, client):
    with http.stream("POST", "/v1/completions", json=LONG) as response:
        chunks = (line for line in response.iter_lines() if line)
        next(chunks)
        start = time.monotonic()
        next(chunks), next(chunks)
        seconds_per_token = (time.monotonic() - start) / 2
        assert metric(http, "gritkit_active_generations") == 1
    disconnected = time.monotonic()
    assert wait_until(lambda: metric(http, "gritkit_active_generations") == 0, timeout=15)
    # Running on would take ~490 more tokens; a cancelled worker stops at the next one.
    assert time.monotonic() - disconnected < max(3.0, 0.3 * 490 * seconds_per_token)
    reply = client.chat.completions.create(model=MODEL_ID, messages=MESSAGES, max_tokens=2, timeout=30)
    assert reply.choices[0].message.content


@pytest.fixture(scope="module")
def small_server_url(default_model, tmp_path_factory):
    """A second server: one generation slot, one queue place, and a RAG index (no API key)."""
    from gritkit.rag import Index

    directory = tmp_path_factory.mktemp("rag") / "index"
    with Index.open(directory, default_model) as index:
        index.add([{"id": "paris", "text": "Paris is the capital of France."},
                   {"id": "cats", "text": "Cats are small domesticated felines."}])
    with running_server("--generation-slots", "1", "--max-queue", "1", "--index", str(directory)) as (_, url):
        yield url


def test_full_generation_queue_answers_429_with_retry_after(small_server_url):
    with httpx.Client(base_url=small_server_url, timeout=120) as http:
        with http.stream("POST", "/v1/completions", json=LONG) as running:  # takes the only slot
            lines = running.iter_lines()  # keep a reference: a collected iterator closes the connection
            assert next(lines).startswith("data: ")
            queued = threading.Thread(target=http.post, args=("/v1/completions",),
                                      kwargs={"json": {"prompt": "Hi", "max_tokens": 1}})
            queued.start()  # takes the only queue place
            assert wait_until(lambda: metric(http, 'gritkit_queue_depth{queue="generation"}') == 1), \
                "\n".join(line for line in http.get("/metrics").text.splitlines()
                          if line.startswith(("gritkit_queue", "gritkit_active", "gritkit_requests_total")))
            refused = http.post("/v1/chat/completions", json=CHAT)
            assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
            assert assert_openai_error(refused)["code"] == "rate_limit_exceeded"
        queued.join(60)
        assert not queued.is_alive()


def test_sigterm_finishes_the_in_flight_request():
    with running_server() as (process, url), httpx.Client(base_url=url, timeout=120) as http:
        result: dict = {}
        request = threading.Thread(target=lambda: result.update(response=http.post("/v1/completions", json={
            "prompt": "1, 2, 3, 4,", "max_tokens": 6, "temperature": 0})))
        request.start()
        assert wait_until(lambda: metric(http, "gritkit_active_generations") == 1)
        process.send_signal(signal.SIGTERM)
        request.join(120)
        response = result["response"]
        assert response.status_code == 200
        assert response.json()["choices"][0]["finish_reason"] == "length"
        assert process.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained


# ---------------------------------------------------------------- RAG

def test_rag_route_answers_from_the_index(small_server_url):
    with httpx.Client(base_url=small_server_url, timeout=120) as http:
        answer = http.post("/v1/rag", json={"query": "What is the capital of France?", "k": 1, "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["passages"][0]["doc_id"] == "paris" and body["answer"]
        assert {"retrieve", "total"} <= set(body["timings"])
        bad = http.post("/v1/rag", json={"query": "x", "cache": "everything"})
        assert bad.status_code == 400 and "cache" in assert_openai_error(bad)["message"]
        not_held = http.post("/v1/rag", json={"query": "x", "cache": "doc", "doc_cache": "causal"})
        assert not_held.status_code == 400 and "holds no key/value states" in assert_openai_error(not_held)["message"]


def test_serve_refuses_a_missing_index_directory(tmp_path):
    from typer.testing import CliRunner

    from gritkit.cli import app

    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "not a directory" in result.output
