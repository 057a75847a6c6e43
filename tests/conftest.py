"""Shared fixtures: the real default model (integration) and tiny random models per architecture."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread for the tests and the servers/CLIs they start: on 2 cores shared with those
# subprocesses, a second spinning thread makes small matmuls many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from gritkit import GritLM  # noqa: E402
from gritkit.paths import data_dir  # noqa: E402

REQUIRE_DATA = "GRITKIT_REQUIRE_DATA"


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_data: reads the shared data sets (../shared/data or $GRITKIT_DATA); "
                                       f"skipped when they are absent, an error when {REQUIRE_DATA}=1 (CI)")


def pytest_collection_modifyitems(config, items):
    """Without the data sets, tests marked ``needs_data`` are skipped with the reason; CI must not skip."""
    needing = [item for item in items if item.get_closest_marker("needs_data")]
    folder = data_dir()
    if not needing or (folder.is_dir() and any(folder.iterdir())):
        return
    if os.environ.get(REQUIRE_DATA) == "1":
        raise pytest.UsageError(f"{REQUIRE_DATA}=1 but the shared data sets are not at {folder} "
                                f"({len(needing)} tests need them); set GRITKIT_DATA")
    skip = pytest.mark.skip(reason=f"needs the shared data sets, not found at {folder} (set GRITKIT_DATA)")
    for item in needing:
        item.add_marker(skip)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Tiny randomly initialised configs, built in code; they share the default model's tokenizer.
TINY_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, vocab_size=49152)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": 8}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 16}),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16}),
    "phi3": ("Phi3Config", {"pad_token_id": 2}),
}
ARCHITECTURES = list(TINY_CONFIGS)


@pytest.fixture(scope="session")
def default_model() -> GritLM:
    """The real embedded default (SmolLM2-135M-Instruct), loaded once per test session."""
    return GritLM.from_pretrained()


@pytest.fixture(scope="session")
def tokenizer(default_model):
    return default_model.tokenizer


def make_tiny_model(architecture: str, tokenizer, **kwargs) -> GritLM:
    """A randomly initialised tiny decoder of ``architecture`` wrapped as a GritLM (fp32, CPU)."""
    import transformers

    config_name, extra = TINY_CONFIGS[architecture]
    config = getattr(transformers, config_name)(**{**TINY_COMMON, **extra})
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return GritLM(model, tokenizer, name=f"tiny-{architecture}", **kwargs)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """Factory fixture: ``tiny_model("llama")`` builds a tiny random model of that architecture."""
    return lambda architecture="llama", **kwargs: make_tiny_model(architecture, tokenizer, **kwargs)
