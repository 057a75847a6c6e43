"""Training options: one dataclass with documented defaults; YAML files and CLI flags map onto it.

recipes/example.yaml lists every field below with its default and meaning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

Mode = Literal["unified", "embedding", "generative"]
GenLossType = Literal["mixed", "token", "sample"]
Precision = Literal["auto", "bf16", "fp32"]
RagTarget = Literal["gold", "distill", "gold+distill"]
RagTeacher = Literal["live", "frozen"]
RAG_TRAINING_MODES = ("query", "doc", "query_doc", "doc_query")
PoolingName = Literal["mean", "weighted_mean", "last"]

CONFIG_FILENAME = "training_config.yaml"


@dataclass
class TrainingConfig:
    """Every option of ``gritkit train``; the minimal config sets model, mode, data, max_steps, output_dir."""

    # --- what to train, on what, for how long
    model: str = "default"                      # 'default', 'smollm2-base', a .gguf, a model or adapter dir
    mode: Mode = "unified"                      # unified | embedding | generative (the paper's ablation)
    embedding_data: list[str] = field(default_factory=list)   # JSONL files or folders of them; one source per file
    generative_data: list[str] = field(default_factory=list)  # JSONL files or folders of them
    max_steps: int = 100
    max_minutes: float = 0.0                    # >0: stop after this much training time and save as at max_steps
    output_dir: str = "runs/gritkit"

    # --- embedding (contrastive) stream
    embedding_batch_size: int = 32             # queries per process per step
    num_negatives: int = 1                     # hard negatives per query (filled with random same-source passages)
    temperature: float = 0.02                  # InfoNCE temperature on cosine similarities
    cosent_scale: float = 20.0                 # CoSENT scale for sources of graded pairs (rows with "score")
    gather_negatives: bool = True              # use the other processes' passages as negatives too
    gradcache_chunk_size: int = 0              # >0: embed in chunks of this many texts (GradCache); 0 = one pass
    query_max_length: int = 256                # tokens, instruction included
    passage_max_length: int = 512
    pooling: PoolingName = "mean"
    embedding_loss_weight: float = 1.0

    # --- generative (next-token) stream
    generative_batch_size: int = 8             # sequences per process per step
    generative_max_length: int = 1024          # tokens; longer: cut on the right, or the prompt's start when the reply would not fit
    generative_chunk_size: int = 0             # >0: forward/backward this many sequences at a time
    loss_gen_type: GenLossType = "mixed"       # mixed: token mean per process | token: over all processes | sample
    generative_loss_weight: float = 1.0

    # --- cache-aware RAG stream (optional; on when rag_data is set): answers generated after key/value
    # states of the embedding pass, laid out and re-positioned exactly as gritkit.rag does at answer time
    rag_data: list[str] = field(default_factory=list)        # JSONL: {"question", "passages" (gold first), "answer"}
    rag_batch_size: int = 4                    # questions per process per step
    rag_cache_modes: list[str] = field(default_factory=lambda: list(RAG_TRAINING_MODES))  # one drawn per question
    rag_max_passages: int = 2                  # k drawn from 1..this per question (gold + distractors, shuffled)
    rag_target: RagTarget = "gold"             # gold: next-token loss on the gold answer | distill: KL to the model's
                                               # own uncached-RAG distribution on those tokens | gold+distill: both
    rag_teacher: RagTeacher = "live"           # distill's teacher: live = the model being trained (it moves too) |
                                               # frozen = a copy of the model as training started (one more copy in memory)
    rag_passage_max_length: int = 256          # tokens per cached passage (embedding prompt included)
    rag_loss_weight: float = 1.0
    rag_hidden_weight: float = 0.0             # > 0 adds this times the relative squared error of the cached run's hidden
                                               # states (every layer) to the teacher's uncached ones, on the tokens both
                                               # runs share (the prompt's common tail and the answer); needs distill

    # --- optimisation
    learning_rate: float = 1e-4                # 1e-4 suits LoRA; use ~2e-5 for full fine-tuning (GritLM)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"               # any transformers.get_scheduler name: linear, cosine, constant, ...
    max_grad_norm: float = 1.0                 # 0 disables clipping
    seed: int = 42

    # --- model adaptation
    lora: bool = True                          # False = full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    merge_lora: bool = False                   # save merged full weights instead of the adapter
    gradient_checkpointing: bool = False
    precision: Precision = "auto"              # auto: bf16 on GPU and on CPUs with native bf16, else fp32

    # --- bookkeeping
    checkpoint_every: int = 100                # steps between checkpoints; 0 = none
    keep_checkpoints: int = 2                  # newest checkpoints kept; 0 = all
    log_every: int = 1                         # steps between metrics.jsonl lines
    tensorboard: bool = False                  # also log to output_dir/tensorboard (needs tensorboard installed)

    def __post_init__(self) -> None:
        for name in ("embedding_data", "generative_data", "rag_data"):
            value = getattr(self, name)
            setattr(self, name, [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value])
        self.model = str(self.model)
        self.output_dir = str(self.output_dir)

    # ------------------------------------------------------------------ checks

    def validate(self) -> None:
        """Raise ValueError naming the first option that cannot work."""
        for name, allowed in (("mode", Mode), ("loss_gen_type", GenLossType), ("precision", Precision),
                              ("pooling", PoolingName)):
            if getattr(self, name) not in get_args(allowed):
                raise ValueError(f"{name} must be one of {get_args(allowed)}, not {getattr(self, name)!r}")
        if self.mode != "generative" and not self.embedding_data:
            raise ValueError(f"mode {self.mode!r} needs embedding_data")
        if self.mode != "embedding" and not self.generative_data:
            raise ValueError(f"mode {self.mode!r} needs generative_data")
        if self.rag_target not in get_args(RagTarget):
            raise ValueError(f"rag_target must be one of {get_args(RagTarget)}, not {self.rag_target!r}")
        if self.rag_teacher not in get_args(RagTeacher):
            raise ValueError(f"rag_teacher must be one of {get_args(RagTeacher)}, not {self.rag_teacher!r}")
        if self.rag_hidden_weight < 0 or (self.rag_hidden_weight > 0 and "distill" not in self.rag_target):
            raise ValueError(f"rag_hidden_weight must be >= 0, and > 0 only with a distill rag_target "
                             f"(its teacher), not {self.rag_hidden_weight} with {self.rag_target!r}")
        unknown = [m for m in self.rag_cache_modes if m not in RAG_TRAINING_MODES]
        if unknown or not self.rag_cache_modes:
            raise ValueError(f"rag_cache_modes must be a non-empty list of {RAG_TRAINING_MODES}, not {self.rag_cache_modes}")
        for name in ("max_steps", "embedding_batch_size", "generative_batch_size", "query_max_length",
                     "passage_max_length", "generative_max_length", "log_every", "rag_batch_size",
                     "rag_max_passages", "rag_passage_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("num_negatives", "gradcache_chunk_size", "generative_chunk_size", "checkpoint_every",
                     "keep_checkpoints", "weight_decay", "max_grad_norm", "max_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.cosent_scale <= 0:
            raise ValueError("cosent_scale must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")

    # ------------------------------------------------------------------ YAML / overrides

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(cls.field_names())}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainingConfig:
        """Read a YAML config; relative data paths are taken relative to the YAML file's folder
        when they exist there (so a recipe works from any working directory)."""
        path = Path(path)
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of option: value")
        for name in ("embedding_data", "generative_data", "rag_data"):
            entries = values.get(name) or []
            entries = [entries] if isinstance(entries, str) else entries
            values[name] = [str(path.parent / e) if not Path(e).is_absolute() and not Path(e).exists()
                            and (path.parent / e).exists() else e for e in entries]
        return cls.from_dict({**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **overrides: Any) -> TrainingConfig:
        return self.from_dict({**self.to_dict(), **overrides})
