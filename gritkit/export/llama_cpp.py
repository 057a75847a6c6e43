"""GRIT embeddings from an exported GGUF in llama-cpp-python (optional extra ``gritkit[llamacpp]``).

llama.cpp computes the same model as gritkit; what makes an embedding GRIT's is how it is run:
bidirectional attention over ``prefix + text``, and a mean over the text tokens' final states
only. llama-cpp-python's own ``Llama.embed`` attends causally and pools every token, so this does
the pass with llama.cpp's C API, as llama.cpp's ``examples/gritlm`` did::

    llm = Llama("gritsmol.f16.gguf", embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
    vector = grit_embedding(llm, prefix_ids + text_ids, instruction_length=len(prefix_ids))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from llama_cpp import Llama


def grit_embedding(llm: Llama, token_ids: Sequence[int], instruction_length: int) -> np.ndarray:
    """The unit-length GRIT embedding of ``token_ids`` (prompt prefix, then text), pooling only the
    tokens from ``instruction_length`` on. ``llm`` needs ``embedding=True`` and no pooling of its own."""
    import llama_cpp

    count = len(token_ids)
    if not 0 <= instruction_length < count:
        raise ValueError(f"instruction_length must leave at least one text token, got {instruction_length} of {count}")
    if not llm.context_params.embeddings or llm.context_params.pooling_type not in (
            llama_cpp.LLAMA_POOLING_TYPE_NONE, llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED):
        raise ValueError("create the Llama with embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE")
    # Bidirectional attention needs the whole sequence in one micro-batch.
    if count > llama_cpp.llama_n_ubatch(llm.ctx):
        raise ValueError(f"{count} tokens exceed the micro-batch ({llama_cpp.llama_n_ubatch(llm.ctx)}); raise n_ubatch and n_batch")
    batch = llama_cpp.llama_batch_init(count, 0, 1)
    try:
        for position, token in enumerate(token_ids):
            batch.token[position] = token
            batch.pos[position] = position
            batch.n_seq_id[position] = 1
            batch.seq_id[position][0] = 0
            batch.logits[position] = True  # llama.cpp wants every state of an embedding pass as output
        batch.n_tokens = count
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        llama_cpp.llama_set_causal_attn(llm.ctx, False)
        if llama_cpp.llama_decode(llm.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        width = llm.n_embd()
        states = np.stack([np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(llm.ctx, position), shape=(width,))
                           for position in range(instruction_length, count)])
    finally:
        llama_cpp.llama_set_causal_attn(llm.ctx, True)
        llama_cpp.llama_batch_free(batch)
        llm.reset()
    mean = states.mean(0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)
