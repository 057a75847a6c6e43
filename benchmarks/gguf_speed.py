"""llama.cpp on the exported default: decode speed, and agreement with gritkit.

    OMP_NUM_THREADS=1 python benchmarks/gguf_speed.py --new-tokens 64 --repeats 3

Exports the default (adapter merged) as f32, f16 and q8_0 GGUF files into a temporary folder.
Speed: greedy decoding of the same chat prompt for exactly ``--new-tokens`` tokens (EOS ignored),
gritkit's fp32 loop against llama-cpp-python on each file and on the package's Q4_1 file (the
base, without the adapter), at ``torch.get_num_threads()`` threads. Agreement, per exported file:
how many of the prompts' greedy replies (32 tokens, from the same token ids) equal gritkit's, and
the lowest cosine of llama.cpp's GRIT embeddings (``gritkit.export.llama_cpp``) to gritkit's over
MedQuAD answers. Needs llama-cpp-python (``gritkit[llamacpp]``).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import doc_tables
from common import best_of, medquad_texts, report
from generate_speed import PROMPT, gritkit_decode, llama_cpp_seconds
from gritkit import GritLM
from gritkit.export.gguf import export_gguf
from gritkit.loading import default_gguf_path

PROMPTS = ["What is the capital of France?", "How many legs does a spider have?", "Name three colours.",
           "Write one sentence about the sea.", "What is 12 times 3?", "Give me a tip for sleeping well."]
INSTRUCTION = "Given a question, retrieve passages that answer it"


def greedy_agreement(model: GritLM, path: Path, threads: int) -> int:
    """How many prompts get the same 32-token greedy reply from llama.cpp as from gritkit."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, verbose=False)
    same = 0
    for prompt in PROMPTS:
        ids = model.prompt_ids([{"role": "user", "content": prompt}])
        expected = list(model.generate_ids(ids, max_new_tokens=32))
        produced = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(produced) == 32:
                break
            produced.append(token)
        same += produced == expected
    return same


def embedding_cosine(model: GritLM, path: Path, texts: list[str], threads: int) -> float:
    """Lowest cosine between llama.cpp's GRIT embeddings and gritkit's, from the same token ids."""
    import llama_cpp

    from gritkit.export.llama_cpp import grit_embedding

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=1024, n_ubatch=1024, n_threads=threads,
                          embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, verbose=False)
    expected = model.encode(texts, instruction=INSTRUCTION, max_length=512)
    batch = model.tokenize_for_embedding(texts, INSTRUCTION, max_length=512)
    cosines = []
    for row in range(len(texts)):
        length = int(batch.attention_mask[row].sum())
        vector = grit_embedding(llm, batch.input_ids[row, :length].tolist(), length - int(batch.pooling_mask[row].sum()))
        cosines.append(float(np.dot(vector, expected[row])))
    return min(cosines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--texts", type=int, default=16, help="MedQuAD answers for the embedding check")
    args = parser.parse_args()
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("needs llama-cpp-python: see docs/gguf.md for the portable build")
    threads = torch.get_num_threads()

    model = GritLM.from_pretrained()
    ids = model.prompt_ids(PROMPT)
    reference, _ = best_of(lambda: gritkit_decode(model, ids, args.new_tokens), args.repeats)

    def row(system: str, seconds: tuple[float, float], size: int, **extra) -> dict:
        return {"system": system, "file MB": round(size / 1e6), "tokens/s": args.new_tokens / seconds[0],
                "std s": seconds[1], "speed vs gritkit fp32": reference / seconds[0], **extra}

    rows = [row("gritkit generate (fp32)", (reference, 0.0), 0, **{"greedy = gritkit": "-", "embedding cosine (min)": "-",
                                                                    "export s": "-"})]
    texts = medquad_texts(args.texts)
    with tempfile.TemporaryDirectory() as folder:
        for dtype in args.dtypes:
            start = time.perf_counter()
            path = export_gguf("default", Path(folder) / f"default.{dtype}.gguf", dtype=dtype)
            export_seconds = time.perf_counter() - start
            seconds = llama_cpp_seconds(ids, args.new_tokens, threads, args.repeats, str(path))
            same = greedy_agreement(model, path, threads)
            rows.append(row(f"llama.cpp, exported {dtype}", seconds, path.stat().st_size,
                            **{"greedy = gritkit": f"{same}/{len(PROMPTS)}",
                               "embedding cosine (min)": embedding_cosine(model, path, texts, threads),
                               "export s": export_seconds}))
            path.unlink()
    source = default_gguf_path()
    rows.append(row("llama.cpp, package Q4_1 (base, no adapter)", llama_cpp_seconds(ids, args.new_tokens, threads, args.repeats),
                    source.stat().st_size, **{"greedy = gritkit": "-", "embedding cosine (min)": "-", "export s": "-"}))
    report("gguf_speed", rows, {"prompt_tokens": len(ids), "threads": threads, "texts": args.texts, "args": vars(args)},
           markdown=doc_tables.gguf_speed)


if __name__ == "__main__":
    main()
