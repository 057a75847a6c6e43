"""GRIT training: data validation, batch order, losses, GradCache equivalence, resume, output, CLI."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from gritkit import GritLM
from gritkit.cli import app
from gritkit.results import Record, save_records
from gritkit.paths import data_dir
from gritkit.training import (DataError, TrainingConfig, cosent_loss, gradcache_backward, info_nce_loss, next_token_loss,
                              train)
from gritkit.training.data import (IGNORE_INDEX, BatchPlan, GenerativeExample, read_embedding_data,
                                   read_generative_data, tokenize_generative)
from gritkit.training.gradcache import split_batch

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def tiny_dir(tiny_model, tmp_path_factory) -> Path:
    """A tiny llama with attention dropout, saved like any local model dir."""
    grit = tiny_model("llama")
    grit.model.config.attention_dropout = 0.1
    path = tmp_path_factory.mktemp("tiny") / "base"
    grit.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    cats = [{"query": f"question {i} about cats", "positive": f"answer {i} about cats", "negatives": [f"dogs {i}"],
             "query_instruction": "Retrieve an answer"} for i in range(8)]
    cars = [{"query": ["Find the car part", f"part {i}"], "pos": [f"car part number {i}"], "neg": []} for i in range(8)]
    chats = [{"messages": [{"role": "user", "content": f"count to {i}"}, {"role": "assistant", "content": f"1 to {i}"}]}
             for i in range(6)] + [{"prompt": "Say hi", "completion": "Hi!"}, {"text": "plain language modelling"}]
    return {"cats": write_jsonl(folder / "cats.jsonl", cats), "cars": write_jsonl(folder / "cars.jsonl", cars),
            "gen": write_jsonl(folder / "gen.jsonl", chats)}


def tiny_config(tiny_dir: Path, data: dict, output_dir: Path, **overrides) -> TrainingConfig:
    return TrainingConfig(model=str(tiny_dir), embedding_data=[str(data["cats"]), str(data["cars"])],
                          generative_data=[str(data["gen"])], max_steps=4, output_dir=str(output_dir),
                          embedding_batch_size=4, generative_batch_size=2, learning_rate=1e-3, lora_dropout=0.1,
                          checkpoint_every=2, keep_checkpoints=0, warmup_ratio=0.0).replace(**overrides)


# ---------------------------------------------------------------- data

def test_both_embedding_layouts_are_read_with_instructions_and_sources(data):
    by_source = read_embedding_data([data["cats"], data["cars"]])
    assert sorted(by_source) == ["cars", "cats"]
    cat = by_source["cats"][0]
    assert cat.query == ("Retrieve an answer", "question 0 about cats")
    assert cat.positives == [("", "answer 0 about cats")] and cat.negatives == [("", "dogs 0")]
    assert by_source["cars"][3].query == ("Find the car part", "part 3")


def test_generative_formats_become_chat_or_text(data):
    examples = read_generative_data([data["gen"]])
    assert examples[6].messages == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    assert examples[7] == GenerativeExample(text="plain language modelling")


@pytest.mark.parametrize("row, message", [
    ('{"query": "q", "pos": ["p"]', "Expecting"),                     # broken JSON
    ({"query": "q"}, "missing 'pos'"),
    ({"query": "", "positive": "p"}, "query is empty"),
    ({"query": "q", "pos": []}, "every query needs a positive"),
    ({"query": "q", "positive": "p", "negatives": [3]}, "negatives[0] must be a string"),
])
def test_malformed_embedding_line_is_reported_with_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "emb.jsonl", [{"query": "fine", "positive": "ok"}, row])
    with pytest.raises(DataError, match=rf"emb.jsonl:2: .*{re.escape(message)}"):
        read_embedding_data([path])


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0] must be"),
    ({"prompt": "p"}, "'prompt' and 'completion'"),
    ({"foo": 1}, "expected 'messages'"),
])
def test_malformed_generative_line_is_reported(tmp_path, row, message):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"text": "ok"}, {"text": "ok"}, row])
    with pytest.raises(DataError, match=rf"gen.jsonl:3: {re.escape(message)}"):
        read_generative_data([path])


def test_assistant_turns_only_are_labelled_and_prompts_match_generate(default_model):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Italy?"},
                {"role": "assistant", "content": "Rome."}]
    ids, labels = tokenize_generative(default_model, GenerativeExample(messages=messages), max_length=512)
    prompt = default_model.prompt_ids(messages[:2])  # what generate() sees before the first reply
    assert ids[:len(prompt)] == prompt and all(label == IGNORE_INDEX for label in labels[:len(prompt)])
    trained = default_model.tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert "Paris." in trained and "Rome." in trained
    assert "France" not in trained and "Italy" not in trained and "brief" not in trained
    second_prompt = default_model.prompt_ids(messages[:4])
    assert ids[:len(second_prompt)] == second_prompt


def test_over_long_prompt_is_cut_so_the_reply_is_still_trained(default_model):
    example = GenerativeExample(messages=[{"role": "user", "content": "word " * 300},
                                          {"role": "assistant", "content": "Short reply."}])
    ids, labels = tokenize_generative(default_model, example, max_length=32)
    assert len(ids) == 32
    assert "Short reply." in default_model.tokenizer.decode([i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_batch_plan_draws_each_batch_from_one_source_and_is_deterministic():
    plan = BatchPlan({"a": 10, "b": 7, "tiny": 2}, batch_size=3, seed=1)
    assert plan.skipped == ["tiny"] and plan.batches_per_epoch == 3 + 2
    epoch = [plan.batch(step) for step in range(plan.batches_per_epoch)]
    for source in ("a", "b"):  # within an epoch no example repeats
        seen = [i for name, batch in epoch if name == source for i in batch]
        assert len(seen) == len(set(seen))
    assert [BatchPlan({"a": 10, "b": 7}, 3, seed=1).batch(s) for s in range(12)] == [plan.batch(s) for s in range(12)]
    assert [BatchPlan({"a": 10, "b": 7}, 3, seed=2).batch(s) for s in range(12)] != [plan.batch(s) for s in range(12)]


# ---------------------------------------------------------------- losses

def test_info_nce_uses_every_passage_as_negative():
    torch.manual_seed(0)
    queries, passages = torch.randn(3, 8), torch.randn(6, 8)  # 2 passages (positive, hard negative) per query
    loss, scores = info_nce_loss(queries, passages, temperature=0.05)
    assert scores.shape == (3, 6)
    cosine = torch.nn.functional.cosine_similarity(queries[:, None], passages[None], dim=-1) / 0.05
    expected = -(cosine[torch.arange(3), torch.arange(3) * 2] - cosine.logsumexp(1)).mean()
    torch.testing.assert_close(loss, expected)


def test_next_token_loss_types_and_chunking():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5], [IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
    token_mean = per_token.sum() / 4  # 3 + 1 trained tokens
    sample_mean = (per_token[0].sum() / 3 + per_token[1].sum() / 1) / 2
    torch.testing.assert_close(next_token_loss(logits, labels, loss_type="mixed"), token_mean)
    torch.testing.assert_close(next_token_loss(logits, labels, loss_type="sample"), sample_mean)
    chunked = sum(next_token_loss(logits[i:i + 1], labels[i:i + 1], loss_type=kind, num_tokens=4, num_samples=2)
                  for i in range(2) for kind in ["mixed"])
    torch.testing.assert_close(chunked, token_mean)


# ---------------------------------------------------------------- GradCache

def _parameter_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _gradcache_inputs(grit: GritLM):
    queries = [f"what is item {i}?" for i in range(6)]
    passages = [text for i in range(6) for text in (f"item {i} is a thing number {i}", f"unrelated text {i * 7}")]
    return (grit.tokenize_for_embedding(queries, "Retrieve the passage"), grit.tokenize_for_embedding(passages))


def _loss_fn(q, p):
    return info_nce_loss(q, p, temperature=0.05)[0]


def test_gradcache_gradients_equal_full_batch_with_dropout(tiny_dir):
    grit = GritLM.from_pretrained(tiny_dir)
    grit.model.train()  # attention dropout 0.1 is active
    query_batch, passage_batch = _gradcache_inputs(grit)
    chunks = [split_batch(query_batch, 4), split_batch(passage_batch, 4)]

    def reference(seed: int) -> dict[str, torch.Tensor]:
        """One graph over the whole batch (embedded chunk by chunk, so dropout draws the same masks)."""
        grit.model.zero_grad()
        torch.manual_seed(seed)
        embeddings = [torch.cat([grit.embed_batch(chunk) for chunk in kind]) for kind in chunks]
        _loss_fn(*embeddings).backward()
        return _parameter_grads(grit.model)

    expected = reference(seed=7)
    grit.model.zero_grad()
    torch.manual_seed(7)
    gradcache_backward(grit.embed_batch, chunks, _loss_fn)
    got = _parameter_grads(grit.model)
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)
    # dropout really is on: other masks give other gradients, so the equality above needs the RNG replay
    other = reference(seed=8)
    assert any(not torch.allclose(other[name], expected[name], rtol=1e-3) for name in expected)


def test_gradcache_without_dropout_equals_one_forward_over_the_batch(tiny_model):
    grit = tiny_model("llama")  # no dropout configured
    grit.model.train()
    query_batch, passage_batch = _gradcache_inputs(grit)
    _loss_fn(grit.embed_batch(query_batch), grit.embed_batch(passage_batch)).backward()
    expected = _parameter_grads(grit.model)
    grit.model.zero_grad()
    gradcache_backward(grit.embed_batch, [split_batch(query_batch, 2), split_batch(passage_batch, 5)], _loss_fn)
    for name, grad in _parameter_grads(grit.model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- training runs (tiny model)

def test_each_step_syncs_gradients_on_its_last_backward_only(tiny_dir, data, tmp_path, monkeypatch):
    """What a DeepSpeed engine sees: accelerate's backward calls ``engine.step()`` whenever
    ``sync_gradients`` is true, so exactly one backward per optimizer step may run with it."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    events: list = []
    real_backward, real_step = Accelerator.backward, AcceleratedOptimizer.step

    def recording_backward(accelerator, loss, **kwargs):
        events.append(accelerator.sync_gradients)
        real_backward(accelerator, loss, **kwargs)

    def recording_step(optimizer, *args, **kwargs):
        events.append("optimizer.step")
        return real_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", recording_backward)
    monkeypatch.setattr(AcceleratedOptimizer, "step", recording_step)
    # GradCache chunks, then one backward per generative row: many backwards per step
    train(tiny_config(tiny_dir, data, tmp_path / "run", max_steps=2, checkpoint_every=0, gradcache_chunk_size=2,
                      generative_chunk_size=1))
    steps, backwards = [], []  # per optimizer step: sync_gradients at each of its backwards
    for event in events:
        if event == "optimizer.step":
            steps, backwards = [*steps, backwards], []
        else:
            backwards.append(event)
    assert len(steps) == 2 and not backwards
    for backwards in steps:
        assert len(backwards) >= 4 and backwards[-1] is True and backwards.count(True) == 1, backwards


def test_merge_lora_saves_the_adapter_merged_into_full_weights(tiny_dir, data, tmp_path):
    adapter = tiny_config(tiny_dir, data, tmp_path / "adapter", max_steps=1, checkpoint_every=0)
    train(adapter)
    train(adapter.replace(output_dir=str(tmp_path / "merged"), merge_lora=True))
    assert (tmp_path / "merged" / "model.safetensors").is_file() and not (tmp_path / "merged" / "adapter_config.json").exists()
    merged, from_adapter = GritLM.from_pretrained(tmp_path / "merged"), GritLM.from_pretrained(tmp_path / "adapter")
    assert not any("lora" in name for name in merged.model.state_dict())
    texts = ["question 1 about cats", "car part number 2"]
    np.testing.assert_allclose(merged.encode(texts), from_adapter.encode(texts), atol=1e-5)
    assert not np.allclose(merged.encode(texts), GritLM.from_pretrained(adapter.model).encode(texts), atol=1e-4)


def test_max_minutes_stops_at_the_budget_and_still_saves_a_loadable_run(tiny_dir, data, tmp_path):
    config = tiny_config(tiny_dir, data, tmp_path / "capped", max_steps=50, max_minutes=1e-9)
    assert train(config) == []  # the budget is spent before the first step
    assert (tmp_path / "capped" / "adapter_config.json").is_file()
    assert GritLM.from_pretrained(tmp_path / "capped").encode(["a"]).shape[0] == 1


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("runs") / "full"
    config = tiny_config(tiny_dir, data, output_dir, gradcache_chunk_size=3)
    return config, train(config)


def test_precision_auto_follows_the_cpu_and_emulated_bf16_warns(uninterrupted, caplog):
    from gritkit.training.trainer import cpu_has_native_bf16, resolve_precision

    config, _ = uninterrupted
    saved = yaml.safe_load((Path(config.output_dir) / "training_config.yaml").read_text())
    assert config.precision == "auto" and saved["precision"] == resolve_precision("auto")  # what ran, not "auto"

    native = torch.cuda.is_available() or cpu_has_native_bf16()
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert resolve_precision("fp32") == "fp32"
    with caplog.at_level("WARNING", logger="gritkit.training.trainer"):
        assert resolve_precision("bf16") == "bf16"
    assert ("emulates bf16" in caplog.text) == (not native)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # the kernel's flags agree (AMX may be listed yet not enabled, so only one way there)
        flags = set(cpuinfo.read_text().split())
        if "avx512_bf16" in flags:
            assert cpu_has_native_bf16()
        if not flags & {"avx512_bf16", "amx_tile", "amx_bf16"}:
            assert not cpu_has_native_bf16()


def test_resume_continues_with_the_same_data_order_and_random_state(tiny_dir, data, uninterrupted, tmp_path):
    config, history = uninterrupted
    # What a run killed during step 3 leaves: the step-2 checkpoint and a half-written step-3 one.
    output_dir = tmp_path / "resumed"
    shutil.copytree(Path(config.output_dir) / "checkpoints" / "step-0000002", output_dir / "checkpoints" / "step-0000002")
    (output_dir / "checkpoints" / ".tmp-step-0000003").mkdir()
    (output_dir / "checkpoints" / ".tmp-step-0000003" / "model.safetensors").write_bytes(b"half")
    resumed = train(config.replace(output_dir=str(output_dir)), resume=True)
    assert [row["step"] for row in resumed] == [3, 4]
    for expected, got in zip(history[2:], resumed):
        for key in ("loss", "loss_embedding", "loss_generative", "lr"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_resuming_a_checkpoint_that_saved_precision_auto_warns_of_no_change(uninterrupted, tmp_path, caplog):
    from gritkit.training.trainer import STATE_FILENAME

    config, _ = uninterrupted
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000002"
    shutil.copytree(Path(config.output_dir) / "checkpoints" / "step-0000002", checkpoint)
    state = json.loads((checkpoint / STATE_FILENAME).read_text())
    state["config"]["precision"] = "auto"  # as runs wrote it before they recorded what ran
    (checkpoint / STATE_FILENAME).write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="gritkit.training.trainer"):
        train(config.replace(output_dir=str(tmp_path / "run")), resume=True)
    assert "changed options" not in caplog.text
    with caplog.at_level("WARNING", logger="gritkit.training.trainer"):
        train(config.replace(output_dir=str(tmp_path / "run"), max_steps=5, learning_rate=2e-3), resume=True)
    assert "changed options ['learning_rate']" in caplog.text


def test_output_dir_loads_with_config_metrics_and_adapter(uninterrupted):
    from gritkit.training.trainer import resolve_precision

    config, history = uninterrupted
    output_dir = Path(config.output_dir)
    saved = TrainingConfig.from_yaml(output_dir / "training_config.yaml")
    assert saved == config.replace(precision=resolve_precision(config.precision))  # "auto" saved as what it became
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == config.model
    logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3, 4] and logged[-1]["loss"] == history[-1]["loss"]
    assert {"loss_embedding", "loss_generative", "examples_per_s", "tokens_per_s", "lr"} <= logged[0].keys()
    assert logged[0]["tokens_per_s"] > logged[0]["examples_per_s"] > 0  # every example has several tokens
    trained, base = GritLM.from_pretrained(output_dir, merge_adapter=False), GritLM.from_pretrained(config.model)
    assert type(trained.model).__name__.startswith("Peft")
    texts = ["question 1 about cats", "car part number 2"]
    assert not np.allclose(trained.encode(texts), base.encode(texts), atol=1e-4)  # the adapter changed the model
    np.testing.assert_allclose(GritLM.from_pretrained(output_dir).encode(texts), trained.encode(texts), atol=1e-5)
    with pytest.raises(FileExistsError, match="previous run"):  # never silently overwritten
        train(config)


def test_export_adapter_ships_a_half_precision_copy_that_loads_alike(uninterrupted, tmp_path):
    from gritkit.training.export import export_adapter

    config, _ = uninterrupted
    results = tmp_path / "eval.json"
    save_records([Record("x", "stsb", "spearman", 0.5, 10, 1.0, "abc")], results)
    destination = tmp_path / "adapters" / "tiny"
    runner = CliRunner()
    cli = runner.invoke(app, ["export-adapter", config.output_dir, str(destination), "--results", str(results)])
    assert cli.exit_code == 0, cli.output
    assert sorted(p.name for p in destination.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                              "eval.json", "metrics.jsonl", "training_config.yaml"]
    assert "| stsb | spearman | 10 | 50.0 |" in (destination / "README.md").read_text()
    full = (Path(config.output_dir) / "adapter_model.safetensors").stat().st_size
    assert (destination / "adapter_model.safetensors").stat().st_size < 0.6 * full
    texts = ["question 1 about cats", "car part number 2"]
    np.testing.assert_allclose(GritLM.from_pretrained(destination).encode(texts),
                               GritLM.from_pretrained(config.output_dir).encode(texts), atol=2e-3)
    assert runner.invoke(app, ["export-adapter", str(tmp_path / "nothing"), str(tmp_path / "out")]).exit_code == 2
    bad = tmp_path / "bad.json"
    for text in ("{}", '[{"task": "stsb"}]'):  # not a list; a row that is not a full record
        bad.write_text(text)
        failed = runner.invoke(app, ["export-adapter", config.output_dir, str(destination), "--results", str(bad)])
        assert failed.exit_code == 2 and "bad.json" in failed.output
    assert (destination / "eval.json").is_file()  # a failed export keeps the previous one
    run = Path(shutil.copytree(config.output_dir, tmp_path / "run"))
    (run / "generation_config.json").write_text('{"frequency_penalty": 0.5}')  # decoding defaults travel along
    exported = export_adapter(run, tmp_path / "with_defaults")
    assert GritLM.from_pretrained(exported).default_penalties == {"frequency_penalty": 0.5}
    assert "`frequency_penalty` 0.5" in (exported / "README.md").read_text()


def test_a_continued_run_keeps_its_start_models_decoding_defaults(tiny_dir, data, uninterrupted, tmp_path):
    first, _ = uninterrupted
    start = Path(shutil.copytree(first.output_dir, tmp_path / "start"))
    (start / "generation_config.json").write_text('{"frequency_penalty": 0.5}')
    config = tiny_config(tiny_dir, data, tmp_path / "continued", model=str(start), mode="generative",
                         embedding_data=[], max_steps=1, checkpoint_every=0)
    train(config)
    assert GritLM.from_pretrained(config.output_dir).default_penalties["frequency_penalty"] == 0.5
    plain = tiny_config(tiny_dir, data, tmp_path / "plain", model=first.output_dir, mode="generative",
                        embedding_data=[], max_steps=1, checkpoint_every=0)
    train(plain)  # no defaults to carry: no file
    assert not (Path(plain.output_dir) / "generation_config.json").exists()


def test_export_adapter_records_every_stage_of_a_continued_run(tiny_dir, data, uninterrupted, tmp_path):
    from gritkit.training.export import export_adapter

    first, _ = uninterrupted
    second = tiny_config(tiny_dir, data, tmp_path / "stage2", model=first.output_dir, mode="generative",
                         embedding_data=[], max_steps=1, checkpoint_every=0)
    train(second)
    destination = export_adapter(second.output_dir, tmp_path / "shipped")
    stages = yaml.safe_load((destination / "training_stages.yaml").read_text())
    assert [stage["run"] for stage in stages] == [first.output_dir, second.output_dir]
    assert stages[0]["mode"] == "unified" and stages[1]["mode"] == "generative"
    assert stages[1]["model"] == first.output_dir and stages[0]["model"] == str(tiny_dir)
    assert "Trained in 2 stages" in (destination / "README.md").read_text()
    third = tiny_config(tiny_dir, data, tmp_path / "stage3", model=str(destination), mode="generative",
                        embedding_data=[], max_steps=1, checkpoint_every=0)
    train(third)  # continues the exported adapter: its recorded stages come first
    stages = yaml.safe_load((export_adapter(third.output_dir, tmp_path / "shipped3") / "training_stages.yaml").read_text())
    assert [stage["run"] for stage in stages] == [first.output_dir, second.output_dir, third.output_dir]
    assert stages[2]["model"] == str(destination)


def lora_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """Every adapted layer's ΔW = scaling · B · A, read from an adapter folder's files."""
    from safetensors.torch import load_file

    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    scaling = adapter_config["lora_alpha"] / adapter_config["r"]
    weights = load_file(folder / "adapter_model.safetensors")
    return {key: scaling * weights[key.replace("lora_A", "lora_B")].float() @ tensor.float()
            for key, tensor in weights.items() if "lora_A" in key}


def test_extrapolate_adapter_moves_past_the_later_stage_along_the_step_between_them(tiny_dir, data, uninterrupted,
                                                                                      tmp_path):
    from gritkit.training.export import export_adapter
    from gritkit.training.extrapolate import extrapolate_adapter

    first, _ = uninterrupted
    second = tiny_config(tiny_dir, data, tmp_path / "stage2", model=first.output_dir, max_steps=2, checkpoint_every=0)
    train(second)
    earlier, later = lora_deltas(Path(first.output_dir)), lora_deltas(Path(second.output_dir))
    assert any(not torch.allclose(later[key], earlier[key]) for key in later)
    cat = extrapolate_adapter(second.output_dir, first.output_dir, tmp_path / "cat", weight=0.5, combination="cat")
    rank = json.loads((Path(second.output_dir) / "adapter_config.json").read_text())["r"]
    assert json.loads((cat / "adapter_config.json").read_text())["r"] == 2 * rank
    svd = extrapolate_adapter(second.output_dir, first.output_dir, tmp_path / "svd", weight=0.5, rank=2 * rank)
    for folder in (cat, svd):  # both exact here: the sum has rank <= 2r
        for key, delta in lora_deltas(folder).items():
            torch.testing.assert_close(delta, 1.5 * later[key] - 0.5 * earlier[key], atol=1e-5, rtol=1e-4)
    texts = ["question 1 about cats", "car part number 2"]
    same = extrapolate_adapter(second.output_dir, first.output_dir, tmp_path / "same", weight=0.0)
    np.testing.assert_allclose(GritLM.from_pretrained(same).encode(texts),
                               GritLM.from_pretrained(second.output_dir).encode(texts), atol=1e-5)
    stages = yaml.safe_load((export_adapter(svd, tmp_path / "shipped") / "training_stages.yaml").read_text())
    assert [stage["run"] for stage in stages] == [first.output_dir, second.output_dir, str(svd)]
    assert stages[2]["extrapolate_from"] == first.output_dir and stages[2]["weight"] == 0.5
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "Made in 3 stages, each continuing the one before (1 of them by `gritkit extrapolate-adapter`" in card
    assert "metrics.jsonl" not in card  # no loss log: nothing was trained in the last stage


def test_extrapolate_adapter_command_reports_bad_input(uninterrupted, tmp_path):
    first, _ = uninterrupted
    runner = CliRunner()
    ok = runner.invoke(app, ["extrapolate-adapter", first.output_dir, str(tmp_path / "out"), "--from", first.output_dir])
    assert ok.exit_code == 0, ok.output
    bad_calls = [([str(tmp_path / "none"), "--from", first.output_dir], "holds no PEFT adapter"),
                 ([first.output_dir, "--from", first.output_dir, "--combination", "ties"], "combination")]
    for args, message in bad_calls:
        failed = runner.invoke(app, ["extrapolate-adapter", args[0], str(tmp_path / "bad"), *args[1:]])
        assert failed.exit_code == 2 and message in failed.output, failed.output
    assert not (tmp_path / "bad").exists()


def test_embedding_only_full_finetuning_saves_a_model_dir(tiny_dir, data, tmp_path):
    config = tiny_config(tiny_dir, data, tmp_path / "emb", mode="embedding", generative_data=[], lora=False,
                         max_steps=2, checkpoint_every=0, gradient_checkpointing=True)
    history = train(config)
    assert all("loss_generative" not in row for row in history)
    assert (tmp_path / "emb" / "config.json").is_file() and not (tmp_path / "emb" / "checkpoints").exists()
    assert GritLM.from_pretrained(tmp_path / "emb").encode("a text").shape == (64,)


def test_malformed_data_stops_the_cli_before_anything_is_written(tiny_dir, data, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "positive": "p"}, {"query": "q", "positive": "p"},
                                               {"query": "q", "positive": 5}])
    output_dir = tmp_path / "never"
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_dir), "--embedding-data", str(bad),
                                      "--generative-data", str(data["gen"]), "--output-dir", str(output_dir)])
    assert result.exit_code == 2
    assert f"{bad}:3: positive must be a string or a list, got 5" in result.output
    assert not output_dir.exists()


def test_cli_flags_override_the_yaml(tiny_dir, data, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"model": str(tiny_dir), "mode": "generative", "generative_data": [str(data["gen"])],
                                           "max_steps": 50, "output_dir": str(tmp_path / "out")}))
    result = CliRunner().invoke(app, ["train", str(config_path), "--max-steps", "1", "--no-lora", "--checkpoint-every", "0"])
    assert result.exit_code == 0, result.output
    saved = TrainingConfig.from_yaml(tmp_path / "out" / "training_config.yaml")
    assert (saved.max_steps, saved.lora, saved.mode) == (1, False, "generative")
    result = CliRunner().invoke(app, ["train", str(config_path), "--max-stepz", "1"])
    assert result.exit_code == 2 and "unknown option --max-stepz" in result.output


def test_example_recipe_documents_every_option_with_its_default():
    recipe = yaml.safe_load((REPO / "recipes" / "example.yaml").read_text())
    defaults = TrainingConfig().to_dict()
    assert list(recipe) == list(defaults)
    assert {k: v for k, v in recipe.items() if not k.endswith("_data")} == \
        {k: v for k, v in defaults.items() if not k.endswith("_data")}


# ---------------------------------------------------------------- data build

@pytest.mark.needs_data
def test_data_build_uses_train_splits_only(tmp_path):
    from gritkit.training.build import build_training_mix

    counts = build_training_mix(tmp_path, sources=["wikiqa", "banking77", "gsm8k"], max_per_source=None)
    assert counts["wikiqa"] > 800 and counts["gsm8k"] > 7400
    by_source = read_embedding_data([tmp_path / "embedding"])
    assert sorted(by_source) == ["banking77", "wikiqa"]
    wikiqa = by_source["wikiqa"]
    assert all(e.query[0] == wikiqa[0].query[0] != "" for e in wikiqa)  # one instruction per source
    assert sum(bool(e.negatives) for e in wikiqa) > 500  # wrong sentences kept as hard negatives
    test_questions = {json.loads(line)["question"].strip() for line in (data_dir() / "wikiqa" / "test.jsonl").open()}
    assert not test_questions & {e.query[1] for e in wikiqa}
    banking_test = {row["text"].strip() for row in csv.DictReader((data_dir() / "banking77" / "test.csv").open())}
    assert not banking_test & {e.query[1] for e in by_source["banking77"]}
    assert all(e.group for e in by_source["banking77"]) and not any(e.group for e in by_source["wikiqa"])
    gsm8k_test = {json.loads(line)["question"].strip() for line in (data_dir() / "gsm8k" / "test.jsonl").open()}
    generative = read_generative_data([tmp_path / "generative"])
    assert not gsm8k_test & {e.messages[0]["content"] for e in generative}
    assert "<<" not in generative[0].messages[1]["content"]


def test_data_build_v2_sources_symmetric_instructions_and_rag_rows(tmp_path):
    from gritkit.training.build import build_training_mix
    from gritkit.training.data import read_rag_data

    counts = build_training_mix(tmp_path, sources=["nli", "stsb", "qqp", "rag-tydiqa"], max_per_source=400)
    assert counts["nli"] == counts["stsb"] == counts["rag-tydiqa"] == 400 and counts["qqp"] > 50
    by_source = read_embedding_data([tmp_path / "embedding"])
    for name in ("nli", "stsb", "qqp"):
        instructed = [e.query[0] == e.positives[0][0] != "" for e in by_source[name]]
        plain = [e.query[0] == e.positives[0][0] == "" for e in by_source[name]]
        assert all(a or b for a, b in zip(instructed, plain))  # both sides alike, symmetric
        assert 0.3 < sum(plain) / len(plain) < 0.7  # about half without an instruction
    assert all(e.negatives for e in by_source["nli"])  # the contradiction is the hard negative
    rag = read_rag_data([tmp_path / "rag"])
    assert all(example.answer in example.passages[0] and len(example.passages) == 2 for example in rag)
    dev = json.loads((data_dir() / "tydiqa_goldp" / "dev" / "tydiqa.goldp.en.dev.json").read_text())
    dev_questions = {qa["question"].strip() for a in dev["data"] for p in a["paragraphs"] for qa in p["qas"]}
    assert not dev_questions & {example.question for example in rag}


def squad_dev_sentences() -> set[str]:
    """squad_v1_dev's longer sentences: a RAG source that holds one trains on the SQuAD evaluation."""
    squad = json.loads((data_dir() / "squad_v1_dev" / "dev-v1.1.json").read_text())
    return {s.strip() for a in squad["data"] for p in a["paragraphs"] for s in p["context"].split(". ") if len(s) > 60}


# unique questions in t0_train_50k's templates: AdversarialQA 600, Quoref 200 (its ten QA templates share them)
@pytest.mark.parametrize(("source", "at_least"), [("adversarialqa", 500), ("quoref", 190)])
def test_extractive_qa_rag_rows_are_parsed_from_t0_and_kept_apart_from_squad_dev(tmp_path, source, at_least):
    from gritkit.training.build import build_training_mix
    from gritkit.training.data import read_rag_data

    counts = build_training_mix(tmp_path, sources=[f"rag-{source}"])
    rag = read_rag_data([tmp_path / "rag" / f"{source}.jsonl"])
    assert counts[f"rag-{source}"] == len(rag) > at_least
    assert all(e.answer in e.passages[0] and len(e.passages) == 2 for e in rag)
    assert all(e.passages[0] != e.passages[1] for e in rag)
    template_words = ("Context:", "using the article:", "based on the context below", "an answer for the question",
                      "from the following article", "\n")
    assert not any(e.question.startswith(("Question:", '"')) or any(w in e.question for w in template_words) for e in rag)
    if source == "quoref":  # opt-in: a build that names no source is what it was before Quoref came
        everything = build_training_mix(tmp_path / "all", max_per_source=1)
        assert "rag-adversarialqa" in everything and "rag-quoref" not in everything
    assert not squad_dev_sentences() & {s.strip() for e in rag for s in e.passages[0].split(". ")}


def test_reading_rag_rows_copy_their_answer_from_one_place_of_the_gold_passage(tmp_path):
    from gritkit.training.build import build_training_mix
    from gritkit.training.data import read_rag_data

    assert "rag-reading" not in build_training_mix(tmp_path / "all", max_per_source=1)  # opt-in
    counts = build_training_mix(tmp_path, sources=["rag-reading"], max_per_source=400)
    rag = read_rag_data([tmp_path / "rag" / "reading.jsonl"])
    assert counts["rag-reading"] == len(rag) == 400
    kinds = Counter()
    for e in rag:
        phrase = re.fullmatch(r'(?:In the passage, which words come right after|Quote the sentence of the passage that contains) '
                              r'"(.+)"[?.]', e.question)[1]
        gold, distractor = e.passages
        assert len(phrase.split()) == 3 and gold.count(phrase) == 1 and phrase not in distractor
        if e.question.startswith("Quote the sentence"):
            kinds["quote"] += 1
            assert phrase in e.answer and e.answer in gold and e.answer[-1] in ".!?"
        else:
            kinds["next"] += 1
            assert f"{phrase} {e.answer}" in gold and 1 <= len(e.answer.split()) <= 4
    assert min(kinds.values()) > 150
    assert not squad_dev_sentences() & {s.strip() for e in rag for s in e.passages[0].split(". ")}


def test_info_nce_groups_drop_same_group_positives_from_the_negatives():
    torch.manual_seed(0)
    queries, passages = torch.randn(4, 8), torch.randn(8, 8)  # two passages (positive, negative) per query
    groups = torch.tensor([7, 7, 3, 5])  # queries 0 and 1 share a group (say, one banking intent)
    loss, scores = info_nce_loss(queries, passages, temperature=0.05, groups=groups)
    assert torch.isinf(scores[0, 2]) and torch.isinf(scores[1, 0])  # each other's positives are masked
    assert torch.isfinite(scores[0, 3]) and torch.isfinite(scores[0, 0]) and torch.isfinite(scores[2]).all()
    # the same as InfoNCE with those columns left out, row by row
    full = F.normalize(queries, dim=-1) @ F.normalize(passages, dim=-1).T / 0.05
    keep = [[c for c in range(8) if (q, c) not in {(0, 2), (1, 0)}] for q in range(4)]
    expected = torch.stack([F.cross_entropy(full[q, keep[q]][None], torch.tensor([keep[q].index(2 * q)]))
                            for q in range(4)]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert info_nce_loss(queries, passages, temperature=0.05)[0].item() > loss.item()


def test_embedding_rows_may_carry_a_string_group(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q", "positive": "p", "group": "card_lost"}) + "\n")
    assert read_embedding_data([path])["pairs"][0].group == "card_lost"
    path.write_text(json.dumps({"query": "q", "positive": "p", "group": 3}) + "\n")
    with pytest.raises(DataError, match="group"):
        read_embedding_data([path])


# ---------------------------------------------------------------- graded pairs (CoSENT)

def test_cosent_loss_is_the_log_sum_over_every_wrongly_ordered_pair():
    torch.manual_seed(0)
    first, second = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8)
    scores = torch.tensor([4.5, 1.0, 3.0, 1.0, 0.2])
    loss, similarities = cosent_loss(first, second, scores, scale=20.0)
    cosines = F.cosine_similarity(first, second, dim=-1) * 20.0
    terms = [cosines[j] - cosines[i] for i in range(5) for j in range(5) if scores[i] > scores[j]]
    assert len(terms) == 9  # ties (the two 1.0s) give no term
    expected = torch.log(1 + torch.exp(torch.stack(terms)).sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(similarities.diagonal(), cosines / 20.0)
    loss.backward()
    assert first.grad.abs().sum() > 0
    # cosines in the order of the scores, far apart: almost no loss; in the reverse order: a large one
    angles = torch.tensor([0.0, 0.8, 1.6, 2.4, 3.1])
    agreeing, reference = torch.stack([angles.cos(), angles.sin()], 1), torch.tensor([[1.0, 0.0]]).expand(5, 2)
    low, _ = cosent_loss(agreeing, reference, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]), scale=20.0)
    high, _ = cosent_loss(agreeing, reference, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), scale=20.0)
    assert low.item() < 0.05 < 5 < high.item()


def test_a_source_is_either_all_scored_or_unscored(tmp_path):
    path = write_jsonl(tmp_path / "sts.jsonl", [{"query": "a", "positive": "b", "score": 4.2},
                                                 {"query": "c", "positive": "d", "score": 1}])
    assert [e.score for e in read_embedding_data([path])["sts"]] == [4.2, 1]
    write_jsonl(path, [{"query": "a", "positive": "b", "score": 4.2}, {"query": "c", "positive": "d"}])
    with pytest.raises(DataError, match="1 of 2 rows have a 'score'"):
        read_embedding_data([path])
    write_jsonl(path, [{"query": "a", "positive": "b", "score": "high"}])
    with pytest.raises(DataError, match=r"sts.jsonl:1: 'score' must be a number"):
        read_embedding_data([path])


def test_scored_source_trains_with_cosent_and_gradcache_gives_the_same_run(tiny_model, data, tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "base")  # no dropout, so both runs draw nothing at random
    sts = write_jsonl(tmp_path / "sts.jsonl", [{"query": f"sentence {i} about cats", "positive": f"text {i % 3} on dogs",
                                                "score": float(i % 5)} for i in range(8)])
    runs = [train(tiny_config(tmp_path / "base", data, tmp_path / f"run{chunk}", embedding_data=[str(sts)], lora_dropout=0.0,
                              max_steps=2, checkpoint_every=0, gradcache_chunk_size=chunk)) for chunk in (0, 3)]
    for plain, chunked in zip(*runs):
        assert plain["contrastive_passages"] == 4  # the positive only: graded pairs have no negatives
        assert plain["loss_embedding"] == pytest.approx(chunked["loss_embedding"], rel=1e-4)
    assert all(row["loss_embedding"] > 0 for row in runs[0])


@pytest.mark.needs_data
def test_data_build_stsb_scored_keeps_every_train_pair_with_its_score(tmp_path):
    from gritkit.training.build import build_training_mix

    counts = build_training_mix(tmp_path, sources=["stsb_scored"])
    rows = read_embedding_data([tmp_path / "embedding"])["stsb_scored"]
    assert counts["stsb_scored"] == len(rows) > 5000
    assert {e.score for e in rows} >= {0.0, 5.0} and all(0 <= e.score <= 5 for e in rows)
    assert 0.3 < sum(e.query[0] == "" for e in rows) / len(rows) < 0.7  # half without an instruction
    test_pairs = {(r[0], r[1]) for r in csv.reader((data_dir() / "stsb" / "stsb-en-test.csv").open()) if len(r) == 3}
    assert not test_pairs & {(e.query[1], e.positives[0][1]) for e in rows}
