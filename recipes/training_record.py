"""Summarise a finished training run (its metrics.jsonl and training_config.yaml) as a results record.

    python recipes/training_record.py runs/gritsmol-v2-cosent results/gritsmol-v2-cosent/training.json \
        --commit 1ea7225 --command "gritkit train recipes/gritsmol_v2_cosent.yaml --resume" --threads 2

The run itself does not know its commit or command, so they are given; the CPU model and the date of
the run's last step come from this machine and the metrics file (``--device`` names a machine elsewhere,
such as a lent GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

import yaml

from gritkit.results import cpu_model


def summary(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-20:]
    losses = sorted({key for row in rows for key in row if key.startswith("loss")})
    by_passages: dict[int, list[float]] = {}
    for row in (row for row in last if "loss_embedding" in row):
        by_passages.setdefault(row.get("contrastive_passages", 0), []).append(row["loss_embedding"])
    return {"steps": rows[-1]["step"], "median_step_s": statistics.median(row["step_s"] for row in rows[2:] or rows),
            "mean_last20": {key: statistics.mean(row[key] for row in last if key in row) for key in losses},
            "loss_embedding_last20_by_contrastive_passages": {str(k): statistics.mean(v) for k, v in by_passages.items()},
            "config": yaml.safe_load((run / "training_config.yaml").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", help="where the run trained, when not on this machine's CPU (e.g. a lent GPU)")
    args = parser.parse_args()
    finished = datetime.datetime.fromtimestamp((args.run / "metrics.jsonl").stat().st_mtime, datetime.timezone.utc)
    record = {"run": str(args.run), **summary(args.run),
              "provenance": {"commit": args.commit, "clean": True, "command": args.command,
                             **({"device": args.device} if args.device else {"cpu": cpu_model()}),
                             "threads": args.threads, "date": finished.isoformat(timespec="seconds")}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "config"}, indent=1))


if __name__ == "__main__":
    main()
