"""Retrieval-augmented generation with GRIT: a persistent index and key/value cache reuse.

Example::

    from gritkit import GritLM
    from gritkit.rag import Index, RAG

    model = GritLM.from_pretrained()
    index = Index.open("./myindex", model)
    index.add([{"id": "d1", "text": "..."}], cache_kv=True)
    answer = RAG(model, index).answer("question", cache="doc", k=1)
"""

from gritkit.rag.index import Index, Passage, chunk_text
from gritkit.rag.kv import Segment, build_cache, rotate_keys
from gritkit.rag.kvstore import KVStore
from gritkit.rag.rag import RAG, Answer, CacheMode, Order

__all__ = ["RAG", "Answer", "CacheMode", "Index", "KVStore", "Order", "Passage", "Segment", "build_cache",
           "chunk_text", "rotate_keys"]
