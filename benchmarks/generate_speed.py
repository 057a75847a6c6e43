"""Generation speed on CPU: GritLM.generate vs transformers' generate vs llama.cpp on the same GGUF.

    python benchmarks/generate_speed.py --new-tokens 64 --repeats 3

Every system decodes greedily from the same chat prompt for exactly ``--new-tokens`` tokens
(EOS ignored), so tokens/s compare like for like. llama.cpp runs when ``llama-cpp-python``
is installed (``pip install llama-cpp-python``, builds from source in ~10 min).
"""

from __future__ import annotations

import argparse

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


def llama_cpp_runner(ids: list[int], new_tokens: int, threads: int):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(default_gguf_path()), n_ctx=2048, n_threads=threads, verbose=False)

    def run() -> int:
        llm.reset()
        count = 0
        for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            count += 1
            if count == new_tokens:
                break
        return count

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = GritLM.from_pretrained()
    ids = model.prompt_ids(PROMPT)
    systems = {
        "gritkit generate": lambda: gritkit_decode(model, ids, args.new_tokens),
        "transformers generate": lambda: transformers_decode(model, ids, args.new_tokens),
    }
    if (llama := llama_cpp_runner(ids, args.new_tokens, torch.get_num_threads())) is not None:
        systems["llama.cpp (Q4_1 GGUF)"] = llama
    measured = {name: best_of(run, args.repeats) for name, run in systems.items()}
    reference = measured.get("llama.cpp (Q4_1 GGUF)", measured["transformers generate"])[0]
    rows = [{"system": name, "tokens/s": args.new_tokens / mean, "seconds": mean, "std": std,
             "speed vs llama.cpp" if "llama.cpp (Q4_1 GGUF)" in measured else "speed vs transformers": reference / mean}
            for name, (mean, std) in measured.items()]
    report("generate_speed", rows, {"prompt_tokens": len(ids), "args": vars(args)})


if __name__ == "__main__":
    main()
