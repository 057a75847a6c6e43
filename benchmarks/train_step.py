"""Seconds per training step, per stream, and how many operations each stream dispatches.

    python benchmarks/train_step.py --models tiny default --steps 3 --threads 1

Runs the trainer's own ``TrainingStep`` (embedding stream with GradCache, generative stream and the
cache-aware RAG stream with the GPU recipe's RAG settings: 8 questions, k up to 3 passages of up to
256 tokens, all four cache modes, ``gold+distill``) on real data (TyDi QA English train, GSM8K train)
for a tiny random model and the real default. Per stream: mean wall seconds over ``--steps`` steps
after one warm-up step, and, from one profiled step, the number of leaf ATen operations (on a GPU each
launches at least one kernel, so this is the launch overhead that a small model pays per step) and
of ``aten::_local_scalar_dense`` (``.item()``/``.tolist()``: host-device synchronisations on a GPU).
Run it at two commits (the JSON records which) to compare code paths on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import report  # noqa: E402
from gritkit.training.build import build_training_mix  # noqa: E402
from gritkit.training.config import TrainingConfig  # noqa: E402
from gritkit.training.data import read_embedding_data, read_generative_data, read_rag_data  # noqa: E402
from gritkit.training.trainer import GritTrainingModule, TrainingStep, make_accelerator, load_for_training  # noqa: E402

RECIPE = dict(mode="unified", embedding_batch_size=16, num_negatives=1, gradcache_chunk_size=8, query_max_length=64,
              passage_max_length=128, generative_batch_size=4, generative_max_length=384, rag_batch_size=8,
              rag_cache_modes=["doc", "query", "query_doc", "doc_query"], rag_max_passages=3,
              rag_target="gold+distill", rag_passage_max_length=256, lora=True, lora_dropout=0.0, seed=44,
              precision="fp32", checkpoint_every=0)


def tiny_model_dir(folder: Path) -> str:
    """A randomly initialised 2-layer Llama with the default model's tokenizer, saved as a model directory."""
    import transformers

    from gritkit import GritLM
    from gritkit.loading import load

    _, tokenizer = load(None, dtype=torch.float32, device="cpu")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=2048, vocab_size=len(tokenizer),
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GritLM(transformers.AutoModelForCausalLM.from_config(config), tokenizer).save_pretrained(folder / "tiny")
    return str(folder / "tiny")


def leaf_op_counts(function) -> tuple[int, int]:
    """Leaf ATen operations and ``_local_scalar_dense`` calls dispatched by ``function()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        function()
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    leaves = [e for e in events if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    return len(leaves), sum(e.name == "aten::_local_scalar_dense" for e in events)


def measure(label: str, spec: str, data: Path, steps: int) -> list[dict]:
    config = TrainingConfig(model=spec, embedding_data=[str(data / "embedding")], generative_data=[str(data / "generative")],
                            rag_data=[str(data / "rag")], output_dir=str(data / "unused"), **RECIPE)
    config.validate()
    accelerator = make_accelerator(config)
    grit, _ = load_for_training(config, accelerator.device)
    parameters = [p for p in grit.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    model, optimizer = accelerator.prepare(GritTrainingModule(grit), optimizer)
    step_fn = TrainingStep(config, grit, model, accelerator, read_embedding_data(config.embedding_data),
                           read_generative_data(config.generative_data), read_rag_data(config.rag_data))
    streams = {"embedding": lambda step: step_fn.embedding_backward(step, final=False),
               "rag": lambda step: step_fn.rag_backward(step, final=False),
               "generative": lambda step: step_fn.generative_backward(step)}
    seconds: dict[str, list[float]] = {name: [] for name in [*streams, "step"]}
    for step in range(steps + 1):  # step 0 warms up
        start = time.perf_counter()
        for name, run in streams.items():
            stream_start = time.perf_counter()
            run(step)
            seconds[name].append(time.perf_counter() - stream_start)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds["step"].append(time.perf_counter() - start)
    counts = {name: leaf_op_counts(lambda: run(steps + 1)) for name, run in streams.items()}
    optimizer.zero_grad(set_to_none=True)
    rows = []
    for name, values in seconds.items():
        ops, syncs = counts.get(name, ("-", "-"))
        rows.append({"model": label, "stream": name, "s_per_step": statistics.mean(values[1:]),
                     "std_s": statistics.stdev(values[1:]) if steps > 1 else 0.0, "aten_ops": ops, "item_syncs": syncs})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "default"], choices=["tiny", "default"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows-per-source", type=int, default=4000,
                        help="rows of each data source held in memory (as a real mix holds: a full gc.collect "
                             "scales with the live Python objects)")
    parser.add_argument("--name", default="train_step", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        build_training_mix(folder / "data", sources=["tydiqa", "gsm8k", "rag-tydiqa"], max_per_source=args.rows_per_source, seed=0)
        specs = {"tiny": lambda: tiny_model_dir(folder), "default": lambda: "default"}
        for label in args.models:
            rows += measure(label, specs[label](), folder / "data", args.steps)
    report(args.name, rows, {"recipe": RECIPE, "steps": args.steps, "rows_per_source": args.rows_per_source})


if __name__ == "__main__":
    main()
