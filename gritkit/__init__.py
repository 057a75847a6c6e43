"""gritkit: one decoder language model that both embeds and generates text (GRIT).

The names below load on first use, so ``import gritkit`` (and ``gritkit --help``) does not import
torch or transformers; ``from gritkit import GritLM`` does.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {"Attention": "model", "EmbeddingBatch": "model", "GritLM": "model", "Pooling": "model",
            "embedding_prefix": "prompts", "pool": "model", "ModelLoadError": "loading", "load_model": "specs"}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gritkit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gritkit.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
