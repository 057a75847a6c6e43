"""Generation speed on CPU: GritLM.generate vs transformers' generate vs llama.cpp on the same GGUF.

    python benchmarks/generate_speed.py --new-tokens 64 --repeats 3

Every system decodes greedily from the same chat prompt for exactly ``--new-tokens`` tokens
(EOS ignored), so tokens/s compare like for like. llama.cpp runs when ``llama-cpp-python``
is installed (``pip install llama-cpp-python``, builds from source in ~10 min).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import torch

from common import best_of, report
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
import json, statistics, sys, time
from llama_cpp import Llama
ids, new_tokens, threads, repeats, path = json.loads(sys.argv[1])
llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
def run():
    for count, _ in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True), start=1):
        if count == new_tokens:
            return
times = []
for attempt in range(repeats + 1):
    start = time.perf_counter(); run(); times.append(time.perf_counter() - start)
times = times[1:]
print(json.dumps([statistics.mean(times), statistics.stdev(times) if len(times) > 1 else 0.0]))
"""


def llama_cpp_seconds(ids: list[int], new_tokens: int, threads: int, repeats: int,
                      gguf_path: str | None = None) -> tuple[float, float] | None:
    """Mean/std seconds of llama.cpp on ``gguf_path`` (default: the package's GGUF), in its own
    process: two OpenMP runtimes in one process slow both."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    job = json.dumps([ids, new_tokens, threads, repeats, str(gguf_path or default_gguf_path())])
    result = subprocess.run([sys.executable, "-c", LLAMA_CPP, job], capture_output=True, text=True, check=True)
    return tuple(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

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
