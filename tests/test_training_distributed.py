"""Two CPU processes (torchrun + gloo): both ranks agree and use each other's passages as negatives.

With dropout off and ``loss_gen_type: token``, two processes with batch B each must train exactly
like one process with batch 2B: same losses step after step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gritkit.training import TrainingConfig, train

WORKER = """
import json, os, sys, torch
torch.set_num_threads(1)
from gritkit.training import TrainingConfig, train
history = train(TrainingConfig.from_dict(json.loads(sys.argv[1])))
with open(sys.argv[2] + f".rank{os.environ['RANK']}.json", "w") as file:
    json.dump(history, file)
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


def config(folder: Path, name: str, world_size: int) -> TrainingConfig:
    return TrainingConfig(model=str(folder / "base"), embedding_data=[str(folder / "emb.jsonl")],
                          generative_data=[str(folder / "gen.jsonl")], max_steps=3, output_dir=str(folder / name),
                          embedding_batch_size=4 // world_size, generative_batch_size=2 // world_size,
                          lora=False, loss_gen_type="token", learning_rate=1e-3, warmup_ratio=0.0, checkpoint_every=0)


def test_two_processes_agree_and_match_one_process_with_the_global_batch(setup):
    two = config(setup, "two", world_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_PORT": "29731"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731"]
    result = subprocess.run([*torchrun, str(setup / "worker.py"), json.dumps(two.to_dict()), str(setup / "history")],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((setup / f"history.rank{r}.json").read_text()) for r in (0, 1))

    for row0, row1 in zip(rank0, rank1, strict=True):
        for key in ("loss", "loss_embedding", "loss_generative"):
            assert row0[key] == row1[key], key
        # 2 processes x 2 queries x (positive + hard negative): the other rank's passages are in the logits
        assert row0["contrastive_passages"] == 2 * 2 * 2

    single = train(config(setup, "one", world_size=1))
    for row2, row1 in zip(rank0, single, strict=True):
        for key in ("loss_embedding", "loss_generative"):
            assert row2[key] == pytest.approx(row1[key], rel=1e-4), (row2["step"], key)
