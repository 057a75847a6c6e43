"""Peak memory and time per example of one contrastive training step, with and without GradCache.

    python benchmarks/gradcache_memory.py                                  # GPU: batch 64 -> 1024
    python benchmarks/gradcache_memory.py --sizes 8,16,32 --chunk-size 8   # CPU-sized run

Each (batch size, method) runs in a fresh process so peak memory is its own: on GPU
``torch.cuda.max_memory_allocated``; on CPU the peak resident set size (VmHWM, reset after loading),
both minus the memory held after loading the model. Time is that of a second step.
Prints a table and writes JSON. Goal: with GradCache the peak stays flat as the batch grows and the
time per example stays under 1.3x the one-pass time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(model: str, batch_size: int, chunk_size: int, passage_words: int, threads: int) -> dict:
    """One warm-up step then one timed step of InfoNCE (1 positive + 1 hard negative per query)."""
    import torch

    from gritkit.training.config import TrainingConfig
    from gritkit.training.gradcache import gradcache_backward, split_batch
    from gritkit.training.losses import info_nce_loss
    from gritkit.training.trainer import load_for_training

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    grit, _ = load_for_training(TrainingConfig(model=model, embedding_data=["-"], lora=True, lora_dropout=0.0), device)
    words = "the quick brown fox jumps over a lazy dog near river bank".split()
    queries = [f"question {i}: " + " ".join(words[(i + k) % len(words)] for k in range(12)) for i in range(batch_size)]
    passages = [f"passage {i}: " + " ".join(words[(i * 3 + k) % len(words)] for k in range(passage_words))
                for i in range(2 * batch_size)]
    query_batch = grit.tokenize_for_embedding(queries, "Retrieve the passage that answers the question")
    passage_batch = grit.tokenize_for_embedding(passages)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def loss_fn(q, p):
        return info_nce_loss(q, p, temperature=0.02)[0]

    def step() -> None:
        with autocast:
            if chunk_size:
                gradcache_backward(grit.embed_batch, [split_batch(query_batch, chunk_size),
                                                      split_batch(passage_batch, chunk_size)], loss_fn)
            else:
                loss_fn(grit.embed_batch(query_batch), grit.embed_batch(passage_batch)).backward()
        grit.model.zero_grad(set_to_none=True)

    # Peak over a warm-up step and the timed step: freed CPU memory is often kept by the allocator,
    # so a peak over the second step alone would miss activations that reuse it. Read every weight
    # first so pages of the memory-mapped checkpoint do not count as activation memory.
    with torch.no_grad():
        sum(float(p.float().sum()) for p in grit.model.parameters())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        base = _rss_mib("VmRSS")
    try:
        step()  # warm-up: allocator, kernels
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
    except torch.OutOfMemoryError:
        return {"batch_size": batch_size, "gradcache": bool(chunk_size), "oom": True}
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mib("VmHWM")
    return {"batch_size": batch_size, "gradcache": bool(chunk_size), "chunk_size": chunk_size,
            "peak_extra_mib": round(peak - base, 1), "ms_per_example": round(1000 * seconds / batch_size, 2),
            "step_s": round(seconds, 3), "device": torch.cuda.get_device_name() if cuda else "cpu",
            "tokens": {"query": query_batch.input_ids.shape[1], "passage": passage_batch.input_ids.shape[1]}}


def _run(queue, args) -> None:
    queue.put(measure(*args))


def main() -> None:
    # Imported here, not at the top: the spawned workers re-import this module and must not load torch early.
    import torch

    import doc_tables
    from common import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sizes", default="64,128,256,512,1024", help="comma-separated contrastive batch sizes (queries)")
    parser.add_argument("--chunk-size", type=int, default=32, help="GradCache chunk (texts per forward)")
    parser.add_argument("--passage-words", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--output", default="benchmarks/results/gradcache_memory.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # as the workers do, so that the record's provenance states their threads

    context = multiprocessing.get_context("spawn")
    rows = []
    print(f"{'batch':>6} {'method':>10} {'peak extra MiB':>15} {'ms/example':>11} {'step s':>8}")
    for size in map(int, args.sizes.split(",")):
        for chunk in (0, args.chunk_size):
            queue = context.Queue()
            process = context.Process(target=_run, args=(queue, (args.model, size, chunk, args.passage_words, args.threads)))
            process.start()
            process.join()
            row = queue.get() if not queue.empty() else {"batch_size": size, "gradcache": bool(chunk), "failed": process.exitcode}
            rows.append(row)
            method = f"gc/{chunk}" if chunk else "one pass"
            if "peak_extra_mib" in row:
                print(f"{size:>6} {method:>10} {row['peak_extra_mib']:>15.1f} {row['ms_per_example']:>11.2f} {row['step_s']:>8.2f}")
            else:
                print(f"{size:>6} {method:>10} {'OOM' if row.get('oom') else 'failed':>15}")
    record = {"args": vars(args), "rows": rows}
    print(f"\n{doc_tables.gradcache_memory(record)}\nwrote {write_results(Path(args.output), record)}")


if __name__ == "__main__":
    main()
