"""Real client libraries against a live `gritkit serve`: the LangChain and LlamaIndex snippets of
docs/serve.md are run exactly as written (only the base URL and key are swapped in)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_serve import running_server

KEY = "client-test-key"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "serve.md"


def snippet(importing: str) -> str:
    """The python block of docs/serve.md that imports ``importing``."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    [block] = [block for block in blocks if f"from {importing}" in block]
    return block


@pytest.fixture(scope="module")
def server_url():
    with running_server("--api-key", KEY) as (_, url):
        yield url


def run_snippet(importing: str, server_url: str, default_model) -> dict:
    code = snippet(importing).replace("http://127.0.0.1:8000/v1", f"{server_url}/v1").replace('"KEY"', repr(KEY))
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace


def check_embeddings(namespace: dict, default_model) -> None:
    vectors, query_vector = np.array(namespace["vectors"]), np.array(namespace["query_vector"])
    assert vectors.shape == (2, default_model.embedding_dim)
    expected = default_model.encode(["Paris is the capital of France.", "Cats are small felines."])
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    assert np.argmax(vectors @ query_vector) == 0  # the question is closer to the Paris passage


@pytest.mark.slow
def test_langchain_snippet_embeds_chats_and_streams(server_url, default_model):
    namespace = run_snippet("langchain_openai", server_url, default_model)
    check_embeddings(namespace, default_model)
    assert isinstance(namespace["reply"], str) and namespace["reply"].strip()
    assert namespace["streamed"].strip()


@pytest.mark.slow
def test_llamaindex_snippet_embeds_chats_and_completes(server_url, default_model):
    namespace = run_snippet("llama_index", server_url, default_model)
    check_embeddings(namespace, default_model)
    assert isinstance(namespace["reply"], str) and namespace["reply"].strip()
    assert namespace["completion"].strip()
