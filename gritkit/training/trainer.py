"""``train(config)``: GRIT fine-tuning on accelerate (one CPU process up to multi-GPU DDP/FSDP/DeepSpeed).

Each step draws one embedding batch (all from one source) and one generative batch, and backpropagates
``w_emb * InfoNCE + w_gen * next-token loss`` (``+ w_rag * RAG answer loss`` when ``rag_data`` is set: see
``gritkit.training.rag_stream``). Both passes go through the core's code paths:
``GritLM.tokenize_for_embedding`` + ``GritLM.embed_batch`` (bidirectional, instruction-excluded
pooling) and the causal LM forward on chat-formatted text.

Output layout (``output_dir``)::

    adapter_model.safetensors + adapter_config.json   (or model.safetensors + config.json)
    tokenizer files, training_config.yaml, metrics.jsonl
    checkpoints/step-0000100/                         (model, optimizer, scheduler, RNG, trainer_state.json)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gritkit import loading
from gritkit.model import NEUTRAL_PENALTIES, EmbeddingBatch, GritLM
from gritkit.specs import load_model
from gritkit.training.config import CONFIG_FILENAME, TrainingConfig
from gritkit.training import rag_stream
from gritkit.training.data import (BatchPlan, GenerativeExample, IGNORE_INDEX, RagExample, collate_generative,
                                   local_slice, passage_group, read_embedding_data, read_generative_data, read_rag_data,
                                   tokenize_generative)
from gritkit.training.accumulation import StepBackward
from gritkit.training.gradcache import gradcache_backward, split_batch
from gritkit.training.losses import cosent_loss, info_nce_loss, next_token_loss

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")
STATE_FILENAME = "trainer_state.json"
METRICS_FILENAME = "metrics.jsonl"


class GritTrainingModule(torch.nn.Module):
    """Routes both kinds of pass through one ``forward`` so DDP/FSDP/DeepSpeed wrappers see every call."""

    def __init__(self, grit: GritLM):
        super().__init__()
        self.model = grit.model  # registered, so wrappers find the parameters
        self.grit = grit

    def forward(self, embedding_batches: tuple[EmbeddingBatch, ...] | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                rag_inputs: list[rag_stream.RagInputs] | None = None, rag_hidden: bool = False):
        if embedding_batches is not None:
            return tuple(self.grit.embed_batch(batch) for batch in embedding_batches)
        if rag_inputs is not None:
            return rag_stream.answer_outputs(self.grit, rag_inputs, rag_hidden)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


# ---------------------------------------------------------------- model set-up

def load_for_training(config: TrainingConfig, device: torch.device | str) -> tuple[GritLM, str]:
    """The model with LoRA (or all weights) trainable, and the base spec a saved adapter points to."""
    from peft import LoraConfig, PeftModel, get_peft_model

    grit = load_model(config.model, device=str(device), dtype=torch.float32, pooling=config.pooling,
                      merge_adapter=False)
    base_spec = _adapter_base_spec(config.model)
    if isinstance(grit.model, PeftModel) and not config.lora:
        grit.model = grit.model.merge_and_unload()
    hf_model = grit.model.get_base_model() if isinstance(grit.model, PeftModel) else grit.model
    hf_model.config.use_cache = False
    if config.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) and with several forwards before one backward
        if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if isinstance(grit.model, PeftModel):  # an adapter spec: keep training that adapter
        for name, parameter in grit.model.named_parameters():
            parameter.requires_grad = "lora_" in name
    elif config.lora:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
        grit.model = get_peft_model(grit.model, lora)
    grit.model.train()
    return grit, base_spec


def frozen_copy(grit: GritLM) -> GritLM:
    """An inference-only copy of ``grit`` as it is now (LoRA merged), for a teacher that must not move."""
    from peft import PeftModel

    teacher = copy.deepcopy(grit)
    if isinstance(teacher.model, PeftModel):
        teacher.model = teacher.model.merge_and_unload()
    teacher.model.eval().requires_grad_(False)
    return teacher


def _adapter_base_spec(spec: str) -> str:
    """What a saved adapter's ``base_model_name_or_path`` must say so ``GritLM.from_pretrained`` finds it offline."""
    if spec == loading.DEFAULT_SPEC:
        if (loading.SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
            spec = str(loading.SHIPPED_ADAPTER_DIR)
        else:
            return loading.BASE_SPEC
    if spec == loading.BASE_SPEC:
        return spec
    path = Path(spec).expanduser().resolve()
    adapter_config = path / "adapter_config.json"
    if not adapter_config.is_file():
        return str(path)
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path") or loading.BASE_SPEC
    if base == loading.DEFAULT_SPEC:
        return loading.BASE_SPEC
    if not Path(base).is_absolute() and (path / base).exists():
        return str((path / base).resolve())
    return base


# ---------------------------------------------------------------- the step

class TrainingStep:
    """Builds and backpropagates one training step; holds the data, plans and prepared model."""

    def __init__(self, config: TrainingConfig, grit: GritLM, model, accelerator,
                 embedding_data: dict | None, generative_data: list[GenerativeExample] | None,
                 rag_data: list[RagExample] | None = None, teacher: GritLM | None = None):
        self.config, self.grit, self.model, self.accelerator = config, grit, model, accelerator
        self.teacher = teacher or grit  # the RAG stream's distillation teacher
        self.backwards = StepBackward(accelerator, model)  # every backward below goes through it
        self.tokens = 0  # non-padding tokens this process ran in the current step (throughput)
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.embedding_data, self.generative_data, self.rag_data = embedding_data, generative_data, rag_data
        self.embedding_plan = self.generative_plan = self.rag_plan = None
        self.grouped_sources = {name for name, examples in (embedding_data or {}).items()
                                if any(example.group is not None for example in examples)}
        self.scored_sources = {name for name, examples in (embedding_data or {}).items() if examples[0].score is not None}
        if embedding_data:
            sizes = {name: len(examples) for name, examples in embedding_data.items()}
            self.embedding_plan = BatchPlan(sizes, config.embedding_batch_size * self.world_size, config.seed)
            if self.embedding_plan.skipped:
                logger.warning("sources smaller than one global batch are skipped: %s", self.embedding_plan.skipped)
        if generative_data:
            self.generative_plan = BatchPlan({"all": len(generative_data)},
                                             config.generative_batch_size * self.world_size, config.seed + 1)
        if rag_data:
            self.rag_plan = BatchPlan({"all": len(rag_data)}, config.rag_batch_size * self.world_size, config.seed + 2)

    def __call__(self, step: int) -> dict[str, float]:
        """Backpropagate step ``step``'s loss; returns its metrics (``tokens``: this process's non-padding tokens)."""
        metrics: dict[str, float] = {}
        self.tokens = 0
        loss = torch.zeros((), device=self.accelerator.device)
        if self.embedding_plan is not None:
            # gradients are exchanged (and a DeepSpeed engine steps) once per step: on its last backward
            later_streams = self.generative_plan is not None or self.rag_plan is not None
            embedding_loss, scores = self.embedding_backward(step, final=not later_streams)
            metrics["loss_embedding"] = embedding_loss.item()
            targets = torch.arange(len(scores), device=scores.device) * (scores.shape[1] // len(scores))
            metrics["embedding_accuracy"] = (scores.argmax(1) == targets).float().mean().item()
            metrics["contrastive_passages"] = scores.shape[1]
            loss = loss + self.config.embedding_loss_weight * embedding_loss
        if self.rag_plan is not None:
            rag_loss = self.accelerator.reduce(self.rag_backward(step, final=self.generative_plan is None), "mean")
            metrics["loss_rag"] = rag_loss.item()
            loss = loss + self.config.rag_loss_weight * rag_loss
        if self.generative_plan is not None:
            generative_loss = self.accelerator.reduce(self.generative_backward(step), "mean")
            metrics["loss_generative"] = generative_loss.item()
            loss = loss + self.config.generative_loss_weight * generative_loss
        metrics["loss"] = loss.item()
        metrics["tokens"] = self.tokens
        return metrics

    def embedding_backward(self, step: int, final: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE (CoSENT for graded pairs) over this process's rows, in GradCache chunks when configured;
        ``final``: this stream ends the step."""
        config = self.config
        source, indices = self.embedding_plan.batch(step)
        examples = self.embedding_data[source]
        scored = source in self.scored_sources
        queries, passages, groups = [], [], []
        local = local_slice(indices, self.rank, self.world_size)
        for index in local:
            rng = np.random.default_rng([config.seed, step, index])  # same choice whatever the process count
            queries.append(examples[index].query)
            passages += passage_group(examples[index], examples, 0 if scored else config.num_negatives, rng)
            groups.append(examples[index].group)
        query_batch = self.grit.tokenize_for_embedding([t for _, t in queries], [i for i, _ in queries],
                                                       max_length=config.query_max_length)
        passage_batch = self.grit.tokenize_for_embedding([t for _, t in passages], [i for i, _ in passages],
                                                         max_length=config.passage_max_length)
        self.tokens += int(query_batch.attention_mask.sum() + passage_batch.attention_mask.sum())
        gather = config.gather_negatives and self.world_size > 1
        # a source either has groups on every process or on none, so gathered shapes always agree
        group_ids = group_tensor(groups, local, self.accelerator.device) if source in self.grouped_sources else None
        pair_scores = (torch.tensor([examples[i].score for i in local], device=self.accelerator.device)
                       if scored else None)
        found: dict[str, torch.Tensor] = {}

        def loss_fn(query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor) -> torch.Tensor:
            if scored:
                loss, found["scores"] = cosent_loss(query_embeddings, passage_embeddings, pair_scores,
                                                    scale=config.cosent_scale, gather_across_processes=gather)
            else:
                loss, found["scores"] = info_nce_loss(query_embeddings, passage_embeddings,
                                                      temperature=config.temperature,
                                                      gather_across_processes=gather, groups=group_ids)
            found["loss"] = loss.detach()
            # Every process holds the same global loss but gets gradients for its own rows only;
            # scaling by the world size undoes the data-parallel gradient average.
            return loss * config.embedding_loss_weight * (self.world_size if gather else 1)

        if config.gradcache_chunk_size:
            chunk = config.gradcache_chunk_size
            gradcache_backward(lambda batch: self.model(embedding_batches=(batch,))[0],
                               [split_batch(query_batch, chunk), split_batch(passage_batch, chunk)], loss_fn,
                               micro_batch=lambda last: self.backwards.micro_batch(final and last))
        else:
            with self.backwards.micro_batch(final) as backward:
                backward(loss_fn(*self.model(embedding_batches=(query_batch, passage_batch))))
        return found["loss"], found["scores"].detach()

    def rag_backward(self, step: int, final: bool = True) -> torch.Tensor:
        """All of this process's questions in one forward and one backward; the loss is their mean."""
        config = self.config
        _, indices = self.rag_plan.batch(step)
        batch = [rag_stream.draw(self.grit, self.rag_data, index, config.rag_cache_modes, config.rag_max_passages,
                                 config.rag_passage_max_length, np.random.default_rng([config.seed, step, index, 2]))
                 for index in local_slice(indices, self.rank, self.world_size)]
        self.tokens += sum(len(inputs.prompt_ids) + len(inputs.answer_ids) for inputs in batch)
        hidden = config.rag_hidden_weight > 0
        teachers = (rag_stream.uncached_answer_outputs(self.teacher, batch, hidden) if "distill" in config.rag_target
                    else rag_stream.AnswerOutputs([None] * len(batch)))
        with self.backwards.micro_batch(final) as backward:
            student = self.model(rag_inputs=batch, rag_hidden=hidden)
            loss = sum(rag_stream.rag_loss(rows, inputs.answer_ids, config.rag_target, teacher)
                       for rows, inputs, teacher in zip(student.logits, batch, teachers.logits)) / len(batch)
            if hidden:
                loss = loss + config.rag_hidden_weight * sum(
                    rag_stream.hidden_loss(mine, theirs) for mine, theirs in zip(student.hidden, teachers.hidden)) / len(batch)
            backward(loss * config.rag_loss_weight)
        return loss.detach()

    def generative_backward(self, step: int) -> torch.Tensor:
        config = self.config
        _, indices = self.generative_plan.batch(step)
        rows = [tokenize_generative(self.grit, self.generative_data[i], config.generative_max_length)
                for i in local_slice(indices, self.rank, self.world_size)]
        self.tokens += sum(len(ids) for ids, _ in rows)
        local_tokens = sum(label != IGNORE_INDEX for _, labels in rows for label in labels[1:])
        num_tokens = torch.tensor(float(local_tokens), device=self.accelerator.device)
        if config.loss_gen_type == "token":  # every token of the global step weighs the same
            num_tokens = self.accelerator.reduce(num_tokens, "mean")
        num_tokens = num_tokens.clamp(min=1)
        chunk = config.generative_chunk_size or len(rows)
        total = torch.zeros((), device=self.accelerator.device)
        starts = range(0, len(rows), chunk)
        for start in starts:
            batch = collate_generative(rows[start:start + chunk], self.grit.tokenizer.pad_token_id)
            with self.backwards.micro_batch(start == starts[-1]) as backward:
                logits = self.model(input_ids=batch["input_ids"].to(self.accelerator.device),
                                    attention_mask=batch["attention_mask"].to(self.accelerator.device))
                loss = next_token_loss(logits, batch["labels"], loss_type=config.loss_gen_type,
                                       num_tokens=num_tokens, num_samples=len(rows))
                backward(loss * config.generative_loss_weight)
            total += loss.detach()
        return total


def group_tensor(groups: list[str | None], indices: list[int], device) -> torch.Tensor:
    """Integer ids of the rows' groups, equal across processes for equal labels; a row without one
    gets its own id (from its example index), so it masks nothing."""
    ids = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=7).digest(), "big") if g is not None else -1 - i
           for g, i in zip(groups, indices)]
    return torch.tensor(ids, dtype=torch.long, device=device)


# ---------------------------------------------------------------- checkpoints and output

def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (half-written ones are still ``.tmp-*`` and never match)."""
    folder = output_dir / "checkpoints"
    found = [(int(m.group(1)), path) for path in folder.glob("step-*")
             if (m := CHECKPOINT_PATTERN.match(path.name)) and (path / STATE_FILENAME).is_file()]
    return max(found)[1] if found else None


def save_checkpoint(accelerator, output_dir: Path, step: int, config: TrainingConfig) -> Path:
    """Model, optimizer, scheduler and every process's RNG, written to a temp dir then renamed."""
    folder = output_dir / "checkpoints"
    final, staging = folder / f"step-{step:07d}", folder / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "data_position": {"embedding_batches": step, "generative_batches": step},
                 "config": config.to_dict()}
        (staging / STATE_FILENAME).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
        if config.keep_checkpoints:
            old = sorted(p for p in folder.glob("step-*") if CHECKPOINT_PATTERN.match(p.name))
            for path in old[:-config.keep_checkpoints]:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_output(accelerator, model, grit: GritLM, config: TrainingConfig, base_spec: str) -> None:
    """Write a directory ``GritLM.from_pretrained`` loads: adapter or weights, tokenizer, training config.

    Files are staged in a temp dir and moved in, the model config last, so a killed save never
    leaves a directory that looks complete.
    """
    from peft import PeftModel

    output_dir = Path(config.output_dir)
    state_dict = accelerator.get_state_dict(model)  # gathers shards under FSDP / DeepSpeed
    if not accelerator.is_main_process:
        return
    inner = accelerator.unwrap_model(model).model
    state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()}
    staging = output_dir / ".tmp-output"
    shutil.rmtree(staging, ignore_errors=True)
    inner.save_pretrained(staging, state_dict=state_dict)
    adapter_config = staging / "adapter_config.json"
    if adapter_config.is_file():
        values = json.loads(adapter_config.read_text())
        values["base_model_name_or_path"] = base_spec
        adapter_config.write_text(json.dumps(values, indent=2))
    _save_decoding_defaults(grit, staging)
    if adapter_config.is_file() and config.merge_lora:
        _merge_saved_adapter(staging, next(iter(state_dict.values())).dtype)
    grit.tokenizer.save_pretrained(staging)
    config.to_yaml(staging / CONFIG_FILENAME)
    markers = ("adapter_config.json", "config.json")
    for path in sorted(staging.iterdir(), key=lambda p: p.name in markers):
        target = output_dir / path.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(path, target)
    staging.rmdir()


def _save_decoding_defaults(grit: GritLM, folder: Path) -> None:
    """Carry the start model's decoding defaults (e.g. an adapter's ``frequency_penalty``) to the trained
    weights, as ``save_pretrained`` keeps a full model's generation config (an adapter has none)."""
    defaults = {name: value for name, value in grit.default_penalties.items() if value != NEUTRAL_PENALTIES[name]}
    if defaults and not (folder / loading.GENERATION_CONFIG).is_file():
        (folder / loading.GENERATION_CONFIG).write_text(json.dumps(defaults, indent=2) + "\n")


def _merge_saved_adapter(folder: Path, dtype: torch.dtype) -> None:
    """Replace the adapter saved in ``folder`` by full weights with it merged in.

    Merged from the saved (gathered) adapter onto a fresh copy of its base: merging the training
    model in place would merge sharded parameters under FSDP or ZeRO-3.
    """
    merged, _ = loading.load(str(folder), dtype=dtype, device="cpu", merge_adapter=True)
    for path in folder.iterdir():
        if path.name.startswith("adapter_") or path.name == "README.md":
            path.unlink()
    merged.save_pretrained(folder)


# ---------------------------------------------------------------- the loop

def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), as torch's own dispatch detects it."""
    checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(check() for check in checks if check is not None)


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on GPU or on a CPU with native bf16, else ``fp32``; ``bf16`` on a CPU without it warns."""
    native = torch.cuda.is_available() or cpu_has_native_bf16()
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        # Seen on 2 AVX2 cores: a gritsmol RAG step ran over 8 min in bf16 against 35 s in fp32.
        logger.warning("precision bf16 on a CPU without AVX512-BF16 or AMX: torch emulates bf16 there, many times "
                       "slower than fp32; use precision: auto (or fp32)")
    return precision


def make_accelerator(config: TrainingConfig):
    """The ``accelerate.Accelerator`` a run of ``config`` trains with (bf16 or none; DDP options; CPU without a GPU)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    precision = config.precision  # resolved by train()
    # In embedding-only full fine-tuning an untied LM head gets no gradient.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=config.mode == "embedding" and not config.lora)
    # cpu=True lets `torchrun --nproc_per_node N` on a machine without GPUs run N gloo processes
    return Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", kwargs_handlers=[ddp],
                       cpu=not torch.cuda.is_available())


def _load_data(config: TrainingConfig):
    embedding = read_embedding_data(config.embedding_data) if config.mode != "generative" else None
    generative = read_generative_data(config.generative_data) if config.mode != "embedding" else None
    rag = read_rag_data(config.rag_data) if config.rag_data else None
    return embedding, generative, rag


def _check_output_dir(output_dir: Path, resume: bool) -> None:
    if resume:
        return
    if (output_dir / "checkpoints").exists() or (output_dir / METRICS_FILENAME).exists():
        raise FileExistsError(f"{output_dir} holds a previous run: pass resume=True (--resume) or another output_dir")


def train(config: TrainingConfig | dict[str, Any] | str | os.PathLike, *, resume: bool = False) -> list[dict[str, float]]:
    """Train a GRIT model as ``config`` says (a TrainingConfig, a dict or a YAML path); returns the metrics.

    Data is fully validated before anything is written. With ``resume`` the newest checkpoint in
    ``output_dir`` is loaded and training continues at the next step with the same data order.
    """
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    if isinstance(config, dict):
        config = TrainingConfig.from_dict(config)
    elif not isinstance(config, TrainingConfig):
        config = TrainingConfig.from_yaml(config)
    config.validate()
    # The run's saved config says what was used (bf16 or fp32), not "auto", which depends on the machine.
    config = config.replace(precision=resolve_precision(config.precision))
    output_dir = Path(config.output_dir)
    _check_output_dir(output_dir, resume)
    writer = _tensorboard_writer_class() if config.tensorboard else None
    embedding_data, generative_data, rag_data = _load_data(config)

    accelerator = make_accelerator(config)
    set_seed(config.seed)
    grit, base_spec = load_for_training(config, accelerator.device)
    # before any checkpoint is loaded: a resumed run keeps the teacher it started with
    teacher = frozen_copy(grit) if rag_data and "distill" in config.rag_target and config.rag_teacher == "frozen" else None
    optimizer = torch.optim.AdamW([p for p in grit.model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    # The scheduler is stepped by hand (accelerate's wrapper would step it once per process).
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * config.max_steps),
                              num_training_steps=config.max_steps)
    model, optimizer = accelerator.prepare(GritTrainingModule(grit), optimizer)
    accelerator.register_for_checkpointing(scheduler)
    step_fn = TrainingStep(config, grit, model, accelerator, embedding_data, generative_data, rag_data, teacher)

    start_step = 0
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = json.loads((checkpoint / STATE_FILENAME).read_text())["step"]
        _warn_config_changes(checkpoint, config)
    elif resume:
        logger.warning("no checkpoint in %s: starting from step 0", output_dir)

    history = _read_metrics(output_dir, start_step) if start_step else []
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_metrics(output_dir, history)  # drops lines logged after the checkpoint we resume from
        config.to_yaml(output_dir / CONFIG_FILENAME)
    tensorboard = writer(str(output_dir / "tensorboard")) if writer and accelerator.is_main_process else None

    examples_per_step = accelerator.num_processes * (
        (config.embedding_batch_size if embedding_data else 0) + (config.generative_batch_size if generative_data else 0)
        + (config.rag_batch_size if rag_data else 0))
    bar = tqdm(total=config.max_steps, initial=start_step, desc="train", disable=not accelerator.is_main_process)
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else None
    last_step = start_step
    for step in range(start_step, config.max_steps):
        if deadline is not None and _out_of_time(accelerator, deadline):
            logger.warning("max_minutes=%s reached after step %d of %d: saving", config.max_minutes, step, config.max_steps)
            break
        started = time.perf_counter()
        metrics = step_fn(step)
        if config.max_grad_norm:
            # the prepared model's parameters, all of them: FSDP2 replaces the parameters by sharded
            # ones, and accelerate computes the sharded norm only when given exactly model.parameters()
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        tokens = accelerator.reduce(torch.tensor(float(metrics.pop("tokens")), device=accelerator.device), "sum")
        metrics = {"step": step + 1, **metrics, "lr": lr, "examples_per_s": round(examples_per_step / seconds, 2),
                   "tokens_per_s": round(tokens.item() / seconds, 1), "step_s": round(seconds, 3)}
        history.append(metrics)
        bar.update(1)
        bar.set_postfix({k.removeprefix("loss_"): f"{metrics[k]:.4f}" for k in metrics if k.startswith("loss")}
                        | {"ex/s": metrics["examples_per_s"], "tok/s": metrics["tokens_per_s"]})
        if accelerator.is_main_process and (step + 1) % config.log_every == 0:
            _write_metrics(output_dir, [metrics], append=True)
            if tensorboard:
                for key, value in metrics.items():
                    tensorboard.add_scalar(key, value, step + 1)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.max_steps:
            save_checkpoint(accelerator, output_dir, step + 1, config)
        last_step = step + 1
    bar.close()
    if config.checkpoint_every and last_step > start_step:
        save_checkpoint(accelerator, output_dir, last_step, config)
    save_output(accelerator, model, grit, config, base_spec)
    accelerator.wait_for_everyone()
    if tensorboard:
        tensorboard.close()
    accelerator.end_training()
    return history


def _out_of_time(accelerator, deadline: float) -> bool:
    """Whether the time budget is spent on any process, so that every process stops at the same step."""
    spent = torch.tensor(float(time.monotonic() >= deadline), device=accelerator.device)
    return bool(accelerator.reduce(spent, "max").item())


def _tensorboard_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from error
    return SummaryWriter


def _warn_config_changes(checkpoint: Path, config: TrainingConfig) -> None:
    saved = json.loads((checkpoint / STATE_FILENAME).read_text())["config"]
    if saved.get("precision") == "auto":  # a checkpoint from before runs recorded what "auto" became
        saved["precision"] = resolve_precision("auto")
    free = {"max_steps", "output_dir", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard"}
    changed = sorted(k for k, v in config.to_dict().items() if k not in free and saved.get(k) != v)
    if changed:
        logger.warning("resuming with changed options %s: the data order or results may differ", changed)


def _read_metrics(output_dir: Path, up_to_step: int) -> list[dict]:
    path = output_dir / METRICS_FILENAME
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row["step"] <= up_to_step]


def _write_metrics(output_dir: Path, rows: list[dict], append: bool = False) -> None:
    with (output_dir / METRICS_FILENAME).open("a" if append else "w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
