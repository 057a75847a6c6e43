"""Generation speed on CPU: GritLM.generate vs transformers' generate vs llama.cpp on the same GGUF.

    python benchmarks/generate_speed.py --new-tokens 64 --repeats 3
    python benchmarks/generate_speed.py --llamacpp-backend --new-tokens 128 --repeats 5

Every system decodes greedily from the same chat prompt for exactly ``--new-tokens`` tokens
(EOS ignored), so tokens/s compare like for like. llama.cpp runs when ``llama-cpp-python``
is installed (``pip install llama-cpp-python``, builds from source in ~10 min).

``--llamacpp-backend`` compares gritkit's PyTorch fp32 path, gritkit with
``generation_backend="llamacpp"`` (f16 and q8_0 exports) and plain llama-cpp-python on the same
exported file, after a short and a ~1,000-token prompt, at 1 and 2 threads; every run includes
computing the prompt. The backend and llama-cpp-python (kept loaded in processes of its own) run in
alternating rounds (``--repeats`` rounds after a warm-up, the order rotating), so the machine's slow
spells fall on both; a ratio is the median of the per-round ratios, with their lowest and highest.
Quality columns, per export: held-out perplexity (AlpacaEval reference answers, llama.cpp's logits vs
PyTorch fp32's) and how many greedy replies to AlpacaEval prompts equal fp32's.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

import doc_tables
from common import best_of, medquad_texts, report
from gritkit import GritLM
from gritkit.loading import default_gguf_path

PROMPT = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def gritkit_decode(model: GritLM, ids: list[int], new_tokens: int) -> int:
    """gritkit's own decode loop (DynamicCache, one token a step), EOS ignored for a fixed length."""
    cache, logits = model.prefill(ids)
    for _ in range(new_tokens - 1):
        cache, logits = model.prefill([int(logits.argmax())], cache)
    return new_tokens


def transformers_decode(model: GritLM, ids: list[int], new_tokens: int) -> int:
    with torch.inference_mode():
        output = model.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=model.tokenizer.pad_token_id)
    return output.shape[1] - len(ids)


LLAMA_CPP = """
import json, sys, time
from llama_cpp import Llama
path, n_ctx, threads, options = json.loads(sys.argv[1])
llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False, **options)
print("ready", flush=True)
for line in sys.stdin:
    ids, new_tokens, with_prefill = json.loads(line)
    start = time.perf_counter()
    if with_prefill:
        llm.reset()  # else generate() reuses the prompt's states from the last run
    for count, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True), start=1):
        if count == new_tokens:
            break
    print(time.perf_counter() - start, flush=True)
"""


class LlamaCppTimer:
    """Plain llama-cpp-python on one GGUF file, in its own process (two OpenMP runtimes in one process
    slow both), timed one run at a time so its runs can alternate with gritkit's."""

    def __init__(self, path: str, *, threads: int, n_ctx: int = 2048, options: dict | None = None):
        job = json.dumps([path, n_ctx, threads, options or {}])
        self.process = subprocess.Popen([sys.executable, "-c", LLAMA_CPP, job], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"llama-cpp-python did not load {path}")

    def seconds(self, ids: list[int], new_tokens: int, with_prefill: bool = True) -> float:
        """Wall seconds of one greedy run of ``new_tokens`` tokens after ``ids``; ``with_prefill``: the
        prompt is computed again (else it is reused from the last run)."""
        self.process.stdin.write(json.dumps([ids, new_tokens, with_prefill]) + "\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def llama_cpp_seconds(ids: list[int], new_tokens: int, threads: int, repeats: int) -> tuple[float, float] | None:
    """Mean/std seconds of plain llama-cpp-python on the package's GGUF (after a warm-up), or None without it."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    timer = LlamaCppTimer(str(default_gguf_path()), threads=threads)
    try:
        seconds = [timer.seconds(ids, new_tokens, with_prefill=False) for _ in range(repeats + 1)][1:]
    finally:
        timer.close()
    return statistics.mean(seconds), statistics.stdev(seconds) if len(seconds) > 1 else 0.0


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each run over ``rounds`` rounds (after one warm-up each). Every round runs each system
    once, in an order that rotates from round to round, so a slow spell of a shared machine falls on all
    of them rather than on whichever was measured then."""
    for run in runs.values():
        run()
    names, seconds = list(runs), {name: [] for name in runs}
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            seconds[name].append(runs[name]())
    return seconds


def paired_ratio(baseline: list[float], ours: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round speed ratios (baseline seconds / our seconds)."""
    ratios = [b / o for b, o in zip(baseline, ours)]
    return statistics.median(ratios), min(ratios), max(ratios)


def long_prompt(model: GritLM, tokens: int = 1000) -> list[int]:
    """A chat prompt of about ``tokens`` tokens: MedQuAD answers to summarise."""
    text = model.tokenizer.decode(model.tokenizer(" ".join(medquad_texts(40)))["input_ids"][:tokens - 40])
    return model.prompt_ids([{"role": "user", "content": f"Summarise these notes:\n{text}"}])


def gguf_perplexity(path, rows: list[tuple[list[int], list[int]]], threads: int) -> float:
    """Perplexity of the response tokens from llama.cpp's logits (the same ids as the PyTorch eval), with
    the backend's llama.cpp options."""
    from llama_cpp import Llama

    from gritkit.backends.llamacpp import LLAMA_OPTIONS

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, logits_all=True, verbose=False, **LLAMA_OPTIONS)
    nll, count = 0.0, 0
    for prompt, response in rows:
        llm.reset()
        llm.eval(prompt + response)
        logits = llm.scores[len(prompt) - 1:len(prompt) + len(response) - 1].astype(np.float64)
        log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        nll -= float(log_probs[np.arange(len(response)), response].sum())
        count += len(response)
    llm.close()
    return math.exp(nll / count)


def compare_llamacpp_backend(args: argparse.Namespace) -> None:
    from gritkit.backends.llamacpp import LLAMA_OPTIONS, LlamaCppDecoder, cached_gguf
    from gritkit.eval.data import read_jsonl
    from gritkit.eval.tasks.perplexity import response_nll
    from gritkit.paths import data_dir

    model = GritLM.from_pretrained()
    prompts = {"short": model.prompt_ids(PROMPT), "~1000 tokens": long_prompt(model)}
    files = {dtype: cached_gguf(model, dtype) for dtype in ("f16", "q8_0")}
    alpaca = read_jsonl(data_dir() / "alpaca_eval" / "alpaca_eval.jsonl")
    replies = [model.prompt_ids([{"role": "user", "content": row["instruction"]}]) for row in alpaca[:args.replies]]
    scored = []
    for row in alpaca[-args.perplexity_rows:]:  # held out from the replies
        prompt = model.prompt_ids([{"role": "user", "content": row["instruction"]}])
        response = model.tokenizer(row["output"], add_special_tokens=False)["input_ids"][:256] + [model.tokenizer.eos_token_id]
        scored.append((prompt, response))
    fp32_perplexity = math.exp(sum(response_nll(model, p, r) for p, r in scored) / sum(len(r) for _, r in scored))
    fp32_replies = [list(model.generate_ids(ids, max_new_tokens=args.reply_tokens)) for ids in replies]

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        backends, timers = {}, {}
        for dtype, path in files.items():
            backends[dtype] = copy.copy(model)
            backends[dtype].llamacpp = LlamaCppDecoder(path, context_length=model.max_length, threads=threads)
            # plain: the library's defaults; options: the backend's, so the ratio that is left is the backend's own
            timers[dtype] = {"plain": LlamaCppTimer(str(path), threads=threads, n_ctx=model.max_length),
                             "options": LlamaCppTimer(str(path), threads=threads, n_ctx=model.max_length,
                                                      options=LLAMA_OPTIONS)}

        def backend_seconds(decoder: LlamaCppDecoder, ids: list[int]) -> float:
            start = time.perf_counter()
            decoder.clear()  # compute the prompt every time, as plain llama-cpp-python does
            for _ in decoder.generate_ids(ids, max_new_tokens=args.new_tokens, stop_ids=set(),
                                          next_token=lambda logits: int(logits.argmax())):
                pass
            return time.perf_counter() - start

        for prompt_name, ids in prompts.items():
            torch_seconds = best_of(lambda: gritkit_decode(model, ids, args.new_tokens), args.repeats)[0]
            plain_f16 = None
            for dtype in files:
                seconds = interleaved({"backend": lambda: backend_seconds(backends[dtype].llamacpp, ids),
                                       "plain": lambda: timers[dtype]["plain"].seconds(ids, args.new_tokens),
                                       "options": lambda: timers[dtype]["options"].seconds(ids, args.new_tokens)},
                                      args.repeats)
                plain, options, ours = (statistics.median(seconds[name]) for name in ("plain", "options", "backend"))
                plain_f16 = plain_f16 or plain
                ratio = paired_ratio(seconds["plain"], seconds["backend"])
                options_ratio = paired_ratio(seconds["options"], seconds["backend"])
                rows.append({"threads": threads, "prompt": f"{prompt_name} ({len(ids)})",
                             "system": f"gritkit llamacpp backend, {dtype}", "tokens/s": args.new_tokens / ours,
                             "plain llama-cpp-python tokens/s": args.new_tokens / plain,
                             "ratio to llama-cpp-python": ratio[0], "ratio range": ratio[1:],
                             "llama-cpp-python with the backend's options tokens/s": args.new_tokens / options,
                             "ratio to llama-cpp-python with the backend's options": options_ratio[0],
                             "ratio range with the backend's options": options_ratio[1:],
                             "seconds per round": seconds})
            rows.append({"threads": threads, "prompt": f"{prompt_name} ({len(ids)})", "system": "gritkit torch fp32",
                         "tokens/s": args.new_tokens / torch_seconds,
                         "plain llama-cpp-python tokens/s": args.new_tokens / plain_f16,
                         "ratio to llama-cpp-python": plain_f16 / torch_seconds})
        for pair in timers.values():
            for timer in pair.values():
                timer.close()
        if threads == 1:
            for dtype in files:
                same = sum(list(backends[dtype].generate_ids(ids, max_new_tokens=args.reply_tokens)) == expected
                           for ids, expected in zip(replies, fp32_replies))
                perplexity = gguf_perplexity(files[dtype], scored, threads)
                for row in rows:
                    if row["system"].endswith(dtype):
                        row.update({"perplexity": perplexity, "perplexity vs fp32": perplexity / fp32_perplexity - 1,
                                    "greedy = fp32": f"{same}/{len(replies)}"})
            for row in rows:
                row.setdefault("perplexity", fp32_perplexity)
                row.setdefault("perplexity vs fp32", 0.0)
                row.setdefault("greedy = fp32", "-")
    for row in rows:  # the quality columns of the 1-thread rows hold for 2 threads too
        quality = next(r for r in rows if r["system"] == row["system"] and "perplexity" in r)
        row.update({key: quality[key] for key in ("perplexity", "perplexity vs fp32", "greedy = fp32")})
    report("generate_speed_llamacpp", rows, {"new_tokens": args.new_tokens, "backend_llama_options": LLAMA_OPTIONS,
                                             "perplexity_rows": len(scored),
                                             "perplexity_tokens": sum(len(r) for _, r in scored),
                                             "reply_prompts": len(replies), "reply_tokens": args.reply_tokens,
                                             "files_mb": {d: round(p.stat().st_size / 1e6) for d, p in files.items()},
                                             "args": vars(args)}, markdown=doc_tables.generate_speed_llamacpp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llamacpp-backend", action="store_true", help="torch vs the llamacpp backend vs plain llama-cpp-python")
    parser.add_argument("--replies", type=int, default=8, help="AlpacaEval prompts for the greedy agreement")
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--perplexity-rows", type=int, default=16, help="AlpacaEval reference answers scored")
    args = parser.parse_args()
    if args.llamacpp_backend:
        compare_llamacpp_backend(args)
        return

    model = GritLM.from_pretrained()
    ids = model.prompt_ids(PROMPT)
    int8 = GritLM.from_pretrained(quantize="int8")
    systems = {
        "gritkit generate": lambda: gritkit_decode(model, ids, args.new_tokens),
        "transformers generate": lambda: transformers_decode(model, ids, args.new_tokens),
        "gritkit generate, quantize='int8'": lambda: gritkit_decode(int8, ids, args.new_tokens),
    }
    measured = {name: best_of(run, args.repeats) for name, run in systems.items()}
    if (llama := llama_cpp_seconds(ids, args.new_tokens, torch.get_num_threads(), args.repeats)) is not None:
        measured["llama.cpp (Q4_1 GGUF)"] = llama
    reference = measured.get("llama.cpp (Q4_1 GGUF)", measured["transformers generate"])[0]
    rows = [{"system": name, "tokens/s": args.new_tokens / mean, "seconds": mean, "std": std,
             "speed vs llama.cpp" if "llama.cpp (Q4_1 GGUF)" in measured else "speed vs transformers": reference / mean}
            for name, (mean, std) in measured.items()]
    report("generate_speed", rows, {"prompt_tokens": len(ids), "args": vars(args)})


if __name__ == "__main__":
    main()
