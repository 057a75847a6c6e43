"""The README's "Core benchmarks" table, printed from the records in benchmarks/results.

    python benchmarks/core_table.py

Each row names the record it comes from and the commit that record was measured at;
tests/test_provenance.py checks that the README holds exactly these lines.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# The records the table reads, in the order of its rows.
RECORDS = ("embed_throughput.json", "generate_speed.json", "generate_speed_llamacpp.json", "gradcache_memory_cpu.json")


def figure(value: float) -> str:
    """Three significant figures, thousands separated: 24.9, 149, 3,350."""
    rounded = float(f"{value:.3g}")
    return f"{rounded:,.0f}" if rounded >= 100 else f"{rounded:.3g}"


def source(name: str, record: dict) -> str:
    """The record's file and where it was measured: its commit, and whether the tree was clean."""
    provenance = record.get("provenance") or record  # older records kept these keys at the top level
    commit = provenance.get("commit")
    clean = {True: ", clean", False: ", not clean"}.get(provenance.get("clean"), ", clean not recorded")
    state = f"`{commit}`{clean}" if commit else "no commit recorded"
    return f"[`{name}`](benchmarks/results/{name}), {state}"


def rows(records: dict[str, dict]) -> list[list[str]]:
    embed, generate, llamacpp, gradcache = (records[name] for name in RECORDS)
    embed_source, generate_source = source(RECORDS[0], embed), source(RECORDS[1], generate)

    encode, raw, *minilm = embed["rows"]
    table = [[f"`encode` tokens/s vs raw transformers forward on the same batches ({embed['texts']} MedQuAD "
              f"answers, max {embed['args']['max_length']} tokens)", figure(encode["tokens/s"]), figure(raw["tokens/s"]),
              f"**{encode['ratio vs raw HF']:.2f}x** (goal >= 0.9x)", embed_source]]
    if minilm:
        table.append(["all-MiniLM-L6-v2 via sentence-transformers, same texts (for context: 22M params vs 135M)", "",
                      figure(minilm[0]["tokens/s"]), "", embed_source])
    cold = embed["cold_start_to_first_embedding_s"]
    table += [["padding waste of length-sorted batches", f"{100 * embed['padding_fraction']:.1f}%", "", "", embed_source],
              ["cold start of a fresh process to its first embedding (best of 2)", f"{cold:.2f} s", "",
               f"goal < 3 s: {'met' if cold < 3 else 'missed'}", embed_source]]

    systems = {row["system"]: row for row in generate["rows"]}
    ours, theirs = systems["gritkit generate"], systems["transformers generate"]
    int8, llama = systems["gritkit generate, quantize='int8'"], systems["llama.cpp (Q4_1 GGUF)"]
    new_tokens = generate["args"]["new_tokens"]
    table += [[f"`generate` tokens/s, greedy, {new_tokens} tokens", figure(ours["tokens/s"]),
               f"transformers {figure(theirs['tokens/s'])}", f"{ours['tokens/s'] / theirs['tokens/s']:.2f}x", generate_source],
              ["`generate` tokens/s vs llama.cpp on the same GGUF (Q4_1)", figure(ours["tokens/s"]),
               figure(llama["tokens/s"]), f"**{ours['speed vs llama.cpp']:.2f}x**", generate_source],
              ['`generate` with `from_pretrained(quantize="int8")` vs llama.cpp', figure(int8["tokens/s"]),
               figure(llama["tokens/s"]), f"**{int8['speed vs llama.cpp']:.2f}x**", generate_source]]

    f16 = [row for row in llamacpp["rows"]
           if row["system"] == "gritkit llamacpp backend, f16" and row["prompt"].startswith("short")]
    table.append(['`generate` with `generation_backend="llamacpp"` (f16 export) vs llama-cpp-python on the same file, '
                  f"short prompt, {' / '.join(str(row['threads']) for row in f16)} threads "
                  "([docs/gguf.md](docs/gguf.md#measured-speed-and-quality))",
                  " / ".join(figure(row["tokens/s"]) for row in f16),
                  " / ".join(figure(row["plain llama-cpp-python tokens/s"]) for row in f16),
                  "**" + " / ".join(f"{row['ratio to llama-cpp-python']:.2f}x" for row in f16) + "**",
                  source(RECORDS[2], llamacpp)])

    measured = [row for row in gradcache["rows"] if "peak_extra_mib" in row]
    one_pass = [row for row in measured if not row["gradcache"]]
    cached = [row for row in measured if row["gradcache"]]
    table.append([f"GradCache peak memory, contrastive batch {cached[0]['batch_size']} -> {cached[-1]['batch_size']} "
                  f"({gradcache['args']['model']} model, LoRA)",
                  f"{cached[0]['peak_extra_mib']:,.0f} -> {cached[-1]['peak_extra_mib']:,.0f} MiB",
                  f"one pass {one_pass[0]['peak_extra_mib']:,.0f} -> {one_pass[-1]['peak_extra_mib']:,.0f} MiB",
                  "flat" if cached[-1]["peak_extra_mib"] < 2 * cached[0]["peak_extra_mib"] else "grows",
                  source(RECORDS[3], gradcache)])
    return table


def markdown(results: Path = RESULTS) -> str:
    """The table as Markdown, from the records under ``results``."""
    records = {name: json.loads((results / name).read_text()) for name in RECORDS}
    lines = ["| benchmark | gritkit | baseline | ratio | record, commit |", "|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(records)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
