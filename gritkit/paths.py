"""Where gritkit finds shared data sets (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Data sets folder: ``$GRITKIT_DATA``, else ``shared/data`` beside the repository."""
    if env := os.environ.get("GRITKIT_DATA"):
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"
