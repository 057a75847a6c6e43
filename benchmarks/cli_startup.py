"""Start-up time of ``import gritkit`` and ``gritkit --help``, each as a whole new process.

    python benchmarks/cli_startup.py [--repeats 5]

Prints the median (and min/max) wall seconds per command and writes benchmarks/results/cli_startup.json.
The target (issue 12) is a median under 0.5 s: neither may import torch or transformers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import report

COMMANDS = {
    "import gritkit": [sys.executable, "-c", "import gritkit"],
    "gritkit --help": [sys.executable, "-m", "gritkit", "--help"],
    "gritkit index --help": [sys.executable, "-m", "gritkit", "index", "--help"],
    "python (nothing imported)": [sys.executable, "-c", "pass"],
}
HEAVY = "import sys, gritkit, gritkit.cli; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    heavy = subprocess.run([sys.executable, "-c", HEAVY], check=True, capture_output=True, text=True).stdout.strip()
    rows = []
    for name, command in COMMANDS.items():
        wall_seconds(command)  # warm the file cache
        times = [wall_seconds(command) for _ in range(args.repeats)]
        rows.append({"command": name, "median_s": round(statistics.median(times), 3),
                     "min_s": round(min(times), 3), "max_s": round(max(times), 3), "repeats": args.repeats})
    report("cli_startup", rows, {"heavy_modules_imported_by_cli": heavy})
    print(f"heavy modules imported by `import gritkit` + the CLI: {heavy}")


if __name__ == "__main__":
    main()
