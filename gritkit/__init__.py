"""gritkit: one decoder language model that both embeds and generates text (GRIT)."""

from gritkit.loading import ModelLoadError
from gritkit.model import Attention, EmbeddingBatch, GritLM, Pooling, embedding_prefix, pool

__version__ = "0.1.0"
__all__ = ["Attention", "EmbeddingBatch", "GritLM", "ModelLoadError", "Pooling", "embedding_prefix", "pool", "__version__"]
