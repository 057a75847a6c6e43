"""Two CPU processes (torchrun + gloo): both ranks agree and use each other's passages as negatives.

With dropout off and ``loss_gen_type: token``, two processes with batch B each must train exactly
like one process with batch 2B: same losses step after step, and the same weights at the end, also
when each process splits its batch into GradCache and generative chunks.

FSDP is not tested here: accelerate 1.15 only enables FSDP for GPU-like devices (a CPU run with
``ACCELERATE_USE_FSDP=true`` stays DDP), and DeepSpeed is not installed; the step boundary they
depend on is tested in tests/test_training.py and below (DDP's own sync flag).
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

WORKER = """
import json, os, sys, torch
torch.set_num_threads(1)
from accelerate import Accelerator
from gritkit.training import TrainingConfig, train

from torch.nn.parallel import DistributedDataParallel

wrapped, backwards = [], []  # per backward: (accelerate's sync_gradients, DDP's require_backward_grad_sync)
real_init, real_backward = DistributedDataParallel.__init__, Accelerator.backward
def recording_init(ddp, *args, **kwargs):
    real_init(ddp, *args, **kwargs)
    wrapped.append(ddp)
def recording_backward(accelerator, loss, **kwargs):
    backwards.append((accelerator.sync_gradients, wrapped[0].require_backward_grad_sync))
    real_backward(accelerator, loss, **kwargs)
DistributedDataParallel.__init__, Accelerator.backward = recording_init, recording_backward

history = train(TrainingConfig.from_dict(json.loads(sys.argv[1])))
with open(sys.argv[2] + f".rank{os.environ['RANK']}.json", "w") as file:
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


def run_two_processes(folder: Path, two: TrainingConfig) -> tuple[dict, dict]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(port)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    prefix = folder / f"{Path(two.output_dir).name}.record"
    result = subprocess.run([*torchrun, str(folder / "worker.py"), json.dumps(two.to_dict()), str(prefix)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return tuple(json.loads(Path(f"{prefix}.rank{rank}.json").read_text()) for rank in (0, 1))


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
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)

    # per step: 2 queries + 4 passages in chunks of 1, then 1 generative row; only the very last backward
    # syncs (DDP all-reduces once, a DeepSpeed engine would step once)
    per_step = 2 + 4 + 1
    for record in (record0, record1):
        backwards = [tuple(pair) for pair in record["backwards"]]
        assert len(backwards) == steps * per_step
        for start in range(0, len(backwards), per_step):
            assert backwards[start:start + per_step] == [(False, False)] * (per_step - 1) + [(True, True)]
