"""Evaluation: MTEB-style embedding tasks, generative tasks, an mteb adapter, and reports.

Example::

    from gritkit.eval import evaluate, write_report
    records = evaluate("default", "stsb,banking77,mmlu", limit=100, output="results/default.json")
    print(write_report(["results/default.json", "results/minilm.json"], output_dir="results/report"))
"""

from gritkit.eval.encoders import Encoder, GritEncoder, SentenceTransformerEncoder, load_model
from gritkit.eval.instructions import INSTRUCTIONS, instruction_for
from gritkit.eval.report import write_report
from gritkit.eval.result import Record, Score, load_records, save_records
from gritkit.eval.runner import evaluate, run_task
from gritkit.eval.tasks import GROUPS, TASKS

__all__ = ["Encoder", "GROUPS", "GritEncoder", "INSTRUCTIONS", "Record", "Score", "SentenceTransformerEncoder", "TASKS",
           "evaluate", "instruction_for", "load_model", "load_records", "run_task", "write_report", "save_records"]
