"""Compare results files across models: a Markdown table and a grouped bar chart (PNG).

Proportions (accuracy, exact match) show a 95% Wilson interval, perplexity its bootstrap interval;
"embedding average" and "generative average" rows average a model's bounded scores over every
task of that kind in the table (shown only where the model has them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gritkit.eval import metrics
from gritkit.results import Record, load_records
from gritkit.eval.tasks import TASKS

# Metrics that are not fractions in [0, 1]: shown as they are, and left out of the bar chart.
UNBOUNDED_METRICS = {"perplexity"}
PROPORTION_METRICS = {"accuracy", "exact_match"}
# Left out of the averages: unbounded, or not a quality score (open-ended generations are judged elsewhere).
UNAVERAGED_METRICS = UNBOUNDED_METRICS | {"completion_rate"}


def interval(record: Record) -> tuple[float, float] | None:
    """The record's 95% confidence interval, where it has one or it is a proportion."""
    if "ci95_low" in record.extra:
        return record.extra["ci95_low"], record.extra["ci95_high"]
    if record.metric in PROPORTION_METRICS and record.n > 0:
        return metrics.wilson_interval(round(record.value * record.n), record.n)
    return None


def display(record: Record) -> str:
    scale, digits = (1, 2) if record.metric in UNBOUNDED_METRICS else (100, 1)
    text = f"{scale * record.value:.{digits}f}"
    bounds = interval(record)
    return text + (f" [{scale * bounds[0]:.{digits}f}, {scale * bounds[1]:.{digits}f}]" if bounds else "")


def averages(table: dict[tuple[str, str], Record]) -> dict[str, dict[str, float | None]]:
    """kind -> model -> mean score over every averaged task of that kind in the table (None: some missing)."""
    models = list(dict.fromkeys(model for model, _ in table))
    result: dict[str, dict[str, float | None]] = {}
    for kind in ("embedding", "generative"):
        tasks = [task for task in dict.fromkeys(task for _, task in table)
                 if task.split(":")[0] in TASKS and TASKS[task.split(":")[0]].kind == kind
                 and all(table[key].metric not in UNAVERAGED_METRICS for key in table if key[1] == task)]
        if tasks:
            result[kind] = {model: (sum(table[(model, task)].value for task in tasks) / len(tasks)
                                    if all((model, task) in table for task in tasks) else None) for model in models}
    return result


def collect(paths: Sequence[str | Path]) -> dict[tuple[str, str], Record]:
    """(model, task) -> record over all files, tasks in the task table's order; a later file wins."""
    table: dict[tuple[str, str], Record] = {}
    for path in paths:
        for record in load_records(path):
            table[(record.model, record.task)] = record
    if not table:
        raise ValueError("no records in the given files")
    # Models in the order the files give them; tasks in the task table's order, unknown ones last.
    models = {model: index for index, model in enumerate(dict.fromkeys(model for model, _ in table))}
    tasks = {name: index for index, name in enumerate(TASKS)}
    return dict(sorted(table.items(), key=lambda item: (models[item[0][0]], tasks.get(item[0][1].split(":")[0], len(tasks)))))


def markdown_table(table: dict[tuple[str, str], Record]) -> str:
    """Tasks as rows, models as columns; fraction metrics as percentages; n = examples scored."""
    models = list(dict.fromkeys(model for model, _ in table))
    tasks = list(dict.fromkeys(task for _, task in table))
    lines = ["| task | metric | n | " + " | ".join(models) + " |", "|---|---|---|" + "---:|" * len(models)]
    for task in tasks:
        first = next(table[(model, task)] for model in models if (model, task) in table)
        counts = {table[(model, task)].n for model in models if (model, task) in table}
        n = str(first.n) if len(counts) == 1 else "/".join(str(table[(m, task)].n) for m in models if (m, task) in table)
        cells = [display(table[(model, task)]) if (model, task) in table else "–" for model in models]
        lines.append(f"| {task} | {first.metric} | {n} | " + " | ".join(cells) + " |")
    for kind, means in averages(table).items():
        cells = [f"{100 * mean:.1f}" if mean is not None else "–" for mean in means.values()]
        lines.append(f"| **{kind} average** | | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict[tuple[str, str], Record], path: str | Path) -> Path:
    """Grouped bars: one group per task, one bar per model (percent), 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys(model for model, _ in table))
    tasks = [task for task in dict.fromkeys(task for _, task in table)
             if all(table[key].metric not in UNBOUNDED_METRICS for key in table if key[1] == task)]
    width = 0.8 / max(len(models), 1)
    figure, axes = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 4))
    for offset, model in enumerate(models):
        values = [100 * table[(model, task)].value if (model, task) in table else np.nan for task in tasks]
        positions = np.arange(len(tasks)) + offset * width - 0.4 + width / 2
        axes.bar(positions, values, width, label=model)
        bounds = [(i, interval(table[(model, task)])) for i, task in enumerate(tasks) if (model, task) in table]
        bounds = [(i, b) for i, b in bounds if b]
        if bounds:
            low = [values[i] - 100 * b[0] for i, b in bounds]
            high = [100 * b[1] - values[i] for i, b in bounds]
            axes.errorbar([positions[i] for i, _ in bounds], [values[i] for i, _ in bounds], yerr=[low, high],
                          fmt="none", ecolor="black", elinewidth=0.6, capsize=1.5)
    axes.set_xticks(np.arange(len(tasks)), [f"{task}\n{table[next(k for k in table if k[1] == task)].metric}" for task in tasks],
                    fontsize=8, rotation=30, ha="right")
    axes.set_ylabel("score (%)")
    axes.set_ylim(0, 100)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(paths: Sequence[str | Path], output_dir: str | Path | None = None) -> str:
    """The Markdown comparison of ``paths``; with ``output_dir``, also writes report.md and report.png there."""
    table = collect(paths)
    text = markdown_table(table)
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "report.md").write_text(text)
        bar_chart(table, output_dir / "report.png")
    return text
