"""Two CPU processes (torchrun + gloo): both ranks agree and use each other's passages as negatives.

With dropout off and ``loss_gen_type: token``, two processes with batch B each must train exactly
like one process with batch 2B: same losses step after step, and the same weights at the end, also
when each process splits its batch into GradCache and generative chunks, with InfoNCE groups, and
under FSDP2 (accelerate's CPU refusal lifted in the worker, see FSDP_ON_CPU).

DeepSpeed is not tested here: accelerate 1.15 only runs it with a GPU-like device (``cpu=True``
skips it, and without ``cpu`` a machine with no GPU gets no process group); the step boundary it
depends on is tested in tests/test_training.py and below (sync flags of every backward).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gritkit.training import TrainingConfig, train
from gritkit.training.data import BatchPlan, local_slice

WORKER = """
import json, os, sys, torch
torch.set_num_threads(1)
from accelerate import Accelerator
from gritkit.training import TrainingConfig, train

from torch.nn.parallel import DistributedDataParallel

from safetensors.torch import save_file

if os.environ.get("FSDP_ON_CPU") == "1":
    # accelerate 1.15 turns ACCELERATE_USE_FSDP into FSDP only for GPU-like devices (accelerate/state.py,
    # AcceleratorState.__init__); on CPU it stays MULTI_CPU. Do what it does there for GPUs, with the
    # device FSDP accepts as device_id on CPU ("cpu", not accelerate's "cpu:0").
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType
    real_state_init = AcceleratorState.__init__
    def fsdp_on_cpu(state, *args, fsdp_plugin=None, **kwargs):
        real_state_init(state, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
            state.fsdp_plugin = fsdp_plugin
            for shared in (state.__dict__, PartialState._shared_state):
                shared.update(distributed_type=DistributedType.FSDP, device=torch.device("cpu"))
    AcceleratorState.__init__ = fsdp_on_cpu

wrapped, backwards = [], []  # per backward: (accelerate's sync_gradients, DDP's require_backward_grad_sync)
first_gradients = {}  # the (all-reduced) gradient each trained parameter has at the first optimizer step
real_init, real_backward, real_step = DistributedDataParallel.__init__, Accelerator.backward, torch.optim.AdamW.step
def recording_init(ddp, *args, **kwargs):
    real_init(ddp, *args, **kwargs)
    wrapped.append(ddp)
def recording_backward(accelerator, loss, **kwargs):
    backwards.append((accelerator.sync_gradients, wrapped[0].require_backward_grad_sync if wrapped else None))
    real_backward(accelerator, loss, **kwargs)
def full(tensor):  # FSDP2 shards gradients as DTensors
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
def recording_step(optimizer, *args, **kwargs):
    if not first_gradients:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        first_gradients.update({str(i): full(p.grad.detach()).clone() for i, p in enumerate(parameters) if p.grad is not None})
    return real_step(optimizer, *args, **kwargs)
DistributedDataParallel.__init__, Accelerator.backward = recording_init, recording_backward
torch.optim.AdamW.step = recording_step

history = train(TrainingConfig.from_dict(json.loads(sys.argv[1])))
rank = os.environ.get("RANK", "0")
save_file(first_gradients, sys.argv[2] + f".rank{rank}.gradients.safetensors")
with open(sys.argv[2] + f".rank{rank}.json", "w") as file:
    json.dump({"history": history, "backwards": backwards}, file)
"""


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    tiny_model("llama").save_pretrained(folder / "base")  # no dropout: runs must be comparable
    with open(folder / "emb.jsonl", "w") as file:
        for i in range(16):
            file.write(json.dumps({"query": f"question {i} about topic {i % 5}", "positive": f"answer {i} on topic {i % 5}",
                                   "negatives": [f"off-topic text {i}"], "query_instruction": "Retrieve the answer"}) + "\n")
    with open(folder / "gen.jsonl", "w") as file:
        for i in range(8):
            file.write(json.dumps({"prompt": f"Count to {i}", "completion": " ".join(map(str, range(1, i + 2)))}) + "\n")
    (folder / "worker.py").write_text(WORKER)
    return folder


def config(folder: Path, name: str, world_size: int, **overrides) -> TrainingConfig:
    return TrainingConfig(model=str(folder / "base"), embedding_data=[str(folder / "emb.jsonl")],
                          generative_data=[str(folder / "gen.jsonl")], max_steps=3, output_dir=str(folder / name),
                          embedding_batch_size=4 // world_size, generative_batch_size=2 // world_size,
                          lora=False, loss_gen_type="token", learning_rate=1e-3, warmup_ratio=0.0,
                          checkpoint_every=0).replace(**overrides)


def free_port() -> int:
    with socket.socket() as probe:  # a fixed port collides with other test runs on the same machine
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# what `accelerate launch --config_file recipes/accelerate/fsdp.yaml` sets, with FSDP2 (see test_fsdp_... below)
FSDP_ENV = {"FSDP_ON_CPU": "1", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_USE_ORIG_PARAMS": "true",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP", "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
            "FSDP_SHARDING_STRATEGY": "FULL_SHARD", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}


def run_processes(folder: Path, config: TrainingConfig, processes: int = 2, env: dict | None = None) -> list[dict]:
    """Train in ``processes`` gloo processes (torchrun; a plain process for 1); per rank: history,
    backwards and ``gradients`` (the gradients at the first optimizer step, in optimizer order)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(port), **(env or {})}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(port)]
    prefix = folder / f"{Path(config.output_dir).name}.record"
    result = subprocess.run([*launcher, str(folder / "worker.py"), json.dumps(config.to_dict()), str(prefix)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [{**json.loads(Path(f"{prefix}.rank{rank}.json").read_text()),
             "gradients": load_file(f"{prefix}.rank{rank}.gradients.safetensors")} for rank in range(processes)]


def run_two_processes(folder: Path, two: TrainingConfig) -> tuple[dict, dict]:
    return tuple(run_processes(folder, two, 2))


def test_two_processes_agree_and_match_one_process_with_the_global_batch(setup):
    rank0, rank1 = (record["history"] for record in run_two_processes(setup, config(setup, "two", 2)))
    for row0, row1 in zip(rank0, rank1, strict=True):
        for key in ("loss", "loss_embedding", "loss_generative"):
            assert row0[key] == row1[key], key
        # 2 processes x 2 queries x (positive + hard negative): the other rank's passages are in the logits
        assert row0["contrastive_passages"] == 2 * 2 * 2

    single = train(config(setup, "one", world_size=1))
    for row2, row1 in zip(rank0, single, strict=True):
        for key in ("loss_embedding", "loss_generative"):
            assert row2[key] == pytest.approx(row1[key], rel=1e-4), (row2["step"], key)


def test_ddp_with_gradcache_chunks_trains_like_one_process_with_the_full_batch(setup):
    steps = 2
    chunked = config(setup, "two-chunked", 2, max_steps=steps, gradcache_chunk_size=1, generative_chunk_size=1)
    record0, record1 = run_two_processes(setup, chunked)
    single = train(config(setup, "one-full", 1, max_steps=steps))

    for row0, row1, row in zip(record0["history"], record1["history"], single, strict=True):
        assert row0["loss"] == row1["loss"]
        for key in ("loss_embedding", "loss_generative"):
            assert row0[key] == pytest.approx(row[key], rel=1e-4), (row["step"], key)
    got, expected = load_file(setup / "two-chunked" / "model.safetensors"), load_file(setup / "one-full" / "model.safetensors")
    base = load_file(setup / "base" / "model.safetensors")
    assert got.keys() == expected.keys()
    assert any(not torch.equal(expected[name], base[name]) for name in expected)  # training moved the weights
    # AdamW divides by each gradient's own scale, so a near-zero gradient summed in another order (chunks, or
    # another CPU's kernels: 6.5e-6 seen on AVX2) moves its weight by a visible fraction of lr; a wrong sync or
    # scale would move most weights by about lr (1e-3)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)

    # per step: 2 queries + 4 passages in chunks of 1, then 1 generative row; only the very last backward
    # syncs (DDP all-reduces once, a DeepSpeed engine would step once)
    per_step = 2 + 4 + 1
    for record in (record0, record1):
        backwards = [tuple(pair) for pair in record["backwards"]]
        assert len(backwards) == steps * per_step
        for start in range(0, len(backwards), per_step):
            assert backwards[start:start + per_step] == [(False, False)] * (per_step - 1) + [(True, True)]


def test_grouped_rows_under_ddp_with_gradcache_get_the_gradients_of_one_process(setup):
    """``group`` masking of gathered positives: same loss and same gradients as one process.

    Gradients, not weights after AdamW: its first update is ``lr * g / (|g| + eps)`` with eps=1e-8, so
    a gradient element of 5.7e-9 that float summation order moves by 3e-10 (1 and 2 processes add the
    batch's rows in different orders) moves its weight by 1e-5, 1% of the learning rate, with or
    without groups. Gradients are compared to 1e-6 of the largest one.
    """
    with open(setup / "grouped.jsonl", "w") as file:
        for i in range(16):
            file.write(json.dumps({"query": f"question {i} about topic {i % 5}", "positive": f"answer {i} on topic {i % 5}",
                                   "negatives": [f"off-topic text {i}"], "query_instruction": "Retrieve the answer",
                                   "group": f"intent {i % 2}"}) + "\n")
    grouped = dict(embedding_data=[str(setup / "grouped.jsonl")], mode="embedding", max_steps=1)
    one = config(setup, "grouped-one", 1, **grouped)
    # the step's 4 queries hold a same-group pair split across the 2 processes, so masking needs the gathered ids
    _, indices = BatchPlan({"grouped": 16}, 4, one.seed).batch(0)
    rank_groups = [{i % 2 for i in local_slice(indices, rank, 2)} for rank in (0, 1)]
    assert rank_groups[0] & rank_groups[1]

    (single,) = run_processes(setup, one, 1)
    rank0, rank1 = run_processes(setup, config(setup, "grouped-two", 2, gradcache_chunk_size=1, **grouped))
    assert rank0["history"][0]["loss"] == rank1["history"][0]["loss"]
    assert rank0["history"][0]["loss_embedding"] == pytest.approx(single["history"][0]["loss_embedding"], rel=1e-6)
    expected = single["gradients"]
    largest = max(gradient.abs().max().item() for gradient in expected.values())
    for record in (rank0, rank1):
        assert record["gradients"].keys() == expected.keys()
        for index, gradient in expected.items():
            torch.testing.assert_close(record["gradients"][index], gradient, rtol=1e-4, atol=1e-6 * largest,
                                       msg=f"parameter {index}")


def test_fsdp2_on_cpu_trains_lora_like_one_process_and_saves_merged_full_weights(setup):
    """FSDP2 (``fully_shard``) over 2 gloo processes, LoRA, GradCache and generative chunks of 1.

    accelerate refuses FSDP on CPU (the worker lifts that one gate, see FSDP_ON_CPU); torch 2.13 runs
    it. FSDP1 trains too, but accelerate's full-state-dict gather (``offload_to_cpu=True``) segfaults
    on CPU, so the final save is only proven for FSDP2. ``lora_dropout: 0``: dropout masks depend on a
    row's place in the batch, so with dropout no two layouts train alike (DDP neither).
    """
    lora = dict(lora=True, lora_dropout=0.0, merge_lora=True, max_steps=2)
    (single,) = run_processes(setup, config(setup, "lora-one", 1, **lora), 1)
    rank0, rank1 = run_processes(setup, config(setup, "lora-fsdp", 2, gradcache_chunk_size=1, generative_chunk_size=1,
                                                **lora), env=FSDP_ENV)
    for row0, row1, row in zip(rank0["history"], rank1["history"], single["history"], strict=True):
        assert row0["loss"] == row1["loss"]
        for key in ("loss_embedding", "loss_generative"):
            assert row0[key] == pytest.approx(row[key], rel=1e-4), (row["step"], key)
    per_step = 2 + 4 + 1  # chunks of 1: queries, passages, generative rows; accelerate syncs on the last only
    for record in (rank0, rank1):
        assert [sync for sync, _ in record["backwards"]] == ([False] * (per_step - 1) + [True]) * 2
    expected = single["gradients"]
    largest = max(gradient.abs().max().item() for gradient in expected.values())
    assert rank0["gradients"].keys() == expected.keys()
    for index, gradient in expected.items():
        torch.testing.assert_close(rank0["gradients"][index], gradient, rtol=1e-4, atol=1e-6 * largest,
                                   msg=f"parameter {index}")

    # merge_lora: full (gathered, unsharded) weights with the adapter merged in, like one process's
    merged, reference = (load_file(setup / name / "model.safetensors") for name in ("lora-fsdp", "lora-one"))
    base = load_file(setup / "base" / "model.safetensors")
    assert not (setup / "lora-fsdp" / "adapter_model.safetensors").exists()
    assert merged.keys() == reference.keys() == base.keys()
    assert any(not torch.equal(merged[name], base[name]) for name in base)
    for name in reference:
        assert merged[name].shape == base[name].shape, name
        torch.testing.assert_close(merged[name], reference[name], rtol=1e-4, atol=1e-4, msg=name)
