"""Print docs/gritsmol.md's gritsmol v2 tables from the results files (nothing is typed by hand); the first,
issue 11's targets against the shipped default, stands in the README too.

    python recipes/gritsmol_v2_table.py
Columns: MiniLM and v1 (results/ablation, results/gritsmol-v2), the GPU arms (results/gritsmol-v2-gpu,
recipes/device/README.md), the CPU CoSENT stage on top of GPU norag (recipes/gritsmol_v2_cosent.yaml) and
the short chat stage after it (recipes/gritsmol_v2_cosent_chat.yaml; both in
results/gritsmol-v2-cosent), the CPU cache-aware RAG stage on self-distilled targets after that
(recipes/gritsmol_v2_rag.yaml, results/gritsmol-v2-rag), and the same stage with the uncached path anchored
(recipes/gritsmol_v2_rag_anchored.yaml, results/gritsmol-v2-rag-anchored) followed by 45 more of its steps
(recipes/gritsmol_v2_rag_anchored_more.yaml, results/gritsmol-v2-rag-anchored-more) and by 99 steps on fresh
self-targets, which shipped until stage 10 (recipes/gritsmol_v2_rag_fresh.yaml, results/gritsmol-v2-rag-fresh), then 99 steps
with AdversarialQA targets beside them, measured and not shipped (recipes/gritsmol_v2_rag_aqa.yaml,
results/gritsmol-v2-rag-aqa), and stage 9 on top of stage 7: those streams on doc and query caching only, with
short targets (recipes/gritsmol_v2_rag_short.yaml, results/gritsmol-v2-rag-short), and stage 10 on top of stage 7:
the four layouts at GPU scale in three arms (recipes/gritsmol_v2_rag_gpu.yaml, recipes/device/README.md,
results/gritsmol-v2-rag-gpu), whose gold + distill arm ships; the last tables set stage 10's greedy answers
beside those with its decoding default, frequency_penalty 0.5 (results/gritsmol-v2-rag-gpu/freq0.5-*.json,
default-generative-100.json); and stage 12, stage 10 extrapolated one more step away from stage 7 without training
(gritkit extrapolate-adapter; STEPS=stage12 recipes/gritsmol_v2.sh, results/gritsmol-v2-extrap), which ships; and stage 13,
stage 12 + 178 steps of stage 10's recipe on a lent GPU on stage 12's own self-targets, measured and not shipped
(recipes/device/README.md, results/gritsmol-v2-rag-gpu13; its gold + distill arm, and a `docs` arm beside it); and stage 14,
stage 13 extrapolated one more step away from stage 12 without training, measured and not shipped (STEPS=stage14
recipes/gritsmol_v2.sh, results/gritsmol-v2-extrap13); and stage 15c, stage 12 + CPU steps on SQuAD-style RAG targets
(AdversarialQA, Quoref), RAG only, measured and not shipped (recipes/gritsmol_v2_rag_quoref_cpu.yaml,
results/gritsmol-v2-rag-quoref-cpu); and stage 16c, stage 15c's recipe with locate-and-copy questions beside its QA rows,
RAG only, measured and not shipped (recipes/gritsmol_v2_rag_reading_cpu.yaml, results/gritsmol-v2-rag-reading-cpu); and
stage 17c, stage 15c's recipe with hidden-state distillation of the cached run (rag_hidden_weight), measured and not
shipped (recipes/gritsmol_v2_rag_hidden_cpu.yaml, results/gritsmol-v2-rag-hidden-cpu). The earlier
CPU v2 candidate's files stay in results/gritsmol-v2. A cell is "–" where that run was not measured.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results"
SUITES = ("sentence", "reranking", "retrieval", "sts-full", "msmarco-full", "generative-100")


def evaluated(prefix: str, rag: str | None = None) -> tuple[dict[str, str], str]:
    """A column evaluated by recipes/gritsmol_v2.sh: ``{prefix}-{suite}.json`` per suite, and its RAG file."""
    return {suite: f"{prefix}-{suite}.json" for suite in SUITES}, rag or f"{prefix}-rag.json"


STAGE10 = "stage 7 + 137 GPU steps, gold + distill (stage 10)"
SHIPPED = "stage 10 extrapolated one more step from stage 7 (stage 12, shipped)"
STAGE13 = "stage 12 + 178 GPU steps, gold + distill (stage 13, not shipped)"
STAGE14 = "stage 13 extrapolated one more step from stage 12 (stage 14, not shipped)"
ARMS = {  # column: (eval-record files by suite, RAG results file)
    "MiniLM": ({"sentence": "ablation/minilm-sentence.json", "reranking": "ablation/minilm-reranking.json",
                "retrieval": "ablation/minilm-retrieval.json", "sts-full": "gritsmol-v2/minilm-sts-full.json",
                "msmarco-full": "gritsmol-v2-rag-anchored-more/minilm-msmarco-full.json"}, None),
    "v1": ({"sentence": "ablation/unified-sentence.json", "reranking": "ablation/unified-reranking.json",
            "retrieval": "ablation/unified-retrieval.json", "sts-full": "gritsmol-v2/v1-sts-full.json",
            "msmarco-full": "gritsmol-v2/v1-msmarco-full.json", "generative-100": "gritsmol-v2/v1-generative-100.json"},
           "gritsmol-v2/v1-rag.json"),
    "GPU norag": evaluated("gritsmol-v2-gpu/norag", "gritsmol-v2-gpu/norag-rag-all.json"),  # + query_doc, doc_query
    "GPU distill": evaluated("gritsmol-v2-gpu/distill"),
    "GPU gold-distill": evaluated("gritsmol-v2-gpu/gold-distill"),
    "norag + CoSENT": evaluated("gritsmol-v2-cosent/cosent"),
    "+ chat": evaluated("gritsmol-v2-cosent/cosent-chat"),
    "+ RAG stream, live teacher": evaluated("gritsmol-v2-rag/rag"),
    "+ anchored RAG stream": evaluated("gritsmol-v2-rag-anchored/anchored"),
    "+ 45 more steps": evaluated("gritsmol-v2-rag-anchored-more/anchored-more"),
    "+ 99 steps, fresh targets (stage 7)": evaluated("gritsmol-v2-rag-fresh/fresh"),
    "+ 99 steps, AdversarialQA targets (not shipped)": evaluated("gritsmol-v2-rag-aqa/aqa"),
    "stage 7 + 75 steps on doc and query caching (stage 9, not shipped)": evaluated("gritsmol-v2-rag-short/short"),
    STAGE10: evaluated("gritsmol-v2-rag-gpu/gold-distill"),
    "stage 10's k = 1 arm (not shipped)": evaluated("gritsmol-v2-rag-gpu/k1"),
    # embedding and generative suites only: not shipped, so its RAG was not measured
    "stage 10 + 70 CPU steps, embedding-heavy (stage 11, not shipped)": (evaluated("gritsmol-v2-sts-anchor/sts-anchor")[0], None),
    # no training: stage 10 moved one more step of stage 7 -> stage 10 (gritkit extrapolate-adapter); RAG on whole corpora
    SHIPPED: (evaluated("gritsmol-v2-extrap/extrap1")[0], None),
    # stage 12 + 178 steps of stage 10's recipe on a lent H200 (recipes/device/README.md); RAG on whole corpora
    STAGE13: (evaluated("gritsmol-v2-rag-gpu13/gold-distill")[0], None),
    # no training: stage 13 moved one more step of stage 12 -> stage 13; RAG on whole corpora
    STAGE14: (evaluated("gritsmol-v2-extrap13/extrap13")[0], None),
}
EMBEDDING_ROWS = [("sentence", "stsb", 200), ("sentence", "mrpc", 200), ("sentence", "banking77", 200),
                  ("sentence", "twentynewsgroups", 200), ("reranking", "trecqa", 30), ("retrieval", "msmarco", 5)]
OTHER_ROWS = [("sts-full", "stsb", "stsb, with the STS instruction (1,379)"),
              ("sts-full", "stsb_noinstruction", "stsb, no instruction (1,379)"),
              ("sts-full", "stsb/spearman_unseen", "stsb, with the instruction, the 1,367 pairs not in STS-B train"),
              ("sts-full", "stsb_noinstruction/spearman_unseen", "stsb, no instruction, the 1,367 pairs not in STS-B train"),
              ("msmarco-full", "msmarco", "msmarco nDCG@10, every query with a positive, over all 5,000 passages"),
              ("generative-100", "mmlu", "mmlu (100)"), ("generative-100", "perplexity", "perplexity (100, lower is better)"),
              ("generative-100", "nq_open", "nq_open closed book (100)")]
RAG_MODES = [("rag_doc_first", "RAG doc-first (uncached)"), ("rag_query_first", "RAG query-first (uncached)"),
             ("doc", "doc caching, bidirectional"), ("query", "query caching"),
             ("query_doc", "query-doc caching, bidirectional"), ("doc_query", "doc-query caching, bidirectional"),
             ("doc_causal", "doc caching, causal states")]


def records(path: str | None) -> dict[str, float]:
    file = ROOT / path if path else None
    if file is None or not file.is_file():
        return {}
    rows = json.loads(file.read_text())
    # "task/metric" names a secondary metric (e.g. stsb/spearman_unseen)
    return {**{row["task"]: row["value"] for row in rows},
            **{f"{row['task']}/{name}": value for row in rows for name, value in row.get("extra", {}).items()}}


def cell(value: float | None, task: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if task == "perplexity" else f"{100 * value:.1f}"


def mean(values: list[float | None]) -> float | None:
    return sum(values) / len(values) if None not in values else None


def embedding_scores(name: str, msmarco_suite: str = "retrieval") -> list[float | None]:
    """An arm's scores on EMBEDDING_ROWS; ``msmarco_suite="msmarco-full"`` takes msmarco over all 5,000 passages
    and every query with a positive (issue 11's protocol) in place of its 5 queries."""
    return [records(ARMS[name][0].get(msmarco_suite if task == "msmarco" else suite)).get(task)
            for suite, task, _ in EMBEDDING_ROWS]


def main() -> None:
    names = list(ARMS)
    targets_table()
    print("\n| task | n | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names))
    scores = {name: embedding_scores(name) for name in names}
    for row, (_, task, n) in enumerate(EMBEDDING_ROWS):
        print(f"| {task} | {n} | " + " | ".join(cell(scores[name][row]) for name in names) + " |")
    print("| **embedding average** | | " + " | ".join(cell(mean(scores[name])) for name in names) + " |")
    print("| **embedding average, msmarco over all 5,000 passages** | | " + " | ".join(
        cell(mean(embedding_scores(name, "msmarco-full"))) for name in names) + " |")
    for suite, task, label in OTHER_ROWS:
        values = [records(ARMS[name][0].get(suite)).get(task) for name in names]
        print(f"| {label} | | " + " | ".join(cell(v, task) for v in values) + " |")

    rag = {name: _rag(ARMS[name][1]) for name in names if ARMS[name][1]}
    print("\n| TyDi QA dev-en, 60 questions: match / EM / degenerate | " + " | ".join(rag) + " |\n|---|" + "---:|" * len(rag))
    for mode, label in RAG_MODES:
        print(f"| {label} | " + " | ".join(_rag_cell(modes.get(mode)) for modes in rag.values()) + " |")
    print("| retrieval top-1 | " + " | ".join(
        cell(r["_retrieval"]["top1"]) if r else "–" for r in rag.values()) + " |")
    full_rag_table()
    decoding_table()


def targets_table() -> None:
    """Issue 11's targets against the shipped default (stage 12), stage 13 (trained on from it, not shipped) and
    stage 14 (stage 13 extrapolated, not shipped); RAG with the decoding default."""
    columns = {SHIPPED: STAGE12_RAG, STAGE13: STAGE13_RAG, STAGE14: STAGE14_RAG}
    measured = {name: _targets(name, rag) for name, rag in columns.items()}
    print("| issue 11's target | shipped default (stage 12) | met | stage 13 (not shipped) | met | stage 14 (not shipped) | met |"
          "\n|---|---|---|---|---|---|---|")
    for row, (target, _, _) in enumerate(measured[SHIPPED]):
        cells = [f"{value} | {'–' if met is None else 'yes' if met else 'no'}"
                 for value, met in (measured[name][row][1:] for name in columns)]
        print(f"| {target} | " + " | ".join(cells) + " |")


def _targets(name: str, rag_files: dict[str, tuple[str, ...]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured value, met) for one arm: its RAG files by corpus and its eval records."""
    rows, corpora = [], {"tydiqa": "TyDi QA dev-en, 440", "squad": "SQuAD dev sample, 300"}
    answers = {corpus: _modes(rag_files[corpus], corpus) for corpus in corpora}
    for corpus, label in corpora.items():
        modes = {mode: row["match"] for mode, row in answers[corpus].items()}
        for cached, uncached, target, within in (("doc", "rag_doc_first", "doc caching match >= doc-first RAG", 0.0),
                                                 ("query", "rag_query_first",
                                                  "query caching within 3 points of query-first RAG", 0.03)):
            if cached in modes and uncached in modes:
                rows.append((f"{target} ({label})", f"{100 * modes[cached]:.1f} vs {100 * modes[uncached]:.1f}",
                             modes[uncached] - modes[cached] <= within))
            else:
                rows.append((f"{target} ({label})", "not measured", None))
    labels = dict(FULL_RAG_MODES)
    measured = [(row["degenerate"], labels[mode], corpora[corpus])
                for corpus in corpora for mode, row in answers[corpus].items()]
    every_mode = len(measured) == 2 * len(FULL_RAG_MODES) - 2  # all but causal doc caching, on both corpora
    worst = max(measured)
    rows.append(("degenerate answers < 2% in every mode, both corpora",
                 "at most {:.1f}% ({}, {})".format(100 * worst[0], *worst[1:])
                 + ("" if every_mode else f" in the {len(measured)} modes measured"),
                 False if worst[0] >= 0.02 else True if every_mode else None))
    sts = records(ARMS[name][0]["sts-full"])
    rows.append(("STS-B test (1,379) >= 78 with the STS instruction", cell(sts["stsb"]), sts["stsb"] >= 0.78))
    rows.append(("STS-B test (1,379) >= 75 without one", cell(sts["stsb_noinstruction"]),
                 sts["stsb_noinstruction"] >= 0.75))
    for suite, label in (("retrieval", "msmarco 5 queries"), ("msmarco-full", "msmarco over all 5,000 passages")):
        arm, v1, minilm = (mean(embedding_scores(column, suite)) for column in (name, "v1", "MiniLM"))
        rows.append((f"embedding average >= v1 + 5 ({label}; goal: MiniLM)",
                     f"{cell(arm)}, v1 {cell(v1)}, MiniLM {cell(minilm)}",
                     None if None in (arm, v1) else arm >= v1 + 0.05))
    for task, label in (("mmlu", "MMLU (100)"), ("perplexity", "perplexity (100)"),
                        ("nq_open", "NQ-open closed book (100)")):
        value, (low, high) = records(ARMS[name][0]["generative-100"])[task], _v1_interval(task)
        within = value <= high if task == "perplexity" else value >= low
        rows.append((f"{label} no worse than v1 beyond v1's 95% interval", f"{cell(value, task)}, v1 interval "
                     f"{cell(low, task)}-{cell(high, task)}", within))
    return rows


def _v1_interval(task: str) -> tuple[float, float]:
    """v1's 95% interval on a generative-100 task: perplexity's bootstrap, a proportion's Wilson."""
    from gritkit.eval.metrics import wilson_interval

    rows = json.loads((ROOT / ARMS["v1"][0]["generative-100"]).read_text())
    row = next(row for row in rows if row["task"] == task)
    if "ci95_low" in row["extra"]:
        return row["extra"]["ci95_low"], row["extra"]["ci95_high"]
    return wilson_interval(round(row["value"] * row["n"]), row["n"])


def split_rag(prefix: str, tydiqa: tuple[str, ...], squad: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """A stage's RAG files by corpus, ``{prefix}-rag-440-{part}.json`` and ``{prefix}-rag-squad-{part}.json``:
    whole corpora, the modes split over several processes."""
    return {"tydiqa": tuple(f"{prefix}-rag-440-{part}.json" for part in tydiqa),
            "squad": tuple(f"{prefix}-rag-squad-{part}.json" for part in squad)}


STAGE12_RAG = split_rag("gritsmol-v2-extrap/extrap1", ("docs", "query", "norag", "querydoc", "docquery"),
                        ("docs", "query", "norag", "more"))
STAGE13_RAG = split_rag("gritsmol-v2-rag-gpu13/gold-distill", ("docs", "query", "norag"), ("docs", "query"))
STAGE14_RAG = split_rag("gritsmol-v2-extrap13/extrap13", ("docs", "query", "norag", "querydoc", "docquery"),
                        ("docs", "query", "norag", "more"))
STAGE15C_RAG = split_rag("gritsmol-v2-rag-quoref-cpu/quoref-cpu", ("docs", "query"), ("docs", "query"))
STAGE16C_RAG = split_rag("gritsmol-v2-rag-reading-cpu/reading-cpu", ("docs", "query"), ("docs", "query"))
STAGE17C_RAG = split_rag("gritsmol-v2-rag-hidden-cpu/hidden-cpu", ("docs", "query"), ("docs", "query"))
FULL_RAG = [  # (corpus title, model, corpus, results files): whole corpora, modes split over two processes
    ("TyDi QA dev-en, all questions", "stage 17c (not shipped), frequency_penalty 0.5 (its default)", "tydiqa",
     STAGE17C_RAG["tydiqa"]),
    ("TyDi QA dev-en, all questions", "stage 16c (not shipped), frequency_penalty 0.5 (its default)", "tydiqa",
     STAGE16C_RAG["tydiqa"]),
    ("TyDi QA dev-en, all questions", "stage 15c (not shipped), frequency_penalty 0.5 (its default)", "tydiqa",
     STAGE15C_RAG["tydiqa"]),
    ("TyDi QA dev-en, all questions", "stage 14 (not shipped), frequency_penalty 0.5 (its default)", "tydiqa", STAGE14_RAG["tydiqa"]),
    ("TyDi QA dev-en, all questions", "stage 13 (not shipped), frequency_penalty 0.5 (its default)", "tydiqa", STAGE13_RAG["tydiqa"]),
    ("TyDi QA dev-en, all questions", "stage 13's docs arm (not shipped), frequency_penalty 0.5", "tydiqa",
     ("gritsmol-v2-rag-gpu13/docs-rag-440-docs.json",)),
    ("TyDi QA dev-en, all questions", "stage 12 (shipped), frequency_penalty 0.5 (its default)", "tydiqa", STAGE12_RAG["tydiqa"]),
    ("TyDi QA dev-en, all questions", "stage 10, greedy", "tydiqa",
     ("gritsmol-v2-rag-gpu/gold-distill-rag-440-docs.json", "gritsmol-v2-rag-gpu/gold-distill-rag-440-query.json",
      "gritsmol-v2-rag-gpu/gold-distill-rag-440-more.json")),
    ("TyDi QA dev-en, all questions", "SmolLM2-135M-Instruct without an adapter", "tydiqa",
     ("gritsmol-v2-rag-gpu/base-rag-440-norag.json",)),
    ("TyDi QA dev-en, all questions", "stage 10's k = 1 arm (not shipped)", "tydiqa", ("gritsmol-v2-rag-gpu/k1-rag-440-cached.json",)),
    ("TyDi QA dev-en, all questions", "stage 10's distill arm (not shipped)", "tydiqa",
     ("gritsmol-v2-rag-gpu/distill-rag-440-cached.json",)),
    ("TyDi QA dev-en, all questions", "stage 7", "tydiqa",
     ("gritsmol-v2-rag-fresh/fresh-rag-440-docs.json", "gritsmol-v2-rag-fresh/fresh-rag-440-query.json")),
    ("TyDi QA dev-en, all questions", "stage 8 (not shipped)", "tydiqa",
     ("gritsmol-v2-rag-aqa/aqa-rag-440-docs.json", "gritsmol-v2-rag-aqa/aqa-rag-440-query.json")),
    ("TyDi QA dev-en, all questions", "stage 9 (not shipped)", "tydiqa",
     ("gritsmol-v2-rag-short/short-rag-440-docs.json", "gritsmol-v2-rag-short/short-rag-440-query.json")),
    ("TyDi QA dev-en, all questions", "stage 6", "tydiqa",
     ("gritsmol-v2-rag-anchored-more/default-rag-440-docs.json", "gritsmol-v2-rag-anchored-more/default-rag-440-query.json")),
    ("SQuAD v1.1 dev, fixed sample", "stage 12 (shipped), frequency_penalty 0.5 (its default)", "squad", STAGE12_RAG["squad"]),
    ("SQuAD v1.1 dev, fixed sample", "stage 13 (not shipped), frequency_penalty 0.5 (its default)", "squad", STAGE13_RAG["squad"]),
    ("SQuAD v1.1 dev, fixed sample", "stage 14 (not shipped), frequency_penalty 0.5 (its default)", "squad", STAGE14_RAG["squad"]),
    ("SQuAD v1.1 dev, fixed sample", "stage 15c (not shipped), frequency_penalty 0.5 (its default)", "squad",
     STAGE15C_RAG["squad"]),
    ("SQuAD v1.1 dev, fixed sample", "stage 16c (not shipped), frequency_penalty 0.5 (its default)", "squad",
     STAGE16C_RAG["squad"]),
    ("SQuAD v1.1 dev, fixed sample", "stage 17c (not shipped), frequency_penalty 0.5 (its default)", "squad",
     STAGE17C_RAG["squad"]),
    ("SQuAD v1.1 dev, fixed sample", "stage 10, greedy", "squad",
     ("gritsmol-v2-rag-gpu/gold-distill-rag-squad-docs.json", "gritsmol-v2-rag-gpu/gold-distill-rag-squad-query.json")),
    ("SQuAD v1.1 dev, fixed sample", "stage 7", "squad",
     ("gritsmol-v2-rag-fresh/fresh-rag-squad-docs.json", "gritsmol-v2-rag-fresh/fresh-rag-squad-query.json")),
    ("SQuAD v1.1 dev, fixed sample", "stage 8 (not shipped)", "squad",
     ("gritsmol-v2-rag-aqa/aqa-rag-squad-docs.json", "gritsmol-v2-rag-aqa/aqa-rag-squad-query.json")),
    ("SQuAD v1.1 dev, fixed sample", "stage 6", "squad",
     ("gritsmol-v2-rag-anchored-more/default-rag-squad-docs.json",
      "gritsmol-v2-rag-anchored-more/default-rag-squad-query.json")),
]
FULL_RAG_MODES = [("no_rag", "no RAG")] + RAG_MODES
# GRIT paper, Table 7 (GritLM-7B, Natural Questions, match), as quoted in issue 11, which gives its uncached
# RAG row (30.47) without the order of query and passage and quotes no other rows
PAPER_MATCH = {"no_rag": 21.00, "query": 25.46, "doc": 33.38}


def full_rag_table() -> None:
    """Stages 6-10 on all of TyDi QA dev-en and stages 6-8 and 10 on the SQuAD sample, where those runs exist."""
    for title, model, corpus, paths in FULL_RAG:
        modes, retrieval = {}, None
        for path in paths:
            found = _rag(path, corpus)
            retrieval = found.pop("_retrieval", retrieval)
            modes |= found
        if not modes:
            continue
        print(f"\n| {title}, {model} | n | match | EM | F1 | degenerate | paper, match (GritLM-7B, NQ) |"
              "\n|---|---:|---:|---:|---:|---:|---:|")
        for mode, label in FULL_RAG_MODES:
            if mode in modes:
                row = modes[mode]
                paper = f"{PAPER_MATCH[mode]:.2f}" if mode in PAPER_MATCH else ""
                print(f"| {label} | {row['n']} | " + " | ".join(f"{100 * row[key]:.1f}" for key in
                                                            ("match", "exact_match", "f1", "degenerate")) + f" | {paper} |")
        print(f"| retrieval top-1 / top-5 | | {100 * retrieval['top1']:.1f} / {100 * retrieval['top5']:.1f} | | | | |")
    print("\nPaper column: GritLM-7B on Natural Questions, match; its uncached RAG row is 30.47.")


STAGE10_GREEDY = split_rag("gritsmol-v2-rag-gpu/gold-distill", ("docs", "query", "more"), ("docs", "query"))
STAGE10_PENALISED = split_rag("gritsmol-v2-rag-gpu/freq0.5", ("docs", "query"), ("docs", "query", "more"))
NQ_OPEN = {"greedy": "gritsmol-v2-rag-gpu/gold-distill-generative-100.json",
           "frequency_penalty 0.5": "gritsmol-v2-rag-gpu/default-generative-100.json"}


def decoding_table() -> None:
    """Stage 10 answering greedily and with its default decoding (frequency_penalty 0.5), mode by mode."""
    for corpus, title in (("tydiqa", "TyDi QA dev-en, all questions"), ("squad", "SQuAD v1.1 dev, fixed sample")):
        greedy, penalised = _modes(STAGE10_GREEDY[corpus], corpus), _modes(STAGE10_PENALISED[corpus], corpus)
        if not penalised:
            continue
        print(f"\n| stage 10, {title} | n | greedy: match | degenerate | frequency_penalty 0.5: match | degenerate |"
              "\n|---|---:|---:|---:|---:|---:|")
        for mode, label in FULL_RAG_MODES:
            if mode in penalised:
                cells = [f"{100 * rows[mode][key]:.1f}" if mode in rows else "–"
                         for rows in (greedy, penalised) for key in ("match", "degenerate")]
                print(f"| {label} | {penalised[mode]['n']} | " + " | ".join(cells) + " |")
    nq = [records(path).get("nq_open") for path in NQ_OPEN.values()]
    print("\n| stage 10, NQ-open closed book (100) | " + " | ".join(NQ_OPEN) + " |\n|---|---:|---:|")
    print("| match | " + " | ".join(cell(value) for value in nq) + " |")


def _modes(paths: tuple[str, ...], corpus: str) -> dict:
    modes = {}
    for path in paths:
        modes |= {mode: row for mode, row in _rag(path, corpus).items() if mode != "_retrieval"}
    return modes


def _rag(path: str, corpus: str = "tydiqa") -> dict:
    """A RAG results file's modes of ``corpus``, and its retrieval scores under ``_retrieval``."""
    file = ROOT / path
    corpora = json.loads(file.read_text())["corpora"] if file.is_file() else {}
    if corpus not in corpora:
        return {}
    return {**corpora[corpus]["modes"], "_retrieval": corpora[corpus]["retrieval"]}


def _rag_cell(row: dict | None) -> str:
    if not row:
        return "–"
    return f"{100 * row['match']:.1f} / {100 * row['exact_match']:.1f} / {100 * row['degenerate']:.1f}"


if __name__ == "__main__":
    main()
