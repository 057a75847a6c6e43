"""Every figure table in the README and docs that comes from results files matches those files exactly.

A table here is regenerated with ``gritkit report``'s own code from the files its documented command
wrote; editing a figure by hand, or re-running an evaluation without updating the page, fails this.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gritkit.eval.report import collect, markdown_table

ROOT = Path(__file__).resolve().parents[1]
ABLATION_MODELS = ("minilm", "base", "embedding-only", "generative-only", "unified")
ABLATION_FILES = [path for model in ABLATION_MODELS for path in sorted(ROOT.glob(f"results/ablation/{model}-*.json"))]

# (page, the results files in the order of its `gritkit report` command)
TABLES = {
    "docs/gritsmol.md ablation": ("docs/gritsmol.md", ABLATION_FILES),
    "results/ablation/report": ("results/ablation/report/report.md", ABLATION_FILES),
    "docs/eval.md base vs minilm": ("docs/eval.md", sorted(ROOT.glob("results/*.json"))),
    "results/report": ("results/report/report.md", sorted(ROOT.glob("results/*.json"))),
}


def table_in(page: str, header: str) -> list[str]:
    """The Markdown table of ``page`` that starts with ``header``: its consecutive '|' lines."""
    lines = (ROOT / page).read_text().splitlines()
    assert header in lines, f"{page} has no table starting {header!r}"
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("name", TABLES)
def test_table_matches_its_results_files(name):
    page, files = TABLES[name]
    assert files, f"no results files for {name}"
    expected = markdown_table(collect(files)).splitlines()
    assert table_in(page, expected[0]) == expected


def test_base_results_are_named_base():
    """``default`` means the shipped adapter; the untouched model's results say ``base``."""
    assert not list(ROOT.glob("results/default-*"))
    models = {model for model, _ in collect(sorted(ROOT.glob("results/*.json")))}
    assert models == {"base", "minilm"}


def test_gritsmol_v2_tables_match_their_results_files():
    """docs/gritsmol.md's tables, and the README's targets table (the first), are exactly what
    recipes/gritsmol_v2_table.py prints from the results."""
    import contextlib
    import io

    spec = importlib.util.spec_from_file_location("gritsmol_v2_table", ROOT / "recipes" / "gritsmol_v2_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main()
    tables = printed.getvalue().split("\n\n")
    assert len(tables) > 5
    targets = tables[0].splitlines()
    assert targets[0].startswith("| issue 11's target |")
    assert table_in("README.md", targets[0]) == targets
    page = (ROOT / "docs" / "gritsmol.md").read_text().splitlines()
    missing = [line for table in tables for line in table.splitlines() if line.startswith("|") and line not in page]
    assert not missing, f"docs/gritsmol.md's tables differ from the results files: {missing[:3]}"


# ---- benchmark records: every cited record states where, when and how it was measured ----

BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITATION = re.compile(r"benchmarks/results/([\w.*-]+\.json)")

def benchmark_script(name: str):
    """benchmarks/<name>.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def core_table():
    """benchmarks/core_table.py, the script that prints the README's Core benchmarks table."""
    return benchmark_script("core_table")


def cited_records() -> dict[str, str]:
    """Every benchmark record a page cites (name -> first page): by path outside code blocks, the
    records a documented command writes that exist, and the Core benchmarks table's sources."""
    cited = {name: "README.md Core benchmarks" for name in core_table().RECORDS}
    for page in PAGES:
        in_code = False
        for line in page.read_text().splitlines():
            in_code ^= line.lstrip().startswith("```")
            for pattern in CITATION.findall(line):
                names = [path.name for path in sorted(BENCHMARK_RESULTS.glob(pattern))]
                assert names or in_code, f"{page.name} cites {pattern}, which does not exist"
                for name in names:
                    cited.setdefault(name, page.name)
    return cited


def provenance_problems(record: dict) -> list[str]:
    """What the record's provenance lacks: commit, clean == true, command, CPU model, threads, date."""
    provenance = record.get("provenance")
    if not isinstance(provenance, dict):
        return ["no 'provenance'"]
    problems = [f"no {key}" for key in ("commit", "command", "cpu", "torch_threads", "date") if not provenance.get(key)]
    if provenance.get("clean") is not True:
        problems.append("not measured at a clean commit")
    if provenance.get("date"):
        try:
            datetime.datetime.fromisoformat(provenance["date"])
        except (TypeError, ValueError):
            problems.append(f"date {provenance['date']!r} is not ISO 8601")
    return problems


def test_pages_cite_benchmark_records():
    assert {"embed_throughput.json", "cli_startup.json", "serve_load.json"} <= set(cited_records())


@pytest.mark.parametrize("name", sorted(cited_records()))
def test_cited_benchmark_record_has_provenance(name):
    problems = provenance_problems(json.loads((BENCHMARK_RESULTS / name).read_text()))
    assert not problems, f"{name} (cited by {cited_records()[name]}): {', '.join(problems)}"


def test_readme_core_benchmarks_table_is_printed_from_its_records():
    """Every row of the Core benchmarks table is what benchmarks/core_table.py prints from the records."""
    expected = core_table().markdown().splitlines()
    assert table_in("README.md", expected[0]) == expected


# Cited records outside the Core benchmarks table that benchmarks/refresh.sh re-measures as well.
REFRESHED = ("cli_startup.json", "compact_embeddings.json", "gguf_speed.json", "index_build.json",
             "index_search_hnsw.json", "rag_latency.json", "serve_abuse.json", "serve_load.json")


def test_refresh_script_reruns_every_core_and_refreshed_record():
    assert set(REFRESHED) <= set(cited_records())
    script = (ROOT / "benchmarks" / "refresh.sh").read_text()
    missing = [name for name in [*core_table().RECORDS, *REFRESHED] if name.removesuffix(".json") not in script]
    assert not missing, f"benchmarks/refresh.sh has no step for {missing}"


def test_training_record_summarises_a_run(tmp_path: Path) -> None:
    """recipes/training_record.py turns a run's metrics and config into a record with its provenance."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": step, "step_s": 1.0 + step, "loss": 4.0 - step, "loss_embedding": 2.0, "contrastive_passages": 64}
            for step in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run / "training_config.yaml").write_text("model: default\nmax_steps: 4\n")
    output = tmp_path / "record.json"
    subprocess.run([sys.executable, str(ROOT / "recipes/training_record.py"), str(run), str(output), "--commit", "abc1234",
                    "--command", "gritkit train x.yaml", "--threads", "2"], check=True, capture_output=True, cwd=ROOT)
    record = json.loads(output.read_text())
    assert record["steps"] == 4 and record["median_step_s"] == 4.5  # steps 3 and 4 (the first two are warm-up)
    assert record["mean_last20"]["loss"] == 1.5 and record["config"]["max_steps"] == 4
    assert record["provenance"]["commit"] == "abc1234" and record["provenance"]["cpu"]
