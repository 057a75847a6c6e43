"""RAG question answering over a passage corpus: retrieval and answer quality of every RAG cache mode.

Corpora (SQuAD v1.1 JSON files, loaded with :func:`gritkit.eval.tasks.tydiqa.load_squad`):

* ``tydiqa``: TyDi QA GoldP dev, English (440 questions); corpus = its 429 distinct paragraphs;
* ``squad``: a fixed seeded sample of SQuAD v1.1 dev questions (300 by default); corpus = all
  2,067 dev paragraphs.

Each question is retrieved once for top-1/top-5 (is the question's own paragraph among the first
k?), then answered in each mode with ``k=1`` (``k=0`` for no RAG) by :class:`gritkit.rag.RAG`.
Two more modes take
``k=3`` passages, uncached doc-first against causal doc caching, to show how far the latter is from
the former when more than one passage is cached. Metrics per mode: match (any gold answer contained in the output, case-insensitive: the GRIT
paper's RAG score), SQuAD exact match and F1, the degenerate-output rate
(:func:`gritkit.eval.metrics.is_degenerate`) and mean seconds per answer without building caches.

Every answer is appended to a per-mode JSONL file as it is made, so a killed run resumes where it
stopped. Usage: ``benchmarks/rag_quality.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gritkit import GritLM
from gritkit.eval import metrics
from gritkit.eval.data import subset
from gritkit.eval.tasks.tydiqa import QA, load_squad


@dataclass(frozen=True)
class Mode:
    """One row of the table: how :meth:`gritkit.rag.RAG.answer` is called."""

    name: str
    label: str
    cache: str
    order: str = "query_first"
    k: int = 1
    doc_cache: str | None = None


MODES = [
    Mode("no_rag", "No RAG", "none", k=0),
    Mode("rag_query_first", "RAG query-first", "none"),
    Mode("rag_doc_first", "RAG doc-first", "none", "doc_first"),
    Mode("query", "Query caching", "query"),
    Mode("doc", "Doc caching (bidirectional)", "doc", doc_cache="bidirectional"),
    Mode("query_doc", "Query-doc caching", "query_doc", doc_cache="bidirectional"),
    Mode("doc_query", "Doc-query caching", "doc_query", doc_cache="bidirectional"),
    Mode("doc_causal", "Doc caching (causal)", "doc", doc_cache="causal"),
    # k > 1: later passages' causal states are re-positioned after the first (block attention between
    # passages), so these answers can differ from uncached doc-first RAG; "identical" says how often.
    Mode("rag_doc_first_k3", "RAG doc-first, k=3", "none", "doc_first", k=3),
    Mode("doc_causal_k3", "Doc caching (causal), k=3", "doc", k=3, doc_cache="causal"),
]
# Modes whose greedy answers should equal another mode's: the share of identical outputs is reported.
SAME_AS = {"doc_causal": "rag_doc_first", "doc_causal_k3": "rag_doc_first_k3"}
MODES_BY_NAME = {mode.name: mode for mode in MODES}
CORPORA = {
    "tydiqa": "tydiqa_goldp/dev/tydiqa.goldp.en.dev.json",
    "squad": "squad_v1_dev/dev-v1.1.json",
}


@dataclass
class Corpus:
    name: str
    questions: list[QA]
    passages: list[str]  # distinct paragraphs, in file order; the index ids are their positions

    def gold_id(self, question: QA) -> str:
        return str(self.passages.index(question.context))


def load_corpus(name: str, *, squad_sample: int = 300, seed: int = 0) -> Corpus:
    """The questions and passage corpus of ``tydiqa`` or ``squad`` (every paragraph of the file)."""
    if name not in CORPORA:
        raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, not {name!r}")
    items = load_squad(CORPORA[name])
    passages = list(dict.fromkeys(item.context for item in items))
    questions = subset(items, squad_sample, seed) if name == "squad" else items
    return Corpus(name, questions, passages)


def model_fingerprint(model: GritLM) -> str:
    """A short hash of the model's embedding of a fixed text: changes with the weights, not the run."""
    vector = model.encode("gritkit fingerprint: the quick brown fox jumps over the lazy dog")
    return hashlib.sha256(np.round(vector, 4).tobytes()).hexdigest()[:10]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


def open_index(model: GritLM, corpus: Corpus, directory: Path, *, kv_budget_bytes: int | None = 2 * 1024**3):
    """The corpus index under ``directory``, built once: one chunk per paragraph, both KV kinds recorded
    and computed when first retrieved (``kv_on_demand``), so only passages ever answered from cost states.
    A build that was stopped goes on from its last committed batch (each batch is one transaction).
    Runs that open the same index at once (e.g. modes split over two processes) build it once: the
    others wait for the build and then open it as it is."""
    from filelock import FileLock

    from gritkit.rag import Index

    done = directory / "complete"
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(directory.with_name(directory.name + ".lock")):
        index = Index.open(directory, model, kv_budget_bytes=kv_budget_bytes)
        if not done.exists() or len(index) != len(corpus.passages):
            indexed = set(index.document_ids())
            missing = [{"id": str(i), "text": text} for i, text in enumerate(corpus.passages) if str(i) not in indexed]
            index.add(missing, chunk_size=100_000, chunk_overlap=0, batch_size=64, cache_kv="both", kv_on_demand=True,
                      show_progress_bar=True)
            done.write_text(json.dumps({"passages": len(corpus.passages)}))
    return index


def read_rows(path: Path) -> dict[str, dict]:
    """Rows of a per-mode results file by question id (a torn last line from a kill is skipped)."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["id"]] = row
    return rows


def open_for_append(path: Path):
    """``path`` opened to append rows, a torn last line (a kill in mid-write) cut off first."""
    if path.exists():
        text = path.read_text()
        if text and not text.endswith("\n"):
            path.write_text(text[:text.rfind("\n") + 1])
    return path.open("a")


def retrieval_rows(index, corpus: Corpus, path: Path, progress: Callable = lambda items, **_: items) -> dict[str, dict]:
    """Top-5 passage ids per question (resumable like the modes)."""
    rows = read_rows(path)
    with open_for_append(path) as file:
        for question in progress([q for q in corpus.questions if q.id not in rows], desc=f"{corpus.name} retrieval"):
            ranked = [p.doc_id for p in index.search(question.question, k=5)]
            rows[question.id] = {"id": question.id, "gold": corpus.gold_id(question), "top5": ranked}
            file.write(json.dumps(rows[question.id]) + "\n")
            file.flush()
    return rows


def answer_rows(rag, mode: Mode, corpus: Corpus, path: Path, *, max_new_tokens: int,
                progress: Callable = lambda items, **_: items, **penalties: float) -> dict[str, dict]:
    """One answer per question in ``mode``, appended to ``path`` as made; rows already there are kept.

    ``penalties`` go to :meth:`RAG.answer` (keep one ``path`` per setting)."""
    rows = read_rows(path)
    with open_for_append(path) as file:
        for question in progress([q for q in corpus.questions if q.id not in rows], desc=f"{corpus.name} {mode.name}"):
            answer = rag.answer(question.question, cache=mode.cache, order=mode.order, k=mode.k,
                                doc_cache=mode.doc_cache, max_new_tokens=max_new_tokens, **penalties)
            timings = answer.timings
            rows[question.id] = {"id": question.id, "output": answer.text, "answers": question.answers,
                                 "passage": answer.passages[0].doc_id if answer.passages else None,
                                 "seconds": timings["total"] - timings.get("cache_build", 0.0),
                                 "cache_build_s": timings.get("cache_build", 0.0)}
            file.write(json.dumps(rows[question.id]) + "\n")
            file.flush()
    return rows


def identical_share(rows: dict[str, dict], reference: dict[str, dict], ids: Sequence[str]) -> float:
    """The share of questions in ``ids`` whose output equals the reference mode's output."""
    return float(np.mean([rows[i]["output"] == reference[i]["output"] for i in ids])) if ids else float("nan")


def retrieval_scores(rows: Sequence[dict]) -> dict[str, float]:
    return {"top1": float(np.mean([row["top5"][:1] == [row["gold"]] for row in rows])),
            "top5": float(np.mean([row["gold"] in row["top5"] for row in rows])), "n": len(rows)}


def answer_scores(rows: Sequence[dict]) -> dict[str, float]:
    """Mean match, exact match, F1, degenerate rate and seconds over answer rows (fractions in [0, 1])."""
    def mean(values) -> float:
        return float(np.mean(list(values))) if rows else float("nan")

    return {"match": mean(metrics.contains_answer(r["output"], r["answers"]) for r in rows),
            "exact_match": mean(metrics.exact_match(r["output"], r["answers"]) for r in rows),
            "f1": mean(metrics.token_f1(r["output"], r["answers"]) for r in rows),
            "degenerate": mean(metrics.is_degenerate(r["output"]) for r in rows),
            "seconds": mean(r["seconds"] for r in rows), "n": len(rows)}
