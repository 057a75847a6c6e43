"""Move a LoRA adapter further along the direction its last training stage moved it.

``ΔW = ΔW_to + weight · (ΔW_to − ΔW_from)`` for every adapted layer, where ``from`` is an earlier
stage of the same adapter and ``to`` a later one: model extrapolation (ExPO, Zheng et al. 2024,
arXiv 2404.16792), a stand-in for more steps of that stage when compute is short. The arithmetic is
PEFT's ``add_weighted_adapter`` (``svd`` keeps the rank, ``cat`` is exact at twice the rank).
``gritkit extrapolate-adapter runs/stage10 --from runs/stage7 --weight 1.0 runs/stage10-x1``.

The result is a PEFT adapter folder like a training run's, with a ``training_config.yaml`` that
names both stages, so ``gritkit export-adapter`` ships it with its whole training history.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

from gritkit import loading

COMBINATIONS = ("svd", "cat")


def extrapolate_adapter(to_dir: str | Path, from_dir: str | Path, destination: str | Path, *,
                        weight: float = 1.0, combination: str = "svd", rank: int | None = None) -> Path:
    """Write ``ΔW_to + weight · (ΔW_to − ΔW_from)`` to ``destination`` (replaced) as a PEFT adapter.

    ``combination="svd"`` truncates the sum to ``rank`` (default: ``to``'s rank) by SVD; ``"cat"``
    stacks both adapters exactly, at the sum of their ranks. ``weight=0`` gives ``to`` back.
    """
    to_dir, from_dir, destination = Path(to_dir), Path(from_dir), Path(destination)
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, not {combination!r}")
    for folder in (to_dir, from_dir):
        if not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no PEFT adapter (adapter_config.json)")
    if loading.adapter_base_spec(to_dir) != loading.adapter_base_spec(from_dir):
        raise ValueError(f"{to_dir} and {from_dir} are adapters of different base models")
    model, _ = loading.load(to_dir, dtype=torch.float32, device="cpu", merge_adapter=False)
    model.load_adapter(str(from_dir), adapter_name="from")
    model.add_weighted_adapter(["default", "from"], [1.0 + weight, -weight], "extrapolated",
                               combination_type=combination,
                               svd_rank=(rank or model.peft_config["default"].r) if combination == "svd" else None)
    staging = destination.with_name(destination.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, selected_adapters=["extrapolated"], save_embedding_layers=False)
    saved = staging / "extrapolated"  # PEFT saves an adapter not named "default" in a subfolder
    if (to_dir / loading.GENERATION_CONFIG).is_file():
        shutil.copy2(to_dir / loading.GENERATION_CONFIG, saved / loading.GENERATION_CONFIG)
    stage = {"model": str(to_dir), "extrapolate_from": str(from_dir), "weight": weight,
             "combination": combination, "rank": model.peft_config["extrapolated"].r}
    (saved / "training_config.yaml").write_text(yaml.safe_dump(stage, sort_keys=False))
    shutil.rmtree(destination, ignore_errors=True)
    saved.rename(destination)
    shutil.rmtree(staging)
    return destination
