"""Every figure table in the README and docs that comes from results files matches those files exactly.

A table here is regenerated with ``gritkit report``'s own code from the files its documented command
wrote; editing a figure by hand, or re-running an evaluation without updating the page, fails this.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gritkit.eval.report import collect, markdown_table

ROOT = Path(__file__).resolve().parents[1]
ABLATION_MODELS = ("minilm", "base", "embedding-only", "generative-only", "unified")
ABLATION_FILES = [path for model in ABLATION_MODELS for path in sorted(ROOT.glob(f"results/ablation/{model}-*.json"))]

# (page, the results files in the order of its `gritkit report` command)
TABLES = {
    "README ablation": ("README.md", ABLATION_FILES),
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
    """The README's gritsmol v2 tables are exactly what recipes/gritsmol_v2_table.py prints from the results."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("gritsmol_v2_table", ROOT / "recipes" / "gritsmol_v2_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        script.main()
    tables = [line for line in printed.getvalue().splitlines() if line.startswith("|")]
    assert len(tables) > 20
    readme = (ROOT / "README.md").read_text().splitlines()
    missing = [line for line in tables if line not in readme]
    assert not missing, f"README's gritsmol v2 tables differ from the results files: {missing[:3]}"
