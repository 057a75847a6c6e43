"""Evaluation: MTEB-style embedding tasks, generative tasks, an mteb adapter, and reports.

Example::

    from gritkit.eval import evaluate, write_report
    records = evaluate("default", "stsb,banking77,mmlu", limit=100, output="results/default.json")
    print(write_report(["results/default.json", "results/minilm.json"], output_dir="results/report"))
"""

import importlib

# Names load on first use, so the CLI can list ``gritkit eval`` without importing torch.
_EXPORTS = {"Encoder": "gritkit.eval.encoders", "GritEncoder": "gritkit.eval.encoders",
            "SentenceTransformerEncoder": "gritkit.specs", "load_model": "gritkit.specs",
            "INSTRUCTIONS": "gritkit.prompts", "instruction_for": "gritkit.prompts",
            "write_report": "gritkit.eval.report", "Record": "gritkit.results", "Score": "gritkit.results",
            "load_records": "gritkit.results", "save_records": "gritkit.results", "evaluate": "gritkit.eval.runner",
            "run_task": "gritkit.eval.runner", "GROUPS": "gritkit.eval.tasks", "TASKS": "gritkit.eval.tasks"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gritkit.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
