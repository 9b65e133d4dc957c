"""`recipe run` of a matrix: the shared stage runs once, the varied ones once per variant,
a re-run skips everything, and the summary ends with the variants side by side."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN, TINY_SFT, tiny_recipe
from llm_recipe.cli import main

pytestmark = pytest.mark.integration

RECIPE = tiny_recipe(TINY_PRETRAIN.replace("max_steps: 12", "max_steps: 8"),
                     TINY_SFT.replace("max_steps: 8", "max_steps: 4"), max_new_tokens=4,
                     tail="matrix:\n  sft.train.lr: [1.0e-3, 3.0e-3]\n")
COPIES = ["pretrain", "sft@lr=0.001", "sft@lr=0.003", "eval@lr=0.001", "eval@lr=0.003"]


def run(*args: str) -> tuple[int, str]:
    out = StringIO()
    with redirect_stdout(out):
        code = main(["run", "tiny.yaml", *args])
    return code, out.getvalue()


def test_matrix_runs_shared_stages_once_and_varied_ones_per_variant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    code, out = run("--json")
    assert code == 0, out
    result = json.loads(out)
    assert [(s["name"], s["action"]) for s in result["stages"]] == [
        (name, "ran") for name in COPIES]
    assert result["variants"] == {
        f"lr={lr}": {"pretrain": "pretrain", "sft": f"sft@lr={lr}", "eval": f"eval@lr={lr}"}
        for lr in ("0.001", "0.003")}

    workspace = tmp_path / "outputs" / "tiny"
    manifests = {name: json.loads((workspace / name / "manifest.json").read_text())
                 for name in COPIES}
    assert sorted(p.name for p in workspace.iterdir() if (p / "manifest.json").exists()) == \
        sorted(COPIES)  # one folder per copy: pretrain once, not per variant
    pretrain = manifests["pretrain"]["fingerprint"]
    for lr in ("0.001", "0.003"):
        sft = manifests[f"sft@lr={lr}"]
        assert sft["config"]["train"]["lr"] == float(lr)
        assert {(i["ref"], i["fingerprint"]) for i in sft["inputs"]
                if i["field"] == "model"} == {("pretrain", pretrain)}
        evaluation = manifests[f"eval@lr={lr}"]
        assert [i["ref"] for i in evaluation["inputs"] if i["field"].startswith("models")] == [
            "pretrain", f"sft@lr={lr}"]
        report = json.loads((workspace / f"eval@lr={lr}" / "report.json").read_text())
        assert list(report["models"]) == ["pretrain", f"sft@lr={lr}"]
    assert manifests["sft@lr=0.001"]["metrics"]["loss"] != manifests["sft@lr=0.003"][
        "metrics"]["loss"]

    status = StringIO()
    with redirect_stdout(status):
        assert main(["status", "tiny.yaml", "--json"]) == 0
    assert [(s["name"], s["state"]) for s in json.loads(status.getvalue())["stages"]] == [
        (name, "fresh") for name in COPIES]

    code, out = run()  # everything is fresh: skipped, and the summary compares the variants
    assert code == 0, out
    summary, _, variants = out.partition("matrix: 2 variants")
    assert all(f"{name} " in summary for name in COPIES)
    assert summary.count("skipped") == len(COPIES) and " ran " not in summary
    rows = [line.split() for line in variants.strip().splitlines()]
    assert rows[0] == ["variant", "sft", "loss", "eval:", "pretrain", "gsm8k_accuracy",
                       "eval:", "sft", "gsm8k_accuracy"]
    assert [r[0] for r in rows[1:]] == ["lr=0.001", "lr=0.003"]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(
        [manifests[f"sft@lr={lr}"]["metrics"]["loss"] for lr in ("0.001", "0.003")], rel=1e-3)
