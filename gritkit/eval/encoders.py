"""What the embedding tasks need from a model: ``encode(texts, instruction) -> (n, d)`` unit vectors.

Models come from the one resolver, :func:`gritkit.specs.load_model` (``st:<dir>`` gives a
sentence-transformers baseline); this module adapts them to :class:`Encoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from gritkit.model import GritLM
from gritkit.specs import ST_PREFIX, SentenceTransformerEncoder, load_model, minilm_dir  # noqa: F401 (re-exported)


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


def as_encoder(model: GritLM | Encoder) -> Encoder:
    return GritEncoder(model) if isinstance(model, GritLM) else model


def encode_unique(encoder: Encoder, texts: Sequence[str], instruction: str = "", *,
                  show_progress_bar: bool = True) -> np.ndarray:
    """Embed ``texts`` encoding each distinct text once (pairs and candidate lists repeat texts)."""
    unique = list(dict.fromkeys(texts))
    vectors = encoder.encode(unique, instruction, show_progress_bar=show_progress_bar)
    row = {text: index for index, text in enumerate(unique)}
    return vectors[[row[text] for text in texts]]
