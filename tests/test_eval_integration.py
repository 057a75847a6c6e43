"""Integration: `gritkit eval` / `gritkit report` on the real default model and MiniLM, and mteb.evaluate offline."""

import json
import math

import pytest
from typer.testing import CliRunner

from gritkit.cli import app
from gritkit.eval.encoders import GritEncoder
from gritkit.eval.tasks import sts

pytestmark = pytest.mark.slow




@pytest.mark.needs_data
def test_cli_eval_and_report(tmp_path):
    runner = CliRunner()
    default_json, minilm_json = tmp_path / "default.json", tmp_path / "minilm.json"
    result = runner.invoke(app, ["eval", "--model", "default", "--tasks", "stsb,mmlu", "--limit", "10", "--output", str(default_json)])
    assert result.exit_code == 0, result.output
    assert "| stsb | spearman | 10 |" in result.output
    records = json.loads(default_json.read_text())
    assert [(r["task"], r["metric"], r["n"]) for r in records] == [("stsb", "spearman", 10), ("mmlu", "accuracy", 10)]
    assert all(-1 <= r["value"] <= 1 and r["seconds"] > 0 and r["commit"] and r["model"] == "default" for r in records)

    result = runner.invoke(app, ["eval", "--model", "st:minilm", "--name", "minilm", "--tasks", "stsb,mmlu", "--limit", "10",
                                 "--output", str(minilm_json)])
    assert result.exit_code == 0, result.output  # mmlu is skipped for an embedding-only model
    [minilm] = json.loads(minilm_json.read_text())
    assert minilm["model"] == "minilm" and minilm["value"] > 0.5  # MiniLM is a strong STS model

    result = runner.invoke(app, ["report", str(default_json), str(minilm_json), "--output-dir", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "| task | metric | n | default | minilm |" in result.output
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000


def test_cli_rejects_bad_input(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["eval", "--tasks", "nope"]).exit_code == 2
    assert runner.invoke(app, ["eval", "--model", "/no/such/model", "--tasks", "stsb", "--limit", "2"]).exit_code == 2
    assert runner.invoke(app, ["report", str(tmp_path / "missing.json")]).exit_code == 2


@pytest.mark.needs_data
def test_mteb_evaluate_offline_matches_our_sts(default_model):
    import mteb
    from mteb.models.models_protocols import EncoderProtocol

    from gritkit.eval.instructions import INSTRUCTIONS
    from gritkit.eval.mteb import MtebModel, sts_task

    model = MtebModel(default_model)
    assert isinstance(model, EncoderProtocol)
    results = mteb.evaluate(model, sts_task("stsb/stsb-en-test.csv", limit=20), cache=None, show_progress_bar=False)
    mteb_score = results.task_results[0].get_score()
    ours = sts.evaluate(GritEncoder(default_model), "stsb/stsb-en-test.csv", instruction=INSTRUCTIONS["stsb"], limit=20).value
    assert math.isfinite(mteb_score)
    assert mteb_score == pytest.approx(ours, abs=1e-3)  # same texts, instruction and cosine: same Spearman
