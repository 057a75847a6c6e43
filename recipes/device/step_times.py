"""Median seconds per training step of each run under a folder (from its metrics.jsonl), as JSON."""

import json
import statistics
import sys
from pathlib import Path

times = {}
for metrics in sorted(Path(sys.argv[1]).glob("*/metrics.jsonl")):
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    times[metrics.parent.name] = statistics.median(row["step_s"] for row in rows[2:] or rows)
print(json.dumps(times))
