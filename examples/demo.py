"""The main job on the embedded default: embed, retrieve, answer with cached RAG, timings printed.

The index keeps both kinds of passage key/value states; the demo answers its questions from each,
then uses the kind that matched more gold answers (causal on a tie) and says which. Causal states (the
passage run in the doc-first chat layout at index time) give exactly the uncached doc-first answer;
bidirectional ones come free with the embedding pass, and the shipped default answers from them too
after its cache-aware RAG training (README, gritsmol v2).

    make demo        (or: .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import tempfile
import time

from rich.console import Console
from rich.table import Table

from gritkit import GritLM
from gritkit.eval.metrics import contains_answer
from gritkit.rag import RAG, Index

DOCUMENTS = [
    {"id": "eiffel", "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889."},
    {"id": "everest", "text": "Mount Everest, in the Himalayas on the border of Nepal and China, is Earth's highest mountain above sea level."},
    {"id": "python", "text": "Python is a programming language created by Guido van Rossum and first released in 1991."},
    {"id": "amazon", "text": "The Amazon River in South America is the largest river in the world by discharge volume of water."},
    {"id": "moon", "text": "The Moon is Earth's only natural satellite. Apollo 11 landed the first humans on it in 1969."},
    {"id": "coffee", "text": "Coffee is brewed from roasted coffee beans, the seeds of berries from Coffea plants."},
]
QUESTIONS = {"When was the Eiffel Tower completed?": "1889", "Who created Python?": "Guido van Rossum",
             "Which river has the largest discharge?": "Amazon"}


def main() -> None:
    console = Console()
    start = time.perf_counter()
    model = GritLM.from_pretrained()
    console.print(f"[bold]loaded[/] {model.name} in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    vectors = model.encode([d["text"] for d in DOCUMENTS])
    console.print(f"[bold]embedded[/] {len(vectors)} documents -> {vectors.shape} in {time.perf_counter() - start:.2f} s")

    with tempfile.TemporaryDirectory() as folder:
        index = Index.open(folder, model)
        start = time.perf_counter()
        index.add(DOCUMENTS, cache_kv="both")
        console.print(f"[bold]indexed[/] with both kinds of KV states in {time.perf_counter() - start:.2f} s")
        rag = RAG(model, index)

        matches = {}
        for kind in ("causal", "bidirectional"):
            answers = [rag.answer(q, cache="doc", doc_cache=kind, k=1, max_new_tokens=24).text for q in QUESTIONS]
            matches[kind] = sum(contains_answer(a, [gold]) for a, gold in zip(answers, QUESTIONS.values()))
            console.print(f"  doc caching from {kind} states: {int(matches[kind])}/{len(QUESTIONS)} correct {answers}")
        doc_cache = max(matches, key=matches.get)  # causal first, so it wins a tie
        why = "causal on a tie" if len(set(matches.values())) == 1 else "more correct answers"
        console.print(f"[bold]using {doc_cache} passage states for doc caching[/] ({why})")

        table = Table("question", "mode", "retrieve s", "prefill s", "generate s", "total s")
        for number, question in enumerate(QUESTIONS, start=1):
            console.print(f"\n[bold]Q{number}[/] {question}")
            for label, cache in (("none (doc-first)", "none"), (f"doc ({doc_cache})", "doc")):
                answer = rag.answer(question, cache=cache, order="doc_first", doc_cache=doc_cache, k=1,
                                    max_new_tokens=24)
                top = answer.passages[0]
                console.print(f"  {label:<20} top passage {top.doc_id} ({top.score:.3f}) -> {answer.text.strip()!r}")
                t = answer.timings
                table.add_row(f"Q{number}", label, *(f"{t[stage]:.3f}" for stage in ("retrieve", "prefill", "generate", "total")))
        console.print(table)
        index.close()


if __name__ == "__main__":
    main()
