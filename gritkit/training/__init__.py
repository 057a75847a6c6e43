"""GRIT training: contrastive (InfoNCE) + next-token fine-tuning of any decoder LLM, on accelerate.

Example::

    from gritkit.training import TrainingConfig, train
    train(TrainingConfig(model="default", embedding_data=["emb.jsonl"], generative_data=["gen.jsonl"],
                         max_steps=100, output_dir="runs/my-model"))
"""

import importlib

# Names load on first use, so the CLI can list ``gritkit train`` without importing torch.
_EXPORTS = {"TrainingConfig": "config", "DataError": "data", "read_embedding_data": "data",
            "read_generative_data": "data", "RandContext": "gradcache", "gradcache_backward": "gradcache",
            "info_nce_loss": "losses", "cosent_loss": "losses", "next_token_loss": "losses", "train": "trainer"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gritkit.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gritkit.training.{_EXPORTS[name]}"), name)
