"""GritLM under the ``mteb`` (v2) encoder protocol, and MTEB tasks built from local files.

Example (offline)::

    import mteb
    from gritkit.eval.mteb import MtebModel, sts_task

    results = mteb.evaluate(MtebModel("default"), sts_task("stsb/stsb-en-test.csv", limit=100), cache=None)
    print(results.task_results[0].get_score())

Queries, and every text of a symmetric task, get the task's instruction (gritkit's table first,
then the task's own prompt); documents (``prompt_type == "document"``) get none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from gritkit import GritLM
from gritkit.eval.data import subset
from gritkit.prompts import INSTRUCTIONS
from gritkit.eval.tasks.sts import load_pairs


class MtebModel(AbsEncoder):
    """A :class:`GritLM` (or a model spec) that ``mteb.evaluate`` can run."""

    def __init__(self, model: GritLM | str = "default", *, instructions: dict[str, str] | None = None,
                 batch_size: int = 32, max_length: int = 512):
        self.model = GritLM.from_pretrained(model) if isinstance(model, str) else model
        self.instructions = {**INSTRUCTIONS, **(instructions or {})}
        self.batch_size, self.max_length = batch_size, max_length
        self.mteb_model_meta = ModelMeta.create_empty({
            "name": f"gritkit/{Path(self.model.name).name or 'model'}", "revision": "local",
            "embed_dim": self.model.embedding_dim, "similarity_fn_name": ScoringFunction.COSINE,
            "use_instructions": True, "framework": ["PyTorch"], "max_tokens": max_length,
        })

    def instruction(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str:
        if prompt_type == PromptType.document:
            return ""
        return self.instructions.get(task_metadata.name) or self.get_instruction(task_metadata, prompt_type) or ""

    def encode(self, inputs, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        # GritLM refuses empty texts (nothing to pool); MTEB corpora hold a few, so they become "-".
        texts = [text if text.strip() else "-" for batch in inputs for text in batch["text"]]
        return self.model.encode(texts, instruction=self.instruction(task_metadata, prompt_type),
                                 batch_size=kwargs.get("batch_size", self.batch_size), max_length=self.max_length,
                                 show_progress_bar=kwargs.get("show_progress_bar", False))


def sts_task(path: str | Path, *, name: str = "GritkitSTS", limit: int | None = None,
             min_score: float = 0, max_score: float = 5) -> AbsTaskSTS:
    """An MTEB STS task over a local pair file (any layout :func:`~gritkit.eval.tasks.sts.load_pairs` reads)."""
    from datasets import Dataset, DatasetDict

    pairs = subset(load_pairs(path), limit)
    metadata = TaskMetadata(
        name=name, description=f"Local STS pairs from {path}", type="STS", category="t2t", modalities=["text"],
        main_score="cosine_spearman", eval_splits=["test"], eval_langs=["eng-Latn"],
        dataset={"path": f"local/{Path(path).stem}", "revision": "local"},
        prompt=INSTRUCTIONS["stsb"],
    )

    class LocalSTS(AbsTaskSTS):
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            columns = {"sentence1": [p[0] for p in pairs], "sentence2": [p[1] for p in pairs], "score": [p[2] for p in pairs]}
            self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
            self.data_loaded = True

    LocalSTS.metadata, LocalSTS.min_score, LocalSTS.max_score = metadata, min_score, max_score
    return LocalSTS()
