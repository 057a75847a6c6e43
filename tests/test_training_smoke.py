"""Smoke training of the real default model (LoRA, CPU): the loss on a fixed batch goes down."""

from __future__ import annotations

import json

import pytest

from gritkit import GritLM
from gritkit.training import TrainingConfig, train


@pytest.mark.slow
def test_default_model_lora_training_lowers_the_loss_and_saves_a_loadable_adapter(tmp_path):
    pairs = [("How do I reset my password?", "Open settings and choose 'reset password'."),
             ("What is the capital of France?", "Paris is the capital of France."),
             ("How many legs does a spider have?", "Spiders have eight legs."),
             ("When did World War II end?", "The Second World War ended in 1945.")]
    with open(tmp_path / "emb.jsonl", "w") as file:  # exactly one batch: every step sees the same examples
        for query, answer in pairs:
            file.write(json.dumps({"query": query, "positive": answer, "query_instruction": "Retrieve the answer"}) + "\n")
    with open(tmp_path / "gen.jsonl", "w") as file:
        for query, answer in pairs[:2]:
            file.write(json.dumps({"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]}) + "\n")
    config = TrainingConfig(model="default", embedding_data=[str(tmp_path / "emb.jsonl")],
                            generative_data=[str(tmp_path / "gen.jsonl")], max_steps=4, output_dir=str(tmp_path / "run"),
                            embedding_batch_size=4, num_negatives=0, generative_batch_size=2, learning_rate=2e-3,
                            warmup_ratio=0.0, lr_scheduler="constant", lora_dropout=0.0, checkpoint_every=0)
    history = train(config)
    print([(row["loss_embedding"], row["loss_generative"]) for row in history])
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["loss_generative"] < history[0]["loss_generative"]
    assert history[-1]["loss_embedding"] < history[0]["loss_embedding"]
    adapter = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "smollm2-base"
    trained = GritLM.from_pretrained(tmp_path / "run")
    assert trained.encode(pairs[0][0]).shape == (576,)
