"""`gritkit export gguf`: the file loads back through gritkit (and llama.cpp, where installed)
and gives the source model's embeddings and greedy generations."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch

from gritkit import GritLM
from gritkit.export.gguf import GgufExportError, export_gguf

TEXTS = ["Paris is the capital of France.", "Bananas are yellow and about 18 cm long.", "The storm hit the coast at night."]
INSTRUCTION = "Represent the sentence"
PROMPTS = ["What is the capital of France?", "Name three colours.", "Write one sentence about the sea."]
COSINE = {"f32": 0.9999, "f16": 0.999, "q8_0": 0.99}


def load_exported(path, tmp_path, monkeypatch) -> GritLM:
    """Load a GGUF as a user would, converting into a cache of this test's own."""
    monkeypatch.setenv("GRITKIT_CACHE", str(tmp_path / "cache"))
    return GritLM.from_pretrained(path)


def cosines(source: GritLM, exported: GritLM) -> np.ndarray:
    return (source.encode(TEXTS, instruction=INSTRUCTION) * exported.encode(TEXTS, instruction=INSTRUCTION)).sum(1)


def greedy(model: GritLM, prompt: str) -> str:
    return model.generate([{"role": "user", "content": prompt}], max_new_tokens=24)


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_model, tmp_path_factory):
    """A tiny random Llama (untied output projection) saved as a plain HF directory."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(directory)
    return directory


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_a_tiny_llama_directory_round_trips(tiny_llama_dir, dtype, tmp_path, monkeypatch):
    source = GritLM.from_pretrained(str(tiny_llama_dir), device="cpu")
    path = export_gguf(str(tiny_llama_dir), tmp_path / f"tiny.{dtype}.gguf", dtype=dtype)
    reader = gguf.GGUFReader(path)
    assert "output.weight" in {tensor.name for tensor in reader.tensors}  # untied head is kept
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    exported = load_exported(path, tmp_path, monkeypatch)
    assert cosines(source, exported).min() >= COSINE[dtype]
    if dtype == "f32":  # random weights leave near-ties that half precision may flip
        assert source.prompt_ids([{"role": "user", "content": "Hi 123"}]) == exported.prompt_ids([{"role": "user", "content": "Hi 123"}])
        for prompt in PROMPTS:
            assert greedy(exported, prompt) == greedy(source, prompt)


def test_an_adapter_directory_is_exported_merged(tiny_llama_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    base = GritLM.from_pretrained(str(tiny_llama_dir), device="cpu")
    torch.manual_seed(1)
    peft_model = get_peft_model(GritLM.from_pretrained(str(tiny_llama_dir), device="cpu").model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                       init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(tiny_llama_dir)
    peft_model.save_pretrained(tmp_path / "adapter")
    source = GritLM.from_pretrained(str(tmp_path / "adapter"), device="cpu")
    path = export_gguf(str(tmp_path / "adapter"), tmp_path / "adapter.gguf", dtype="f32")
    exported = load_exported(path, tmp_path, monkeypatch)
    assert cosines(source, exported).min() >= COSINE["f32"]
    assert cosines(base, exported).min() < 0.999  # the adapter's change is in the file


def test_query_and_key_rows_are_in_llama_cpp_rotary_order(tiny_model, tmp_path):
    model = tiny_model("llama")
    path = export_gguf(model, tmp_path / "tiny.gguf", dtype="f32")
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(path).tensors}
    hf_query = model.model.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    written = np.asarray(tensors["blk.0.attn_q.weight"].data)
    head_dim = hf_query.shape[0] // model.config.num_attention_heads
    # llama.cpp pairs rotary dimensions (0, 1), (2, 3), ...; transformers pairs (0, d/2), (1, d/2 + 1), ...
    np.testing.assert_array_equal(written[1], hf_query[head_dim // 2])
    assert not np.array_equal(written, hf_query)


def test_unsupported_models_and_options_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(GgufExportError, match="qwen2"):
        export_gguf(tiny_model("qwen2"), tmp_path / "qwen.gguf")
    with pytest.raises(GgufExportError, match="dtype"):
        export_gguf(tiny_model("llama"), tmp_path / "x.gguf", dtype="q4_0")
    assert not list(tmp_path.iterdir())


def test_the_cli_exports_and_reports_bad_specs(tiny_llama_dir, tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "gritkit", "export", "gguf", *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=300)
    written = run(str(tiny_llama_dir), str(tmp_path / "tiny.gguf"), "--dtype", "q8_0")
    assert written.returncode == 0, written.stderr
    assert gguf.GGUFReader(tmp_path / "tiny.gguf").fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    missing = run("/nonexistent/model", str(tmp_path / "missing.gguf"))
    assert missing.returncode == 2 and "No model at" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "missing.gguf").exists()


# ------------------------------------------------------------ the real default model


@pytest.fixture(scope="module")
def exported_default(tmp_path_factory):
    """The default (adapter merged) exported once per weight type."""
    directory = tmp_path_factory.mktemp("default-gguf")
    return lambda dtype: (directory / f"default.{dtype}.gguf" if (directory / f"default.{dtype}.gguf").exists()
                          else export_gguf("default", directory / f"default.{dtype}.gguf", dtype=dtype))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_the_default_round_trips(default_model, exported_default, dtype, tmp_path, monkeypatch):
    path = exported_default(dtype)
    reader = gguf.GGUFReader(path)
    source = gguf.GGUFReader(default_model_source())
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "tokenizer.ggml.pre"):
        assert reader.fields[key].contents() == source.fields[key].contents()
    exported = load_exported(path, tmp_path, monkeypatch)
    assert cosines(default_model, exported).min() >= COSINE[dtype]
    for prompt in PROMPTS:
        assert greedy(exported, prompt) == greedy(default_model, prompt)


def default_model_source():
    from gritkit.loading import default_gguf_path

    return default_gguf_path()


# ------------------------------------------------------------ llama.cpp reads the same model

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (optional extra: pip install 'gritkit[llamacpp]', builds from source)",
)


@pytest.fixture(scope="module")
def llama_cpp_file(exported_default):
    return str(exported_default("f32"))


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_generates_what_gritkit_generates(default_model, llama_cpp_file):
    from llama_cpp import Llama

    llama_cpp_model = Llama(model_path=llama_cpp_file, n_ctx=512, n_threads=1, verbose=False)
    for prompt in PROMPTS:
        ids = default_model.prompt_ids([{"role": "user", "content": prompt}])
        expected = list(default_model.generate_ids(ids, max_new_tokens=24))
        produced = []
        for token in llama_cpp_model.generate(ids, temp=0.0, top_k=1, reset=True):
            if token == llama_cpp_model.token_eos() or len(produced) == 24:
                break
            produced.append(token)
        assert default_model.tokenizer.decode(produced) == default_model.tokenizer.decode(expected)


@pytest.mark.slow
@needs_llama_cpp
def test_llama_cpp_grit_embeddings_match_gritkit(default_model, llama_cpp_file):
    import llama_cpp

    from gritkit.export.llama_cpp import grit_embedding

    llama_cpp_model = llama_cpp.Llama(model_path=llama_cpp_file, n_ctx=512, n_threads=1, embedding=True,
                                      pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, verbose=False)

    batch = default_model.tokenize_for_embedding(TEXTS, INSTRUCTION)
    expected = default_model.encode(TEXTS, instruction=INSTRUCTION)
    for row, (ids, pooled) in enumerate(zip(batch.input_ids, batch.pooling_mask)):
        length = int(batch.attention_mask[row].sum())
        instruction_length = int(length - pooled.sum())
        vector = grit_embedding(llama_cpp_model, ids[:length].tolist(), instruction_length)
        assert float(vector @ expected[row]) >= 0.99
