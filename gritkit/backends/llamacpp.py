"""llama.cpp as gritkit's decoder: ``GritLM.from_pretrained(spec, generation_backend="llamacpp")``.

The model is exported once with :func:`gritkit.export.gguf.export_gguf` into the cache folder
(``$GRITKIT_CACHE/gguf``, keyed by the weights' fingerprint and the GGUF weight type) and loaded
with llama-cpp-python (optional extra ``gritkit[llamacpp]``). Only uncached decoding moves:
gritkit still tokenises (llama.cpp receives gritkit's token ids, so both see the same tokens),
still chooses each token from the logits (the same greedy/temperature/top-p code as the PyTorch
path), and :meth:`GritLM.stream_text` still turns the ids into text and cuts at stop strings.
Embeddings and generation after cached key/value states (the RAG cache modes) stay on PyTorch.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from gritkit import loading

if TYPE_CHECKING:
    from llama_cpp import Llama

    from gritkit.export.gguf import GgufDtype
    from gritkit.model import GritLM

GenerationBackend = Literal["torch", "llamacpp"]
BACKENDS: tuple[GenerationBackend, ...] = ("torch", "llamacpp")
INSTALL_HINT = ("generation_backend='llamacpp' needs llama-cpp-python: pip install 'gritkit[llamacpp]' "
                "(it builds from source; see docs/gguf.md for a build that runs on any x86-64 CPU)")

logger = logging.getLogger(__name__)
# Flash attention (llama-cpp-python's default: off) made plain llama-cpp-python 1-13% faster in 7 of 8
# cells of benchmarks/generate_speed.py --llamacpp-backend here, with the same greedy tokens from f16 files.
LLAMA_OPTIONS = {"flash_attn": True}


def check_backend(backend: str, gguf_dtype: str) -> None:
    """A clear error for an unknown backend or weight type, or a missing llama-cpp-python,
    before any model is loaded."""
    from gritkit.export.gguf import DTYPES

    if backend not in BACKENDS:
        raise ValueError(f"generation_backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if gguf_dtype not in DTYPES:
        raise ValueError(f"gguf_dtype must be one of {', '.join(DTYPES)}, not {gguf_dtype!r}")
    if backend == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise loading.ModelLoadError(INSTALL_HINT)


def cached_gguf(model: GritLM, dtype: GgufDtype = "f16") -> Path:
    """The GGUF export of ``model``'s weights in the cache folder, written on first use."""
    from gritkit.export.gguf import export_gguf

    path = loading.cache_dir() / "gguf" / f"{model.fingerprint[:24]}.{dtype}.gguf"
    if not path.exists():
        logger.info("exporting %s to %s for llama.cpp (once per weights and weight type)", model.name, path)
        export_gguf(model, path, dtype=dtype)
    return path


class LlamaCppDecoder:
    """Decodes token ids with llama.cpp on a GGUF file of the same model.

    Each generation takes a llama.cpp context of its own from a pool (the server interleaves
    several generations token by token in one thread), preferring the one whose last tokens share
    the longest prefix with the prompt, so a conversation's earlier turns are not computed again.
    """

    def __init__(self, path: str | Path, *, context_length: int, threads: int | None = None):
        if importlib.util.find_spec("llama_cpp") is None:
            raise loading.ModelLoadError(INSTALL_HINT)
        self.path = Path(path)
        self.context_length = context_length
        self.threads = threads or torch.get_num_threads()
        self._idle: list[Llama] = []
        self._lock = threading.Lock()
        # Closed here, also at exit: llama-cpp-python's own __del__ fails once the interpreter is tearing down.
        weakref.finalize(self, _close_all, self._idle)
        self._release(self._open())  # fail now, not at the first request, if the file does not load

    @classmethod
    def for_model(cls, model: GritLM, *, dtype: GgufDtype = "f16") -> LlamaCppDecoder:
        """Export ``model`` (once, cached) and load it with ``model.max_length`` tokens of context."""
        return cls(cached_gguf(model, dtype), context_length=model.max_length)

    def clear(self) -> None:
        """Forget the key/value states kept for prefix reuse, so the next prompt is computed whole."""
        with self._lock:
            for llm in self._idle:
                llm.reset()

    def _open(self) -> Llama:
        from llama_cpp import Llama

        return Llama(model_path=str(self.path), n_ctx=self.context_length, n_threads=self.threads,
                     n_threads_batch=self.threads, logits_all=False, verbose=False, **LLAMA_OPTIONS)

    def _acquire(self, input_ids: Sequence[int]) -> Llama:
        with self._lock:
            if not self._idle:
                return self._open()
            best = max(self._idle, key=lambda llm: _shared_prefix(llm, input_ids))
            self._idle.remove(best)
            return best

    def _release(self, llm: Llama) -> None:
        with self._lock:
            self._idle.append(llm)

    def generate_ids(self, input_ids: Sequence[int], *, max_new_tokens: int, stop_ids: set[int],
                     next_token: Callable[[torch.Tensor], int]) -> Iterator[int]:
        """Yield new token ids until a stop id or ``max_new_tokens``; ``next_token`` picks each one
        from the float32 logits (gritkit's greedy/sampling rule)."""
        import llama_cpp

        input_ids = [int(token) for token in input_ids]
        if len(input_ids) + max_new_tokens > self.context_length:
            raise ValueError(f"the prompt ({len(input_ids)} tokens) and max_new_tokens={max_new_tokens} are over "
                             f"the model's context of {self.context_length}")
        llm = self._acquire(input_ids)
        try:
            # Keep the key/value states of the shared prefix; eval() drops everything after n_tokens.
            # At least one prompt token is evaluated, so the logits are this prompt's.
            llm.n_tokens = min(_shared_prefix(llm, input_ids), len(input_ids) - 1)
            llm.eval(input_ids[llm.n_tokens:])
            vocabulary = llm.n_vocab()
            for step in range(max_new_tokens):
                pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
                token = next_token(torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(vocabulary,))))
                if token in stop_ids:
                    return
                yield token
                if step + 1 < max_new_tokens:
                    llm.eval([token])
        finally:
            self._release(llm)


def _close_all(contexts: list[Llama]) -> None:
    for llm in contexts:
        llm.close()
    contexts.clear()


def _shared_prefix(llm: Llama, input_ids: Sequence[int]) -> int:
    cached = llm.input_ids[:llm.n_tokens]
    length = min(len(cached), len(input_ids))
    differs = np.flatnonzero(cached[:length] != np.asarray(input_ids[:length]))
    return int(differs[0]) if len(differs) else length
