"""The shipped GRIT adapter (gritkit/adapters/gritsmol): small, documented, loaded by default, and
embedding far better than the untouched base it was trained from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from gritkit import GritLM
from gritkit.eval.runner import run_task
from gritkit.loading import SHIPPED_ADAPTER_DIR

pytestmark = pytest.mark.slow

# STS-B test, the fixed 200-pair sample of `gritkit eval --tasks stsb --limit 200`. The untouched base
# scores 20 on it and all-MiniLM-L6-v2 86 (results/ablation/). A Spearman of 200 pairs has a standard
# error of about 0.05, so 50 is far outside the base's reach yet well below the shipped adapter's score.
STS_LIMIT = 200
DEFAULT_MINIMUM = 0.50
MINIMUM_GAIN_OVER_BASE = 0.25


@pytest.fixture(scope="module")
def base_model() -> GritLM:
    return GritLM.from_pretrained("smollm2-base")


def test_the_shipped_adapter_is_small_and_says_how_it_was_made():
    files = {path.name: path for path in SHIPPED_ADAPTER_DIR.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "training_config.yaml", "eval.json", "README.md"} <= set(files)
    assert sum(path.stat().st_size for path in files.values()) < 15e6  # an adapter, never base weights
    config = yaml.safe_load(files["training_config.yaml"].read_text())
    stages = yaml.safe_load(files["training_stages.yaml"].read_text()) if "training_stages.yaml" in files else [config]
    assert stages[-1] == {"run": stages[-1].get("run"), **config} or len(stages) == 1
    assert stages[0]["model"] == "smollm2-base"  # the first stage starts from the base ...
    assert any(stage["mode"] == "unified" for stage in stages)  # ... and GRIT's unified objective trained it
    assert json.loads(files["adapter_config.json"].read_text())["base_model_name_or_path"] == "smollm2-base"
    assert {"stsb", "mmlu"} <= {row["task"] for row in json.loads(files["eval.json"].read_text())}


def test_the_default_is_the_adapter_merged_and_cached(default_model):
    from gritkit.loading import merged_default_dir

    texts = ["The cat sits on the mat.", "Stock markets fell sharply today."]
    assert (merged_default_dir() / "model.safetensors").is_file()  # the default loads from here
    through_peft = GritLM.from_pretrained(SHIPPED_ADAPTER_DIR)  # adapter dir -> peft merge in memory
    np.testing.assert_allclose(default_model.encode(texts), through_peft.encode(texts), atol=1e-5)
    shipped = json.loads((SHIPPED_ADAPTER_DIR / "generation_config.json").read_text())
    assert default_model.default_penalties == through_peft.default_penalties == shipped  # both ways keep it


@pytest.mark.needs_data
def test_the_default_embeds_far_better_than_the_base(default_model, base_model):
    default = run_task(default_model, "stsb", limit=STS_LIMIT).value
    base = run_task(base_model, "stsb", limit=STS_LIMIT).value
    assert default >= DEFAULT_MINIMUM and default - base >= MINIMUM_GAIN_OVER_BASE, (default, base)
    shipped = next(row for row in json.loads((SHIPPED_ADAPTER_DIR / "eval.json").read_text()) if row["task"] == "stsb")
    assert default == pytest.approx(shipped["value"], abs=0.01)  # the shipped eval.json is what loads


def test_the_default_still_chats_like_the_base(default_model, base_model):
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    assert "paris" in default_model.generate(prompt, max_new_tokens=12).lower()
    assert "paris" in base_model.generate(prompt, max_new_tokens=12).lower()
