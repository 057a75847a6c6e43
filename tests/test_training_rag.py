"""The cache-aware RAG training stream: it trains exactly what gritkit.rag runs at answer time."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from gritkit.cli import app
from gritkit.rag import RAG, Index
from gritkit.training import TrainingConfig, rag_stream, train
from gritkit.training.data import IGNORE_INDEX, DataError, RagExample, read_rag_data
from gritkit.training.rag_stream import answer_logits, draw, layout, rag_loss, uncached_answer_logits

PASSAGE = "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."
QUESTION = "When was the Eiffel Tower completed?"


@pytest.fixture(scope="module")
def eiffel_index(default_model, tmp_path_factory) -> Index:
    index = Index.open(tmp_path_factory.mktemp("rag") / "index", default_model)
    index.add([{"id": "eiffel", "text": PASSAGE}], cache_kv=True)
    return index


@pytest.mark.parametrize("mode", ["doc", "query", "query_doc", "doc_query"])
def test_training_logits_equal_the_logits_rag_answers_from(default_model, eiffel_index, mode):
    rag = RAG(default_model, eiffel_index)
    first_token = rag.answer(QUESTION, cache=mode, k=1, max_new_tokens=1).text
    inputs = layout(default_model, RagExample(QUESTION, [PASSAGE], "1889"), mode, [PASSAGE], default_model.max_length)
    with torch.no_grad():
        (logits,) = answer_logits(default_model, [inputs])
    assert logits.shape == (len(inputs.answer_ids), default_model.config.vocab_size)
    predicted = default_model.tokenizer.decode([int(logits[0].argmax())], skip_special_tokens=True).strip()
    assert predicted == first_token


def test_gradients_flow_through_the_cached_passage_states(tiny_model):
    grit = tiny_model("llama")
    passage = "zebra quartz lantern"
    inputs = layout(grit, RagExample("What is it?", [passage], "a thing"), "doc", [passage], 64)
    passage_only = set(grit.tokenizer(passage, add_special_tokens=False)["input_ids"])
    passage_only -= set(inputs.prompt_ids) | set(inputs.answer_ids)
    assert passage_only
    loss = rag_loss(answer_logits(grit, [inputs])[0], inputs.answer_ids, "gold")
    (grad,) = torch.autograd.grad(loss, grit.model.get_input_embeddings().weight)
    # these tokens are only ever in the cache: a gradient on their embeddings went through its key/value states
    assert all(grad[token].abs().sum() > 0 for token in passage_only)


def _mixed_batch(grit) -> list:
    """Questions of every mode with 1 to 3 passages of different lengths (so rows and answers are padded)."""
    passages = ["zebra quartz lantern", "The river flows north through three old towns before it meets the sea.",
                "Ada wrote it.", "A short one", "Paris is the capital of France and its largest city by far."]
    examples = [("What is it?", "doc", 1, "a thing"), ("Who wrote it?", "query", 2, "Ada, long ago"),
                ("Where does the river flow?", "query_doc", 3, "north"), ("Capital?", "doc_query", 2, "Paris"),
                ("Which town is old?", "doc", 3, "all three of them")]
    return [layout(grit, RagExample(question, passages[i:i + k], answer), mode, passages[i:i + k], 64)
            for i, (question, mode, k, answer) in enumerate(examples)]


@pytest.mark.parametrize("architecture", ["llama", "qwen3", "mistral"])
def test_a_batch_of_questions_trains_as_one_question_at_a_time(tiny_model, architecture):
    grit = tiny_model(architecture)  # mistral: sliding-window layers, each text runs alone
    batch = _mixed_batch(grit)
    teachers = uncached_answer_logits(grit, batch)
    teachers_alone = [uncached_answer_logits(grit, [inputs])[0] for inputs in batch]
    for batched, alone in zip(teachers, teachers_alone):
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    parameters = list(grit.model.parameters())

    def losses_and_gradients(logits):
        losses = [rag_loss(rows, inputs.answer_ids, "gold+distill", teacher)
                  for rows, inputs, teacher in zip(logits, batch, teachers_alone)]
        return torch.stack(losses).detach(), torch.autograd.grad(sum(losses), parameters)

    batched_losses, batched_gradients = losses_and_gradients(answer_logits(grit, batch))
    alone_losses, alone_gradients = losses_and_gradients([answer_logits(grit, [inputs])[0] for inputs in batch])
    torch.testing.assert_close(batched_losses, alone_losses, atol=1e-5, rtol=1e-5)
    for batched, alone in zip(batched_gradients, alone_gradients):
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_a_rag_batch_leaves_no_reference_cycles(tiny_model):
    # the trainer frees the stream's graph and caches by reference counting alone: a full gc.collect per
    # step would cost ~0.3 s with a real data mix in memory
    grit = tiny_model("llama")
    batch = _mixed_batch(grit)
    gc.collect()
    gc.disable()
    try:
        teachers = uncached_answer_logits(grit, batch)
        loss = sum(rag_loss(rows, inputs.answer_ids, "gold+distill", teacher)
                   for rows, inputs, teacher in zip(answer_logits(grit, batch), batch, teachers))
        loss.backward()
        del loss, teachers
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_distillation_is_zero_when_student_and_teacher_see_the_same_text(tiny_model):
    grit = tiny_model("llama")
    inputs = layout(grit, RagExample("Who?", ["Ada wrote it."], "Ada"), "doc", ["Ada wrote it."], 64)
    (teacher,) = uncached_answer_logits(grit, [inputs])
    assert rag_loss(teacher, inputs.answer_ids, "distill", teacher).item() == pytest.approx(0.0, abs=1e-6)
    (student,) = answer_logits(grit, [inputs])
    both = rag_loss(student, inputs.answer_ids, "gold+distill", teacher)
    assert both > rag_loss(student, inputs.answer_ids, "gold")


@pytest.mark.parametrize("mode", ["doc", "query", "query_doc", "doc_query"])
def test_the_shared_tail_is_the_same_tokens_in_the_cached_and_uncached_runs(tiny_model, mode):
    grit = tiny_model("llama")
    passages = ["Ada wrote it.", "The river flows north."]
    inputs = layout(grit, RagExample("Who wrote it?", passages, "Ada"), mode, passages, 64)
    cached, uncached = inputs.prompt_ids + inputs.answer_ids, inputs.uncached_prompt_ids + inputs.answer_ids
    n = inputs.shared_length
    assert n > len(inputs.answer_ids) and cached[-n:] == uncached[-n:] and cached[-n - 1] != uncached[-n - 1]


@pytest.mark.parametrize("architecture", ["llama", "mistral"])
def test_hidden_states_of_the_shared_tail_are_those_of_each_question_alone(tiny_model, architecture):
    grit = tiny_model(architecture)
    batch = _mixed_batch(grit)
    with torch.no_grad():
        for outputs in (rag_stream.answer_outputs, rag_stream.uncached_answer_outputs):
            batched = outputs(grit, batch, hidden=True).hidden
            for inputs, rows in zip(batch, batched):
                (alone,) = outputs(grit, [inputs], hidden=True).hidden
                assert rows.shape == (grit.config.num_hidden_layers, inputs.shared_length, grit.config.hidden_size)
                torch.testing.assert_close(rows, alone, atol=1e-4, rtol=1e-4)


def test_the_hidden_state_loss_is_zero_on_the_same_text_and_trains_the_cached_run(tiny_model):
    grit = tiny_model("llama")
    inputs = layout(grit, RagExample("Who?", ["Ada wrote it."], "Ada"), "doc", ["Ada wrote it."], 64)
    (teacher,) = rag_stream.uncached_answer_outputs(grit, [inputs], hidden=True).hidden
    assert rag_stream.hidden_loss(teacher, teacher).item() == 0.0
    (student,) = rag_stream.answer_outputs(grit, [inputs], hidden=True).hidden
    loss = rag_stream.hidden_loss(student, teacher)
    assert loss > 0
    (grad,) = torch.autograd.grad(loss, grit.model.get_input_embeddings().weight)
    passage_only = set(grit.tokenizer("Ada wrote it.", add_special_tokens=False)["input_ids"]) - set(
        inputs.prompt_ids + inputs.answer_ids)
    assert passage_only and all(grad[token].abs().sum() > 0 for token in passage_only)


def test_draw_keeps_the_gold_passage_and_is_seeded(tiny_model):
    grit = tiny_model("llama")
    examples = [RagExample(f"q{i}", [f"gold {i}", f"distractor {i}"], f"a{i}") for i in range(4)]
    first = draw(grit, examples, 2, ["doc", "query_doc"], 2, 64, np.random.default_rng(0))
    again = draw(grit, examples, 2, ["doc", "query_doc"], 2, 64, np.random.default_rng(0))
    assert first == again
    texts = [text for _, text in first.segments]
    assert "gold 2" in texts and len(texts) <= 3


def test_malformed_rag_rows_are_reported(tmp_path):
    path = tmp_path / "rag.jsonl"
    path.write_text(json.dumps({"question": "q", "passages": [], "answer": "a"}) + "\n")
    with pytest.raises(DataError, match="rag.jsonl:1: 'passages' must be a non-empty list"):
        read_rag_data([path])


@pytest.mark.parametrize("target,teacher,hidden", [("gold", "live", 0.0), ("distill", "frozen", 0.0),
                                                   ("gold+distill", "frozen", 2.0)])
def test_unified_training_with_the_rag_stream_logs_its_loss(tiny_model, tmp_path, target, teacher, hidden):
    grit = tiny_model("llama")
    base = tmp_path / "base"
    grit.save_pretrained(base)
    rows = {"emb": [{"query": f"q {i}", "positive": f"p {i}"} for i in range(4)],
            "gen": [{"prompt": f"count {i}", "completion": f"{i}"} for i in range(4)],
            "rag": [{"question": f"what is {i}?", "passages": [f"{i} is a number"], "answer": f"{i}"} for i in range(4)]}
    for name, items in rows.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    config = TrainingConfig(model=str(base), embedding_data=[str(tmp_path / "emb.jsonl")],
                            generative_data=[str(tmp_path / "gen.jsonl")], rag_data=[str(tmp_path / "rag.jsonl")],
                            max_steps=2, embedding_batch_size=2, generative_batch_size=2, rag_batch_size=2,
                            rag_target=target, rag_teacher=teacher, rag_hidden_weight=hidden,
                            output_dir=str(tmp_path / "run"), checkpoint_every=0)
    history = train(config)
    assert [row["step"] for row in history] == [1, 2]
    assert all(np.isfinite(row["loss_rag"]) and row["loss_rag"] > 0 for row in history)
    assert (Path(config.output_dir) / "adapter_config.json").is_file()


def test_rag_options_are_checked():
    with pytest.raises(ValueError, match="rag_cache_modes"):
        TrainingConfig(embedding_data=["x"], generative_data=["y"], rag_cache_modes=["none"]).validate()
    with pytest.raises(ValueError, match="rag_target"):
        TrainingConfig(embedding_data=["x"], generative_data=["y"], rag_target="kl").validate()
    with pytest.raises(ValueError, match="rag_teacher"):
        TrainingConfig(embedding_data=["x"], generative_data=["y"], rag_teacher="ema").validate()
    with pytest.raises(ValueError, match="rag_hidden_weight"):
        TrainingConfig(embedding_data=["x"], generative_data=["y"], rag_target="gold", rag_hidden_weight=1.0).validate()


SELF_ROWS = [
    {"question": "When was the Eiffel Tower completed?", "passages": [PASSAGE], "answer": "1889"},
    {"question": "What is the capital of France?", "passages": ["Paris is the capital and largest city of France."],
     "answer": "Paris"},
    {"question": "Who wrote Hamlet?", "passages": ["Hamlet is a tragedy written by William Shakespeare."],
     "answer": "Carthage"},  # a wrong gold span: the model's answer will not contain it
]


def test_self_targets_are_the_models_own_answers_kept_when_correct_and_resume(default_model, tmp_path):
    from gritkit.prompts import rag_prompt
    from gritkit.training.self_targets import finished_counts, uncached_answers, write_self_targets

    source = tmp_path / "rag.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in SELF_ROWS))
    examples = read_rag_data([source])
    batched = uncached_answers(default_model, examples, max_new_tokens=24)
    for example, (answer, finished) in zip(examples, batched):  # one left-padded batch answers as generate does alone
        prompt = rag_prompt(default_model.tokenizer, example.question, example.passages[:1], "none", "doc_first")
        assert answer == default_model.generate(prompt, max_new_tokens=24).strip()
        assert finished  # short answers end their turn inside 24 tokens
    assert not any(finished for _, finished in uncached_answers(default_model, examples[:1], max_new_tokens=1))

    whole = tmp_path / "whole.jsonl"
    assert write_self_targets(default_model, [source], whole, batch_size=2, max_new_tokens=24) == {"rows": 3, "kept": 2}
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [row["gold_answer"] for row in rows] == ["1889", "Paris"]
    assert [row["answer"] for row in rows] == [text for text, _ in batched[:2]]
    assert all(row["gold_answer"] in row["answer"] for row in rows)
    assert read_rag_data([whole])[0].answer == batched[0][0]  # the stream trains on the model's own answer
    # a finished run rerun by its command returns at once: the model (here a missing folder) is never loaded
    rerun = CliRunner().invoke(app, ["data", "self-targets", str(source), "--output", str(whole),
                                     "--model", str(tmp_path / "no-such-model")])
    assert rerun.exit_code == 0, rerun.output
    assert f"wrote {whole}: 2 of 3 questions kept" in rerun.output

    # killed after the first batch, with a half-written line after it: resuming gives the same file
    resumed = tmp_path / "resumed.jsonl"
    write_self_targets(default_model, [source], resumed, batch_size=2, max_new_tokens=24, limit=2)
    assert finished_counts([source], resumed) is None  # one row left
    assert finished_counts([source], resumed, limit=2) == {"rows": 2, "kept": 2}
    with open(resumed, "a") as sink:
        sink.write('{"question": "half')
    write_self_targets(default_model, [source], resumed, batch_size=2, max_new_tokens=24)
    assert resumed.read_text() == whole.read_text()
    unrelated = tmp_path / "notes.jsonl"
    unrelated.write_text("keep me\n")
    with pytest.raises(FileExistsError):  # a file that is not a run to resume is never overwritten
        write_self_targets(default_model, [source], unrelated)
    assert unrelated.read_text() == "keep me\n"


def test_self_targets_drop_answers_that_loop_or_run_out_of_tokens():
    from gritkit.training.self_targets import usable_target

    assert usable_target("It was completed in 1889.", True, "1889")
    assert not usable_target("It was completed in 1889.", False, "1889")  # cut at max_new_tokens
    assert not usable_target("1889\n1889\n1889\n1889", True, "1889")  # a loop, though it contains the span
    assert not usable_target("In 1990.", True, "1889")
    assert usable_target("In 1990.", True, "1889", keep="all")
    assert not usable_target("", True, "1889", keep="all")
    assert usable_target("In 1990.", True, "1889", keep="all", max_answer_words=2)
    assert not usable_target("It was completed in 1889.", True, "1889", max_answer_words=4)


def test_rag_chat_rows_are_the_doc_first_turn_the_target_answered(default_model, tmp_path):
    from gritkit.prompts import rag_prompt
    from gritkit.training.data import read_generative_data, tokenize_generative
    from gritkit.training.self_targets import chat_rows

    source, chat = tmp_path / "rag.jsonl", tmp_path / "chat" / "rag_chat.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in SELF_ROWS[:2]))
    result = CliRunner().invoke(app, ["data", "rag-chat", str(source), "--output", str(chat)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in chat.read_text().splitlines()] == chat_rows(read_rag_data([source]))
    example = read_generative_data([chat])[0]
    ids, labels = tokenize_generative(default_model, example, 1024)
    prompt = rag_prompt(default_model.tokenizer, SELF_ROWS[0]["question"], SELF_ROWS[0]["passages"][:1], "none",
                        "doc_first")
    prompt_ids = default_model.tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[:len(prompt_ids)] == prompt_ids  # the very prompt the self-target was generated after
    trained = default_model.tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained.startswith("1889")  # only the answer is trained


def test_rag_chat_correct_only_drops_wrong_self_targets(tmp_path):
    source, chat = tmp_path / "rag.jsonl", tmp_path / "rag_chat.jsonl"
    rows = [{"question": "When was it completed?", "passages": ["It was completed in 1889."], "answer": answer,
             "gold_answer": "1889"} for answer in ("In 1889.", "In 1990.")]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = CliRunner().invoke(app, ["data", "rag-chat", str(source), "--output", str(chat), "--correct-only"])
    assert result.exit_code == 0 and "1 chat rows" in result.output, result.output
    assert [json.loads(line)["messages"][1]["content"] for line in chat.read_text().splitlines()] == ["In 1889."]


def test_a_frozen_teacher_keeps_the_starting_weights_while_training_moves(tiny_model):
    from gritkit.training.trainer import frozen_copy

    grit = tiny_model("llama")
    teacher = frozen_copy(grit)
    before = rag_stream.uncached_answer_logits(teacher, _mixed_batch(grit))
    with torch.no_grad():
        for parameter in grit.model.parameters():
            parameter.add_(0.1)
    batch = _mixed_batch(grit)
    after = rag_stream.uncached_answer_logits(teacher, batch)
    moved = rag_stream.uncached_answer_logits(grit, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not any(torch.allclose(a, b) for a, b in zip(after, moved))
    assert not any(parameter.requires_grad for parameter in teacher.model.parameters())
