"""Quality kept by compact embeddings: STS-B (Spearman) and MS MARCO (nDCG@10) per dimensions and precision.

Every text is embedded once at full size; each (dimensions, precision) cell then scores vectors made
by ``gritkit.model.compact_embeddings`` and compared the way a user would: float32 and int8 by cosine,
binary by Hamming distance. Uses the gritkit eval tasks (``gritkit.eval.tasks.sts`` / ``retrieval``)
with their instructions.

Usage:
    python benchmarks/compact_embeddings.py                        # STS-B test, MS MARCO 50 queries
    python benchmarks/compact_embeddings.py --sts-limit 400 --msmarco-limit 5 --max-length 128   # ~15 min on 2 busy cores

MS MARCO's judged passages are many (~80 per query), so each query adds ~100 passages to embed.
Prints a table and writes benchmarks/results/compact_embeddings.json (with commit, command, CPU, threads, date).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_tables  # noqa: E402
from common import report  # noqa: E402

from gritkit import GritLM  # noqa: E402
from gritkit.eval.encoders import GritEncoder  # noqa: E402
from gritkit.eval.instructions import instruction_for  # noqa: E402
from gritkit.eval.tasks import retrieval, sts  # noqa: E402
from gritkit.model import compact_embeddings  # noqa: E402

PRECISIONS = ("float32", "int8", "binary")


class CachedEncoder:
    """Embeds each (instruction, text) once; later calls reuse the full-size vectors."""

    def __init__(self, model: GritLM, max_length: int):
        self.inner, self.name, self.cache = GritEncoder(model, max_length=max_length), model.name, {}

    def encode(self, texts: Sequence[str], instruction: str = "", *, show_progress_bar: bool = False) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if (instruction, text) not in self.cache]
        if missing:
            for text, vector in zip(missing, self.inner.encode(missing, instruction, show_progress_bar=True)):
                self.cache[instruction, text] = vector
        return np.stack([self.cache[instruction, text] for text in texts])


class CompactEncoder:
    """Compact vectors of a :class:`CachedEncoder`, turned back into unit float vectors whose dot
    product ranks like the precision's own comparison (cosine; for binary, 1 - 2 * Hamming / d)."""

    def __init__(self, base: CachedEncoder, dimensions: int | None, precision: str):
        self.base, self.dimensions, self.precision, self.name = base, dimensions, precision, base.name

    def encode(self, texts: Sequence[str], instruction: str = "", *, show_progress_bar: bool = False) -> np.ndarray:
        compact = compact_embeddings(self.base.encode(texts, instruction), dimensions=self.dimensions,
                                     precision=self.precision)
        if self.precision == "binary":
            width = self.dimensions or self.base.inner.model.embedding_dim
            compact = np.unpackbits(compact, axis=1)[:, :width].astype(np.float32) * 2 - 1
        vectors = compact.astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def bytes_per_vector(dimensions: int, precision: str) -> int:
    return {"float32": 4 * dimensions, "int8": dimensions, "binary": (dimensions + 7) // 8}[precision]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sts-limit", type=int, default=None, help="STS-B test pairs (default: all 1,379)")
    parser.add_argument("--msmarco-limit", type=int, default=50,
                        help="MS MARCO queries; the corpus is their judged passages plus 20 distractors each")
    parser.add_argument("--dimensions", default="full,288,144,64,32", help="comma-separated; 'full' is the model's")
    parser.add_argument("--max-length", type=int, default=512, help="tokens kept of each text (the eval default)")
    parser.add_argument("--tasks", default="stsb,msmarco", help="stsb, msmarco or both")
    args = parser.parse_args()

    model = GritLM.from_pretrained(args.model)
    base = CachedEncoder(model, args.max_length)
    sizes = [model.embedding_dim if size == "full" else int(size) for size in args.dimensions.split(",")]
    tasks = args.tasks.split(",")
    rows, scores = [], {}
    for dimensions in sizes:
        for precision in PRECISIONS:
            encoder = CompactEncoder(base, None if dimensions == model.embedding_dim else dimensions, precision)
            row = {"dimensions": dimensions, "precision": precision, "bytes": bytes_per_vector(dimensions, precision)}
            if "stsb" in tasks:
                scores["stsb"] = sts.evaluate(encoder, "stsb/stsb-en-test.csv", instruction=instruction_for("stsb"),
                                              limit=args.sts_limit)
                row["stsb_spearman"] = round(scores["stsb"].value, 4)
            if "msmarco" in tasks:
                scores["msmarco"] = retrieval.evaluate(encoder, "retrieval_nano/msmarco", limit=args.msmarco_limit,
                                                       instruction=instruction_for("msmarco"))
                row["msmarco_ndcg_at_10"] = round(scores["msmarco"].value, 4)
            rows.append(row)
            print(row, flush=True)
    for metric in [name for name in rows[0] if name.startswith(("stsb_", "msmarco_"))]:
        for row in rows:  # relative to full-size float32, the first row
            row[metric.split("_")[0] + "_kept_pct"] = round(100 * row[metric] / rows[0][metric], 1)
    report("compact_embeddings", rows, {
        "model": args.model, "max_length": args.max_length,
        "examples": {task: score.n for task, score in scores.items()},
        "msmarco_corpus": scores["msmarco"].extra.get("corpus_size") if "msmarco" in scores else None},
        markdown=doc_tables.compact_embeddings)


if __name__ == "__main__":
    main()
