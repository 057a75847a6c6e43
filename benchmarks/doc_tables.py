"""The benchmark tables of the README and docs/*.md, printed from the records in benchmarks/results.

    python benchmarks/doc_tables.py                  # every table, each under its page
    python benchmarks/doc_tables.py "docs/serve.md load"

Each renderer takes loaded records and returns the Markdown table(s) a page shows; the script that
writes a record prints its table with the same function. tests/test_doc_tables.py checks that each
page holds exactly these lines. (The README's Core benchmarks table is benchmarks/core_table.py.)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(header: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; ``align`` has a letter per column: l (left) or r (right)."""
    separator = "|" + "|".join("---:" if letter == "r" else "---" for letter in align) + "|"
    body = ["| " + " | ".join(map(str, row)) + " |" for row in [header, *rows]]
    return "\n".join([body[0], separator, *body[1:]])


def as_stored(record: dict, *columns: str) -> str:
    """The record's rows as stored, these of their keys (those present) as columns."""
    present = [column for column in columns if column in record["rows"][0]]
    return table(present, "l" * len(present), ([row[column] for column in present] for row in record["rows"]))


def index_build(record: dict) -> str:
    """docs/rag.md: documents/s of Index.add and the Ray build, and where the time goes."""
    header = ["method", "workers", "docs", "total s", "docs/s", "docs/s in embedding", "Ray start s",
              "model load s (per actor)", "embedding s (all actors)", "rest of pipeline s", "merge s"]
    seconds = ("ray_start_s", "model_load_s", "embed_s", "pipeline_other_s", "merge_s")
    return table(header, "l" + "r" * 10,
                 ([row["method"], row["workers"], row["docs"], f"{row['total_s']:.1f}", f"{row['docs_per_s']:.2f}",
                   f"{row['docs_per_s_embedding']:.2f}", *(f"{row[key]:.1f}" for key in seconds)]
                  for row in record["rows"]))


def index_search_hnsw(record: dict) -> str:
    """docs/rag.md: recall@10 and single-query latency of HNSW against exact search."""
    return table(["search", "efSearch", "vectors", "recall@10", "query latency (1 query, ms)", "build s"], "lrrrrr",
                 ([row["search"], row["ef_search"], f"{row['vectors']:,}", f"{row['recall_at_10']:.3f}",
                   f"{row['query_ms']:.2f}", f"{row['build_s']:.1f}"] for row in record["rows"]))


def index_precision(record: dict) -> str:
    """docs/rag.md: faiss bytes, latency and recall of float32, int8 and binary indexes (float32: no rescoring)."""
    header = ["precision", "search", "rescore multiplier", "faiss bytes per vector", "query ms",
              "recall@10 vs float32 exact", "nDCG@10"]
    return table(header, "llrrrrr",
                 ([row["precision"], row["search"], "-" if row["precision"] == "float32" else row["rescore_multiplier"],
                   f"{row['faiss_bytes_per_vector']:,.0f}", f"{row['query_ms']:.2f}",
                   f"{row['recall_at_10_vs_float32_exact']:.3f}", f"{row['ndcg_at_10']:.3f}"]
                  for row in record["rows"]))


def rag_latency(record: dict) -> str:
    """docs/rag.md: the paper's Table 7, every mode and length, then the per-document cache costs."""
    latency = record["latency"]
    lengths = list(latency["A"])
    cells = [(sample, n) for sample in ("A", "B") for n in lengths]

    def cell(mode: dict) -> str:
        change = f" ({mode['change_pct']:+.0f}%)" if "change_pct" in mode else ""
        return f"{mode['mean']:.2f} ± {mode['std']:.2f}{change}"

    modes = table(["Mode", *(f"{sample} L={n}" for sample, n in cells)], "l" * (len(cells) + 1),
                  ([label, *(cell(latency[sample][n]["modes"][label]) for sample, n in cells)]
                   for label in latency["A"][lengths[0]]["modes"]))
    documents = [latency["A"][n] for n in lengths]
    per_document = table(["Per document", *(f"L={n}" for n in lengths)], "l" * (len(lengths) + 1),
                         [["doc cache build, s (Sample A, apart)", *(f"{d['cache_build_s']:.2f}" for d in documents)],
                          ["KV bytes stored (fp16)", *(f"{d['kv_bytes'] / 1e6:.1f} MB" for d in documents)]])
    return f"{modes}\n\n{per_document}"


# README's Table 7 rows: (label, sample, cached mode, the uncached prompt of the same order, the paper's change).
TABLE_7_ROWS = (("Sample A ({n}-token doc), doc caching", "A", "Doc caching", "RAG doc-query", "-63%"),
                ("Sample A, query-doc caching", "A", "Query-doc caching", "RAG query-doc", ""),
                ("Sample B ({n}-token query), query caching", "B", "Query caching", "RAG query-doc", "-54%"))


def rag_latency_longest(record: dict) -> str:
    """README: Table 7's headline rows at the longest length, against the paper's (GritLM-7B) change."""
    n = max(record["latency"]["A"], key=int)
    rows = []
    for label, sample, mode, uncached, paper in TABLE_7_ROWS:
        modes = record["latency"][sample][n]["modes"]
        rows.append([label.format(n=n), f"{modes[uncached]['mean']:#.3g} s", f"{modes[mode]['mean']:#.3g} s",
                     f"{modes[mode]['change_pct']:+.0f}%", paper])
    return table(["", "uncached", "cached", "change", "paper (GritLM-7B)"], "lrrrr", rows)


def rag_doc_cache_cost(record: dict) -> str:
    """docs/rag.md: index time and KV bytes of each kind of passage states, and the answer latency from each."""
    header = ["document tokens", "index add: no states", "bidirectional states", "causal states",
              "KV bytes / token (bidir. / causal)", "answer: uncached doc-first", "doc, bidirectional", "doc, causal"]
    rows = {(row["length"], row["what"]): row for row in record["rows"]}
    lines = []
    for length in dict.fromkeys(row["length"] for row in record["rows"]):
        none, bidirectional, causal = (rows[length, f"index add, {kind} states"]
                                       for kind in ("none", "bidirectional", "causal"))
        uncached, *cached = (rows[length, f"answer, {label}"]["latency_s"]
                             for label in ("uncached doc-first", "doc, bidirectional", "doc, causal"))
        lines.append([f"{length:,}", f"{none['s_per_1k_tokens']:.1f} s / 1k tokens",
                      f"{bidirectional['s_per_1k_tokens']:.1f} s / 1k", f"{causal['s_per_1k_tokens']:.1f} s / 1k",
                      f"{bidirectional['kv_bytes_per_doc_token']:,.0f} / {causal['kv_bytes_per_doc_token']:,.0f}",
                      f"{uncached:#.3g} s",
                      *(f"{seconds:#.3g} s ({100 * (seconds / uncached - 1):+.0f}%)" for seconds in cached)])
    return table(header, "r" * 8, lines)


def rag_quality_tydiqa(record: dict) -> str:
    """docs/rag.md: the harness check on TyDi QA dev-en, every mode's match, EM, F1 and degenerate rate."""
    corpus = record["corpora"]["tydiqa"]
    retrieval = corpus["retrieval"]
    rows = [["retrieval top-1 / top-5", f"{100 * retrieval['top1']:.0f} / {100 * retrieval['top5']:.0f}", *[""] * 4]]
    for mode in corpus["modes"].values():
        same = next((f"{100 * share:.0f}%" for key, share in mode.items() if key.startswith("identical_to_")), "")
        rates = (f"{100 * mode[key]:.1f}" for key in ("match", "exact_match", "f1", "degenerate"))
        rows.append([mode["label"], *rates, same])
    return table([f"TyDi QA dev-en, {corpus['questions']} questions", "match %", "EM %", "F1 %", "degenerate %",
                  "same as uncached"], "lrrrrr", rows)


def gguf_speed(record: dict) -> str:
    """docs/gguf.md: llama-cpp-python on the exported default (and the package's Q4_1) against gritkit fp32."""
    header = ["system", "file", "tokens/s", "vs gritkit fp32", "greedy replies = gritkit fp32", "GRIT embedding cosine (min)"]
    rows = []
    for row in record["rows"]:
        speed = f"{row['speed vs gritkit fp32']:.1f}x"
        file_and_speed = [f"{row['file MB']} MB" if row["file MB"] else "", f"{row['tokens/s']:.1f}"]
        if row["export s"] == "-":  # gritkit itself, or a file it did not export
            rows.append([row["system"], *file_and_speed, speed, "", ""])
        else:  # gguf_speed.greedy_agreement compares 32-token replies
            rows.append([f"{row['system']} (export took {row['export s']:.0f} s)", *file_and_speed, f"**{speed}**",
                         row["greedy = gritkit"].replace("/", " of ") + " (32 tokens each)",
                         f"{row['embedding cosine (min)']:.4f} ({record['texts']} MedQuAD answers)"])
    return table(header, "lrrrrr", rows)


def generate_speed_llamacpp(record: dict) -> str:
    """docs/gguf.md: the llamacpp generation backend against plain llama-cpp-python and torch fp32."""
    header = ["threads", "prompt tokens", "system", "tokens/s", "plain llama-cpp-python, same file", "ratio",
              "llama-cpp-python, the backend's options", "ratio", "perplexity (vs fp32)", "greedy = fp32"]
    same_options, same_ratio = ("llama-cpp-python with the backend's options tokens/s",
                                "ratio to llama-cpp-python with the backend's options")

    def perplexity(row: dict) -> str:
        change = row["perplexity vs fp32"]
        return f"{row['perplexity']:.3f}" + (f" ({100 * change:+.2f}%)" if change else "")

    def ratio(row: dict, key: str, spread: str) -> str:
        low_high = row.get(spread)  # per-round lowest and highest, in records of alternating rounds
        return f"{row[key]:.2f}x" + (f" ({low_high[0]:.2f}-{low_high[1]:.2f})" if low_high else "")

    def with_options(row: dict) -> list[str]:
        if same_options not in row:  # the torch rows, and records written before the column existed
            return ["", ""]
        return [f"{row[same_options]:.1f}", ratio(row, same_ratio, "ratio range with the backend's options")]

    return table(header, "rrlrrrrrrr",
                 ([row["threads"], row["prompt"].rsplit("(", 1)[1].rstrip(")"), row["system"],
                   f"{row['tokens/s']:.1f}", f"{row['plain llama-cpp-python tokens/s']:.1f}",
                   ratio(row, "ratio to llama-cpp-python", "ratio range"), *with_options(row), perplexity(row), row["greedy = fp32"]]
                  for row in record["rows"]))


def compact_embeddings(record: dict) -> str:
    """docs/serve.md: the quality kept per dimensions and precision."""
    return as_stored(record, "dimensions", "precision", "bytes", "stsb_spearman", "stsb_kept_pct",
                     "msmarco_ndcg_at_10", "msmarco_kept_pct")


def serve_abuse(record: dict) -> str:
    """docs/serve.md: each abuse case's measure against its target."""
    return as_stored(record, "case", "measure", "value", "target", "pass")


SERVE_LOAD_PHASES = {"mixed": "mixed ({clients} clients)", "embeddings_batched": "embeddings only, micro-batched",
                     "embeddings_one_by_one": "embeddings only, `--max-batch-size 1`"}


def serve_load(record: dict) -> str:
    """docs/serve.md: requests, throughput and latency of each phase and kind of the load test."""
    rows = [[label.format(clients=record["clients"]), kind, stats["requests"],
             *(f"{stats[key]:#.3g}" for key in ("requests_per_s", "p50_s", "p95_s", "p99_s")), record[phase]["errors"]]
            for phase, label in SERVE_LOAD_PHASES.items() if phase in record
            for kind, stats in record[phase]["kinds"].items()]
    return table(["phase", "kind", "requests", "req/s", "p50 s", "p95 s", "p99 s", "errors"], "l" * 8, rows)


def gradcache_memory(record: dict) -> str:
    """docs/training.md: peak memory and time per example of one contrastive step, one pass against GradCache."""
    header = ["contrastive batch (queries)", "one pass: peak extra MiB",
              f"GradCache (chunk {record['args']['chunk_size']}): peak extra MiB", "one pass: ms/example",
              "GradCache: ms/example"]
    rows = {(row["batch_size"], row["gradcache"]): row for row in record["rows"]}

    def cell(size: int, gradcache: bool, key: str) -> str:
        row = rows[size, gradcache]
        return f"{row[key]:,.0f}" if key in row else "OOM" if row.get("oom") else "failed"

    return table(header, "rrrrr",
                 ([size, *(cell(size, gradcache, key) for key in ("peak_extra_mib", "ms_per_example")
                           for gradcache in (False, True))]
                  for size in dict.fromkeys(row["batch_size"] for row in record["rows"])))


TRAIN_STEP_RECORDS = ("train_step_tiny_main.json", "train_step_tiny.json")  # before and after batching the RAG stream


def train_step(before: dict, after: dict) -> str:
    """docs/training.md: the RAG stream's ATen operations, syncs and seconds per step, before and after."""
    header = ["model (CPU, 1 thread)", "RAG stream ATen ops per step", "`.item()` syncs", "s per RAG step", "results file"]
    old, new = (next(row for row in record["rows"] if row["stream"] == "rag") for record in (before, after))

    def line(label: str, row: dict, ops: str, name: str) -> list:
        return [label, ops, row["item_syncs"], f"{row['s_per_step']:.1f}", f"`benchmarks/results/{name}`"]

    fewer = f"{new['aten_ops']:,} ({old['aten_ops'] / new['aten_ops']:.1f}x fewer)"
    return table(header, "lllll",
                 [line(f"tiny Llama, commit {before['provenance']['commit']}", old, f"{old['aten_ops']:,}",
                       TRAIN_STEP_RECORDS[0]),
                  line("tiny Llama, this change", new, fewer, TRAIN_STEP_RECORDS[1])])


# name -> (page, the records its renderer takes, in order, renderer)
TABLES: dict[str, tuple[str, tuple[str, ...], Callable[..., str]]] = {
    "README Table 7 at the longest length": ("README.md", ("rag_latency.json",), rag_latency_longest),
    "docs/rag.md Index.add vs Ray": ("docs/rag.md", ("index_build.json",), index_build),
    "docs/rag.md HNSW recall and latency": ("docs/rag.md", ("index_search_hnsw.json",), index_search_hnsw),
    "docs/rag.md index precision": ("docs/rag.md", ("index_precision.json",), index_precision),
    "docs/rag.md Table 7": ("docs/rag.md", ("rag_latency.json",), rag_latency),
    "docs/rag.md passage states cost": ("docs/rag.md", ("rag_doc_cache_cost.json",), rag_doc_cache_cost),
    "docs/rag.md RAG quality, 10 TyDi QA questions": ("docs/rag.md", ("rag_qa_tydiqa_limit10.json",),
                                                      rag_quality_tydiqa),
    "docs/gguf.md exported default in llama-cpp-python": ("docs/gguf.md", ("gguf_speed.json",), gguf_speed),
    "docs/gguf.md llamacpp backend": ("docs/gguf.md", ("generate_speed_llamacpp.json",), generate_speed_llamacpp),
    "docs/serve.md compact embeddings": ("docs/serve.md", ("compact_embeddings.json",), compact_embeddings),
    "docs/serve.md abuse": ("docs/serve.md", ("serve_abuse.json",), serve_abuse),
    "docs/serve.md load": ("docs/serve.md", ("serve_load.json",), serve_load),
    "docs/training.md GradCache memory": ("docs/training.md", ("gradcache_memory_cpu.json",), gradcache_memory),
    "docs/training.md RAG stream per step": ("docs/training.md", TRAIN_STEP_RECORDS, train_step),
}


def markdown(name: str, results: Path = RESULTS) -> str:
    """The table(s) ``name`` of :data:`TABLES`, from its records under ``results``."""
    _, records, render = TABLES[name]
    return render(*(json.loads((results / record).read_text()) for record in records))


if __name__ == "__main__":
    for name in sys.argv[1:] or TABLES:
        print(f"{name}:\n\n{markdown(name)}\n")
