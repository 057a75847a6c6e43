"""Every benchmark table of the README and docs that benchmarks/doc_tables.py renders matches its records.

A hand-copied figure, or a record re-measured without updating its page, fails here; print the
current tables with ``python benchmarks/doc_tables.py``.
"""

from __future__ import annotations

import pytest

from test_provenance import ROOT, benchmark_script, table_in

DOC_TABLES = benchmark_script("doc_tables")


@pytest.mark.parametrize("name", DOC_TABLES.TABLES)
def test_page_table_is_printed_from_its_records(name):
    page, records, _ = DOC_TABLES.TABLES[name]
    uncited = [record for record in records if record not in (ROOT / page).read_text()]
    assert not uncited, f"{page} shows {name} but does not cite {uncited}"
    for block in DOC_TABLES.markdown(name).split("\n\n"):
        expected = block.splitlines()
        assert table_in(page, expected[0]) == expected, f"{name} differs from what its records render"
