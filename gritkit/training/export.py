"""Turn a training run into a folder fit to ship: the adapter (in half precision), how it was trained,
how it scored, and a model card. ``gritkit export-adapter runs/gritsmol-unified gritkit/adapters/gritsmol``.

The result is a PEFT adapter directory, so ``GritLM.from_pretrained(folder)`` loads it like the run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from gritkit import loading
from gritkit.results import Record, load_records, save_records

ADAPTER_WEIGHTS = "adapter_model.safetensors"
COPIED_FILES = ("adapter_config.json", "training_config.yaml", "metrics.jsonl", loading.GENERATION_CONFIG)


def export_adapter(run_dir: str | Path, destination: str | Path, *, results: Sequence[str | Path] = (),
                   dtype: torch.dtype = torch.float16, title: str = "gritkit GRIT adapter") -> Path:
    """Write ``destination`` from the adapter in ``run_dir``, replacing any older export.

    ``results``: ``gritkit eval`` JSON files, merged into ``eval.json`` and tabled in the card.
    Built in a sibling staging folder and swapped in at the end, so a failure keeps the old export.
    """
    run_dir, destination = Path(run_dir), Path(destination)
    if not (run_dir / "adapter_config.json").is_file() or not (run_dir / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(f"{run_dir} holds no PEFT adapter ({ADAPTER_WEIGHTS} and adapter_config.json)")
    records = [record for path in results for record in load_records(path)]
    staging = destination.with_name(destination.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in COPIED_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, staging / name)
    weights = {key: tensor.to(dtype).contiguous() for key, tensor in load_file(run_dir / ADAPTER_WEIGHTS).items()}
    save_file(weights, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    if records:
        save_records(records, staging / "eval.json")
    stages = training_stages(run_dir)
    if len(stages) > 1:
        (staging / "training_stages.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    (staging / "README.md").write_text(model_card(title, json.loads((run_dir / "adapter_config.json").read_text()),
                                                  sum(t.numel() for t in weights.values()), records, stages,
                                                  loading.generation_defaults(staging),
                                                  loss_log=(staging / "metrics.jsonl").is_file()))
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


def training_stages(run_dir: Path) -> list[dict]:
    """The training configs of ``run_dir`` and of every run it continued (its ``model`` key naming a run
    folder that is still on disk, or an exported adapter, ``default`` included, whose recorded stages are
    taken as they are), the first stage first."""
    stages, folder = [], run_dir
    while (folder / "training_config.yaml").is_file() and len(stages) < 20:
        config = yaml.safe_load((folder / "training_config.yaml").read_text())
        stages.insert(0, {"run": str(folder), **config})
        spec = str(config.get("model", ""))
        parent = loading.SHIPPED_ADAPTER_DIR if spec == loading.DEFAULT_SPEC else Path(spec)
        if (parent / "training_stages.yaml").is_file():  # an export of several stages
            return yaml.safe_load((parent / "training_stages.yaml").read_text()) + stages
        if parent == folder or not parent.is_dir():
            break
        folder = parent
    return stages


def model_card(title: str, adapter_config: dict, parameters: int, records: list[Record], stages: Sequence[dict] = (),
               decoding: dict | None = None, loss_log: bool = True) -> str:
    """A short Markdown card: what the adapter is, how to load it, how it was trained and scored.

    ``stages``: :func:`training_stages`; a stage written by ``gritkit extrapolate-adapter`` is told apart."""
    extrapolated = sum("extrapolate_from" in stage for stage in stages)
    lines = [f"# {title}", "",
             (f"LoRA adapter (r={adapter_config.get('r')}, alpha={adapter_config.get('lora_alpha')}, "
              f"{parameters / 1e6:.1f}M parameters) on `{adapter_config.get('base_model_name_or_path')}`, "
              "trained with gritkit's GRIT objective (contrastive + next-token)."), "",
             "```python", "from gritkit import GritLM", "model = GritLM.from_pretrained(\"path/to/this/folder\")  # the shipped one: GritLM.from_pretrained()", "```", "",
             "Training options: `training_config.yaml`" + ("; loss per step: `metrics.jsonl`." if loss_log else ".")
             + (f" {'Made' if extrapolated else 'Trained'} in {len(stages)} stages, each continuing the one before"
                + (f" ({extrapolated} of them by `gritkit extrapolate-adapter`, without training)" if extrapolated else "")
                + ": `training_stages.yaml` holds every stage's options, the first stage first." if len(stages) > 1 else "")]
    if decoding:
        lines += ["", "Decoding defaults (`generation_config.json`; a call's own arguments override them): "
                  + ", ".join(f"`{name}` {value}" for name, value in decoding.items()) + "."]
    if records:
        lines += ["", "| task | metric | n | score |", "|---|---|---:|---:|"]
        lines += [f"| {r.task} | {r.metric} | {r.n} | {_score(r)} |" for r in records]
    return "\n".join(lines) + "\n"


def _score(record: Record) -> str:
    return f"{record.value:.2f}" if record.metric == "perplexity" else f"{100 * record.value:.1f}"
