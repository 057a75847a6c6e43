"""GRIT training: contrastive (InfoNCE) + next-token fine-tuning of any decoder LLM, on accelerate.

Example::

    from gritkit.training import TrainingConfig, train
    train(TrainingConfig(model="default", embedding_data=["emb.jsonl"], generative_data=["gen.jsonl"],
                         max_steps=100, output_dir="runs/my-model"))
"""

from gritkit.training.config import TrainingConfig
from gritkit.training.data import DataError, read_embedding_data, read_generative_data
from gritkit.training.gradcache import RandContext, gradcache_backward
from gritkit.training.losses import info_nce_loss, next_token_loss
from gritkit.training.trainer import train

__all__ = ["DataError", "RandContext", "TrainingConfig", "gradcache_backward", "info_nce_loss", "next_token_loss",
           "read_embedding_data", "read_generative_data", "train"]
