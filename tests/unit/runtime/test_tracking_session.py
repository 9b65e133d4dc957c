"""Tracking sessions without training: a failing store, the parent run, missing packages,
and MLflow's sqlite store with its registry (mlflow-skinny, no torch)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.log import StageLog
from llm_recipe.runtime.tracking import PARENT_ENV, Session, TrackingUnavailable, stage_run
from llm_recipe.runtime.tracking import base as tracking_base

RECIPE = """\
recipe: 1
name: tracked
models:
  base: {init: {architecture: llama, size: nano}, tokenizer: {train: {data: corpus}}}
datasets:
  corpus: {builtin: corpus, n: 50, format: text}
  train: {builtin: arithmetic, split: train, n: 16, format: gsm8k}
tracking:
  backend: BACKEND
  tags: {task: demo}
stages:
  sft:
    kind: sft
    model: base
    data: train
    adapter: {type: lora, r: 4}
    train: {max_steps: 2}
"""


def plan_of(tmp_path: Path, backend: str, register: str = ""):
    text = RECIPE.replace("BACKEND", backend).replace("stages:\n", f"{register}stages:\n")
    (tmp_path / "r.yaml").write_text(text)
    return compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)


class FakeRun:
    def __init__(self, calls: list, name: str, parent: str | None, fail: str | None) -> None:
        self.calls, self.id, self.fail = calls, f"id-{name}", fail
        calls.append(("open", name, parent))

    def _record(self, what: str, *args) -> None:
        self.calls.append((what, self.id, *args))
        if self.fail == what:
            raise ConnectionError("cannot reach http://user:hunter2-secret@tracker:5000")

    def log_params(self, params):
        self._record("params", dict(params))

    def log_metrics(self, metrics, step=None):
        self._record("metrics", dict(metrics), step)

    def set_tags(self, tags):
        self._record("tags", dict(tags))

    def log_artifact(self, path, name=None):
        self._record("artifact", Path(path).name, name)

    def finish(self, status):
        self._record("finish", status)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A backend module standing in for wandb: records calls, fails where told."""
    state: dict = {"calls": [], "fail": None}
    module = types.ModuleType("fake_tracking_backend")
    module.check = lambda: None
    module.open_parent = lambda settings, name, tags: FakeRun(state["calls"], name, None, None)
    module.open_run = lambda settings, name, parent, tags: FakeRun(
        state["calls"], name, parent, state["fail"])
    monkeypatch.setitem(sys.modules, "fake_tracking_backend", module)
    monkeypatch.setitem(tracking_base.BACKENDS, "wandb", "fake_tracking_backend")
    monkeypatch.delenv(PARENT_ENV, raising=False)
    return state


def test_a_failing_store_is_reported_once_and_metrics_stay_in_the_log(
        tmp_path: Path, fake: dict) -> None:
    fake["fail"] = "metrics"
    plan = plan_of(tmp_path, "wandb")
    warnings: list[str] = []
    session = Session(plan, tmp_path, warn=warnings.append)
    log = StageLog(tmp_path / "sft", "sft")
    run = session.stage_run(plan.stage("sft"), log)
    log.tracker = run
    for step in (1, 2, 3):
        log.metrics(step, {"loss": 3.0 - step, "tok/s": 100})
    rows = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]
    assert len(warnings) == 1 and "tracking failed (wandb at the workspace)" in warnings[0]
    assert "hunter2-secret" not in warnings[0] and "****@tracker" in warnings[0]
    text = (tmp_path / "sft" / "train.log").read_text()
    assert text.count("tracking failed") == 1 and "hunter2" not in text
    assert [c[:2] for c in fake["calls"]] == [
        ("open", "tracked"), ("params", "id-tracked"), ("open", "sft"), ("params", "id-sft"),
        ("metrics", "id-sft")]
    run.complete({"loss": 1.0}, tmp_path / "sft", tmp_path / "sft" / "adapter")
    assert [c[0] for c in fake["calls"]][-1] == "metrics"  # nothing after the failure
    assert run.reference()["run_id"] == "id-sft"


def test_parent_is_opened_on_first_use_and_exported_to_launched_stages(
        tmp_path: Path, fake: dict) -> None:
    plan = plan_of(tmp_path, "wandb")
    session = Session(plan, tmp_path, warn=lambda _: None)
    assert fake["calls"] == []  # a fully cached run opens nothing
    with session.exported():
        assert os.environ[PARENT_ENV] == "id-tracked"
    assert PARENT_ENV not in os.environ
    log = StageLog(tmp_path / "sft", "sft")
    run = session.stage_run(plan.stage("sft"), log)
    assert fake["calls"][2] == ("open", "sft", "id-tracked")
    params = next(c[2] for c in fake["calls"] if c[0] == "params" and c[1] == "id-sft")
    assert params["lora_r"] == "4" and params["train.max_steps"] == "2"
    run.finish("FAILED")
    session.close("FINISHED")
    assert ("finish", "id-sft", "FAILED") in fake["calls"]
    assert ("finish", "id-tracked", "FINISHED") in fake["calls"]


def test_a_launched_stage_nests_under_the_parent_from_the_environment(
        tmp_path: Path, fake: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_of(tmp_path, "wandb")
    log = StageLog(tmp_path / "sft", "sft")
    monkeypatch.setenv(PARENT_ENV, "parent-from-recipe-run")
    stage_run(plan, plan.stage("sft"), tmp_path, log, main=True)
    assert fake["calls"][0] == ("open", "sft", "parent-from-recipe-run")
    fake["calls"].clear()
    assert stage_run(plan, plan.stage("sft"), tmp_path, log, main=False).tracker is None
    monkeypatch.delenv(PARENT_ENV)
    stage_run(plan, plan.stage("sft"), tmp_path, log, main=True)
    assert fake["calls"][0] == ("open", "sft", None)  # alone: no parent run of its own


def test_backend_none_tracks_nothing(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, "none")
    run = Session(plan, tmp_path).stage_run(plan.stage("sft"), StageLog(tmp_path, "sft"))
    assert run.tracker is None and run.reference() is None


@pytest.mark.parametrize(("backend", "modules", "extra"), [
    ("mlflow", ["mlflow"], "mlflow"),
    ("wandb", ["wandb"], "wandb"),
    ("tensorboard", ["torch.utils.tensorboard", "tensorboardX"], "tensorboard"),
])
def test_a_missing_package_is_a_clear_recipe_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, modules: list[str],
        extra: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    plan = plan_of(tmp_path, backend)
    session = Session(plan, tmp_path, warn=lambda _: None)
    with pytest.raises(TrackingUnavailable) as info:
        session.stage_run(plan.stage("sft"), StageLog(tmp_path / "sft", "sft"))
    assert isinstance(info.value, RecipeError)
    assert f"pip install 'llm-recipe[{extra}]'" in (info.value.hint or "")


def test_mlflow_sqlite_store_nested_runs_and_registry(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv(PARENT_ENV, raising=False)
    plan = plan_of(tmp_path, "mlflow",
                   register="  register: {name: demo_model, stage: sft, alias: champion}\n")
    session = Session(plan, tmp_path, warn=pytest.fail)
    stage = plan.stage("sft")
    folder = tmp_path / stage.dir
    log = StageLog(folder, "sft")
    run = session.stage_run(stage, log)
    log.tracker = run
    log.metrics(1, {"loss": 2.0, "tok/s": 50})
    log.metrics(2, {"loss": 1.5, "tok/s": 60})
    log.metrics(2, {"loss": 1.7}, prefix="eval")
    output = tmp_path / stage.output.path
    output.mkdir(parents=True)
    (output / "adapter_model.safetensors").write_bytes(b"weights")
    (output / "tokenizer.json").write_text("{}")
    (folder / "manifest.json").write_text(json.dumps(
        {"status": "complete", "fingerprint": stage.fingerprint, "tracking": run.reference()}))
    run.complete({"loss": 1.5, "steps": 2}, folder, output)
    registered = session.register()
    again = session.register()
    session.close("FINISHED")

    uri = f"sqlite:///{(tmp_path / plan.workspace / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tracked", "sft"}
    parent, child = runs["tracked"], runs["sft"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["task"] == "demo" and child.data.tags["stage"] == "sft"
    assert child.data.params["lora_r"] == "4"
    history = client.get_metric_history(child.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert child.data.metrics["val_loss"] == 1.7 and child.data.metrics["steps"] == 2
    assert parent.data.metrics["sft/loss"] == 1.5
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"adapter", "tokenizer", "manifest.json"} <= artifacts
    assert registered["version"] == "1" and registered["new"]
    assert again["version"] == "1" and not again["new"]  # once per fingerprint
    version = client.get_model_version_by_alias("demo_model", "champion")
    assert str(version.version) == "1" and version.run_id == child.info.run_id
    assert version.source == f"runs:/{child.info.run_id}/adapter"
