"""Tracking, gates and the registry, end to end: what a user finds in the store afterwards.

- `recipe run recipes/planner.yaml -p tiny` (the recipe as shipped, in a git repository):
  one parent run, a nested run per stage with the planner template's params, metrics and tags, the
  adapter and tokenizer as artifacts, planner_model version 1 with alias champion;
- a secret planted in the environment is nowhere in the store or the workspace;
- a tracking server that is down: the run finishes and says tracking failed;
- a failing gate: exit code 3, the stages after it do not run, everything else cached;
- a launched stage (torchrun, 2 processes) nests its run under the parent; rank 0 only;
- TensorBoard event files and W&B offline runs (when installed).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

RECIPE = """\
recipe: 1
name: tracked
seed: 5
models:
  base:
    init: {architecture: llama, size: nano, context_length: 128}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 200, format: text}
  train: {builtin: arithmetic, split: train, n: 32, format: gsm8k}
  test: {builtin: arithmetic, split: test, n: 4, format: gsm8k}
compute:
  env:
    HF_TOKEN: ${env:HF_TOKEN}
    SERVICE_URL: ${env:PLANTED_SERVICE_URL}
tracking:
  backend: mlflow
  experiment: demo
  tags: {task: demo, owner: "${env:PLANTED_OWNER}"}
stages:
  sft:
    kind: sft
    model: base
    data: train
    adapter: {type: lora, r: 4, alpha: 8}
    train: {max_steps: 4, batch_size: 8, max_seq_len: 128, lr: 1.0e-3, log_every: 1}
"""

EVALS = """\
  eval:
    kind: eval
    models: [base, sft]
    data: test
    generation: {max_new_tokens: 4}
    gate: {metric: sft/gsm8k_accuracy, min: 0.9}
  final:
    kind: eval
    models: [sft]
    data: test
    after: [eval]
    generation: {max_new_tokens: 4}
"""


def recipe_run(*args: str) -> tuple[int, dict]:
    out = StringIO()
    with redirect_stdout(out):
        code = main(["run", *args, "--json"])
    return code, json.loads(out.getvalue())


def client_of(store: Path):
    """An MlflowClient on a workspace's sqlite store (the test is skipped without mlflow)."""
    pytest.importorskip("sqlalchemy")
    MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
    assert store.is_file(), f"no MLflow store at {store}"
    uri = f"sqlite:///{store.resolve()}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_by_name(client, experiment: str) -> dict:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    runs = client.search_runs([found.experiment_id])
    return {r.info.run_name: r for r in runs}


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.email=t@t", "-c",
                           "user.name=t", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def with_mlflow() -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RECIPE_TRACKING_PARENT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.usefixtures("with_mlflow")
def test_planner_tiny_logs_nested_runs_and_registers_the_champion(folder: Path) -> None:
    shutil.copy(ROOT / "recipes" / "planner.yaml", folder / "planner.yaml")
    _git(folder, "init", "-q")
    _git(folder, "add", "planner.yaml")
    _git(folder, "commit", "-q", "-m", "planner")
    head = _git(folder, "rev-parse", "HEAD")

    code, result = recipe_run("planner.yaml", "-p", "tiny")
    assert code == 0, result
    actions = {s["name"]: s["action"] for s in result["stages"]}
    assert actions == {"sft": "ran", "offline_eval": "ran", "planner_model": "registered"}

    workspace = folder / "outputs" / "tiny" / "planner"
    client = client_of(workspace / "mlflow.db")
    runs = runs_by_name(client, "planner_training")
    assert set(runs) == {"planner-2025-01-03", "sft", "offline_eval"}
    parent = runs["planner-2025-01-03"]
    assert "mlflow.parentRunId" not in parent.data.tags
    for name in ("sft", "offline_eval"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert runs[name].info.status == "FINISHED"
    sft = runs["sft"]
    manifest = json.loads((workspace / "sft" / "manifest.json").read_text())
    params = sft.data.params
    assert {k: params[k] for k in ("learning_rate", "batch_size", "max_steps", "dataset_version",
                                   "model_base", "fine_tuning_method", "lora_r", "lora_alpha",
                                   "train.lr", "adapter.r")} == {
        "learning_rate": "0.001", "batch_size": "8", "max_steps": "30",
        "dataset_version": "2025-01-03", "model_base": "init:llama/tiny",
        "fine_tuning_method": "lora", "lora_r": "8", "lora_alpha": "16", "train.lr": "0.001",
        "adapter.r": "8"}
    tags = sft.data.tags
    assert {k: tags[k] for k in ("policy_id", "task", "dataset_version", "recipe", "stage",
                                 "kind", "fingerprint", "git_commit", "git_dirty")} == {
        "policy_id": "planner_policy", "task": "planner", "dataset_version": "2025-01-03",
        "recipe": "planner", "stage": "sft", "kind": "sft",
        "fingerprint": manifest["fingerprint"], "git_commit": head, "git_dirty": "false"}
    train_loss = client.get_metric_history(sft.info.run_id, "train_loss")
    assert [m.step for m in train_loss] == [5, 10, 15, 20, 25, 30]
    assert [m.step for m in client.get_metric_history(sft.info.run_id, "val_loss")] == [15, 30]
    assert sft.data.metrics["train_tokens_per_s"] > 0
    assert {a.path for a in client.list_artifacts(sft.info.run_id)} >= {
        "adapter", "tokenizer", "stage.json", "manifest.json", "logs"}
    assert {a.path for a in client.list_artifacts(sft.info.run_id, "adapter")} >= {
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    evaluated = runs["offline_eval"]
    assert evaluated.data.metrics["sft/exact_match"] == manifest_metric(
        workspace, "offline_eval", "sft/exact_match")
    assert evaluated.data.tags["gate"] == "passed"

    assert manifest["git"] == {"commit": head, "dirty": False}
    assert manifest["tracking"]["run_id"] == sft.info.run_id
    report = json.loads((workspace / "offline_eval" / "manifest.json").read_text())
    assert report["gate"]["passed"] is True and report["gate"]["metric"] == "sft/exact_match"

    versions = client.search_model_versions("name='planner_model'")
    assert [str(v.version) for v in versions] == ["1"]
    champion = client.get_model_version_by_alias("planner_model", "champion")
    assert str(champion.version) == "1" and champion.run_id == sft.info.run_id
    assert champion.source == f"runs:/{sft.info.run_id}/adapter"

    code, again = recipe_run("planner.yaml", "-p", "tiny")  # cached: nothing new
    assert code == 0
    assert [s["action"] for s in again["stages"]] == ["skipped", "skipped", "registered"]
    assert len(runs_by_name(client, "planner_training")) == 3
    assert len(client.search_model_versions("name='planner_model'")) == 1


def manifest_metric(workspace: Path, stage: str, key: str) -> float:
    return json.loads((workspace / stage / "manifest.json").read_text())["metrics"][key]


SECRETS = {"HF_TOKEN": "hf_PLANTEDtoken0123456789abcdef",
           "PLANTED_SERVICE_URL": "https://planted-service.internal/path-98765",
           "PLANTED_OWNER": "owner-planted-55555"}


@pytest.mark.usefixtures("with_mlflow")
def test_secrets_are_nowhere_in_the_store_or_the_workspace(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    (folder / "r.yaml").write_text(RECIPE)
    code, _ = recipe_run("r.yaml")
    assert code == 0
    workspace = folder / "outputs" / "tracked"
    runs = runs_by_name(client_of(workspace / "mlflow.db"), "demo")
    assert runs["sft"].data.params["lora_r"] == "4"  # the run was tracked
    assert runs["sft"].data.tags["owner"] == "${env:PLANTED_OWNER}"  # never resolved
    assert b"${env:HF_TOKEN}" in (workspace / "plan.json").read_bytes()  # the search works
    assert_no_secrets(folder)


def assert_no_secrets(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name == "mlflow.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value is in {path}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.usefixtures("with_mlflow")
def test_a_tracking_server_that_is_down_never_loses_the_run(
        folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    port = _closed_port()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    (folder / "r.yaml").write_text(
        RECIPE.replace("experiment: demo", f"experiment: demo\n  uri: http://127.0.0.1:{port}"))
    started = time.monotonic()
    code = main(["run", "r.yaml", "-q"])
    elapsed = time.monotonic() - started
    assert code == 0
    stage = folder / "outputs" / "tracked" / "sft"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 4
    assert manifest["tracking"] is None
    rows = [json.loads(r) for r in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "train"] == [1, 2, 3, 4]
    said = f"tracking failed (mlflow at http://127.0.0.1:{port})"
    assert said in capsys.readouterr().err
    assert said in (stage / "train.log").read_text()
    assert not (folder / "outputs" / "tracked" / "mlflow.db").exists()
    assert elapsed < 120


def test_a_failing_gate_stops_what_follows_with_exit_code_3(
        folder: Path, capsys: pytest.CaptureFixture) -> None:
    (folder / "r.yaml").write_text(RECIPE.replace("backend: mlflow", "backend: none") + EVALS)
    code, result = recipe_run("r.yaml")
    assert code == 3
    actions = {s["name"]: (s["action"], s["reason"]) for s in result["stages"]}
    assert actions["sft"][0] == "ran" and actions["eval"][0] == "ran"
    assert actions["final"] == ("blocked", "gate failed in eval")
    err = capsys.readouterr().err
    assert "gate failed in stage eval: sft/gsm8k_accuracy = 0, needs >= 0.9" in err
    assert "not run: final" in err
    workspace = folder / "outputs" / "tracked"
    gate = json.loads((workspace / "eval" / "manifest.json").read_text())["gate"]
    assert {k: gate[k] for k in ("passed", "metric", "value", "threshold")} == {
        "passed": False, "metric": "sft/gsm8k_accuracy", "value": 0.0, "threshold": 0.9}
    assert not (workspace / "final" / "manifest.json").exists()

    alone = subprocess.run([sys.executable, "-m", "llm_recipe.runtime",
                            str(workspace / "plan.json"), "final"], cwd=folder,
                           capture_output=True, text=True)
    assert alone.returncode != 0 and "gate failed in stage eval" in alone.stderr
    assert not (workspace / "final" / "manifest.json").exists()

    code, again = recipe_run("r.yaml")  # nothing re-runs, the gate still fails
    assert code == 3
    assert [s["action"] for s in again["stages"]] == ["skipped", "skipped", "blocked"]

    code, lowered = recipe_run("r.yaml", "--set", "stages.eval.gate.min=0")
    assert code == 0
    assert {s["name"]: s["action"] for s in lowered["stages"]} == {
        "sft": "skipped", "eval": "skipped", "final": "ran"}
    gate = json.loads((workspace / "eval" / "manifest.json").read_text())["gate"]
    assert gate["passed"] is True and gate["threshold"] == 0.0


@pytest.mark.usefixtures("with_mlflow")
def test_a_launched_stage_nests_under_the_parent_and_only_rank_0_tracks(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():  # the launch script exports them to the stage
        monkeypatch.setenv(name, value)
    (folder / "r.yaml").write_text(RECIPE)
    code, result = recipe_run("r.yaml", "--set", "stages.sft.compute.launcher=torchrun",
                              "--set", "stages.sft.compute.processes_per_node=2",
                              "--set", "stages.sft.train.batch_size=4")
    assert code == 0 and result["stages"][0]["action"] == "ran"
    workspace = folder / "outputs" / "tracked"
    client = client_of(workspace / "mlflow.db")
    experiment = client.get_experiment_by_name("demo")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sft", "tracked"]  # one sft run, rank 0
    parent = next(r for r in runs if r.info.run_name == "tracked")
    child = next(r for r in runs if r.info.run_name == "sft")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["compute.processes"] == "2" and child.data.params["batch_size"] == "8"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
    assert steps == [1, 2, 3, 4]
    manifest = json.loads((workspace / "sft" / "manifest.json").read_text())
    assert manifest["tracking"]["parent"] == parent.info.run_id
    assert_no_secrets(folder)


def test_tensorboard_event_files(folder: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (folder / "r.yaml").write_text(RECIPE.replace("backend: mlflow", "backend: tensorboard"))
    code, _ = recipe_run("r.yaml")
    assert code == 0
    stage_dirs = list((folder / "outputs" / "tracked" / "tensorboard").glob("tracked-*/sft"))
    assert len(stage_dirs) == 1
    events = EventAccumulator(str(stage_dirs[0]))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3, 4]


def test_wandb_offline(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (folder / "r.yaml").write_text(RECIPE.replace("backend: mlflow", "backend: wandb"))
    code, _ = recipe_run("r.yaml")
    assert code == 0
    workspace = folder / "outputs" / "tracked"
    manifest = json.loads((workspace / "sft" / "manifest.json").read_text())
    run_id = manifest["tracking"]["run_id"]
    assert manifest["tracking"]["backend"] == "wandb" and manifest["tracking"]["parent"]
    assert list((workspace / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
