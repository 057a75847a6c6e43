"""Retrieval-augmented generation with GRIT: a persistent index and key/value cache reuse.

Example::

    from gritkit import GritLM
    from gritkit.rag import Index, RAG

    model = GritLM.from_pretrained()
    index = Index.open("./myindex", model)
    index.add([{"id": "d1", "text": "..."}], cache_kv=True)
    answer = RAG(model, index).answer("question", cache="doc", k=1)
"""

import importlib

# Names load on first use, so ``gritkit.rag.kv`` (training's cache-aware stream) needs no faiss.
_EXPORTS = {"Index": "index", "Passage": "index", "chunk_text": "index", "StaleIndexError": "index",
            "Segment": "kv", "build_cache": "kv", "rotate_keys": "kv", "KVStore": "kvstore", "RAG": "rag", "Answer": "rag", "CacheMode": "rag", "Order": "rag"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gritkit.rag' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gritkit.rag.{_EXPORTS[name]}"), name)
