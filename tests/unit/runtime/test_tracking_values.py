"""What a tracked run logs: params, metric names, tags, git, redaction (no torch, no backend)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.tracking import values
from llm_recipe.runtime.tracking.base import Settings, TrackingError, settings_for

RECIPE = """\
recipe: 1
name: planner
models:
  llama3: {hub: meta-llama/Meta-Llama-3-8B, revision: abc123}
datasets:
  planner_train: {builtin: arithmetic, split: train, n: 16, format: prompt_completion}
  planner_val: {builtin: arithmetic, split: test, n: 4, format: prompt_completion}
compute:
  env:
    HF_TOKEN: ${env:HF_TOKEN}
    MY_ENDPOINT: ${env:PLANTED_ENDPOINT}
tracking:
  backend: mlflow
  experiment: planner_training
  uri: ${env:MLFLOW_TRACKING_URI}
  tags: {policy_id: planner_policy, task: planner, dataset_version: "2025-01-03"}
stages:
  sft:
    kind: sft
    model: llama3
    data: planner_train
    validation: planner_val
    adapter: {type: lora, r: 16, alpha: 32}
    train: {epochs: 3, lr: 1.0e-4, batch_size: 4, grad_accum: 4}
    tracking: {tags: {task: planner-sft}, log_artifacts: false}
  full:
    kind: sft
    model: llama3
    data: planner_train
    train: {max_steps: 5}
"""


@pytest.fixture
def plan(tmp_path: Path):
    (tmp_path / "planner.yaml").write_text(RECIPE)
    return compile_recipe(tmp_path / "planner.yaml", cwd=tmp_path)


def test_params_are_the_flattened_config_and_the_seed_names(plan) -> None:
    params = values.stage_params(plan, plan.stage("sft"))
    assert params["train.lr"] == "0.0001" and params["adapter.r"] == "16"
    assert params["train.batch_size"] == "4" and params["compute.processes"] == "1"
    seed = {k: params[k] for k in ("learning_rate", "batch_size", "epochs", "dataset_version",
                                   "model_base", "fine_tuning_method", "lora_r", "lora_alpha")}
    assert seed == {"learning_rate": "0.0001", "batch_size": "16", "epochs": "3",
                    "dataset_version": "2025-01-03",
                    "model_base": "meta-llama/Meta-Llama-3-8B@abc123",
                    "fine_tuning_method": "lora", "lora_r": "16", "lora_alpha": "32"}
    assert not any(k.startswith("tracking") for k in params)
    full = values.seed_params(plan, plan.stage("full"))
    assert full["fine_tuning_method"] == "full" and "lora_r" not in full
    assert full["max_steps"] == "5"


def test_flatten_keeps_lists_as_json_and_cuts_long_values() -> None:
    flat = values.flatten({"a": {"b": [1, "x"], "c": None, "d": True}, "e": "y" * 600})
    assert flat == {"a.b": '[1, "x"]', "a.d": "true", "e": "y" * values.MAX_PARAM}


def test_metric_names() -> None:
    row = {"loss": 2.5, "lr": 1e-4, "tok/s": 900, "grad_norm": None, "note": "x"}
    assert values.metric_names("train", row) == {"train_loss": 2.5, "train_lr": 1e-4,
                                                 "train_tokens_per_s": 900.0}
    assert values.metric_names("eval", {"loss": 2.0}) == {"val_loss": 2.0}
    evaluated = {"model": "sft", "exact_match": 0.5, "seconds": 1.5, "flag": True,
                 "bad": float("nan")}
    assert values.metric_names("eval", evaluated) == {"sft/exact_match": 0.5,
                                                      "sft/seconds": 1.5}


def test_settings_merge_the_stage_over_the_recipe(plan, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    own = plan.stage("sft").config["tracking"]
    settings = settings_for(plan.tracking, own, recipe="planner", workspace=tmp_path)
    assert settings.backend == "mlflow" and settings.experiment == "planner_training"
    assert settings.tags == {"policy_id": "planner_policy", "task": "planner-sft",
                             "dataset_version": "2025-01-03"}
    assert settings.log_artifacts is False
    assert settings_for(plan.tracking, None, recipe="p", workspace=tmp_path).log_artifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI is not set"):
        settings.resolved_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker:5000")
    assert settings.resolved_uri() == "http://tracker:5000"
    assert settings.where == "${env:MLFLOW_TRACKING_URI}"  # messages never show the value
    plain = Settings("mlflow", "e", None, None, {}, True, tmp_path)
    assert plain.resolved_uri() is None and plain.where == "the workspace"


def test_redactor_masks_referenced_and_secret_looking_variables(plan) -> None:
    env = {"HF_TOKEN": "hf_planted_123456", "PLANTED_ENDPOINT": "https://internal.example",
           "MLFLOW_TRACKING_URI": "http://u:pw-secret@tracker:5000", "HOME": "/root",
           "X": "1"}
    redact = values.Redactor(plan, env)
    text = ("token hf_planted_123456 at https://internal.example, "
            "server http://u:pw-secret@tracker:5000, home /root, 1")
    out = redact(text)
    assert "hf_planted" not in out and "internal.example" not in out
    assert "pw-secret" not in out and "/root" in out and out.endswith(", 1")
    assert redact("see ftp://user:pass@host/x") == "see ftp://****@host/x"
    assert redact.mapping({"k": "hf_planted_123456"}) == {"k": "****"}


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), "-c", "user.email=t@t", "-c", "user.name=t",
                    *args], check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_info(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("a: 1\n")
    values.git_info.cache_clear()
    assert values.git_info(recipe) is None  # not a repository
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "r.yaml")
    _git(tmp_path, "commit", "-q", "-m", "x")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    values.git_info.cache_clear()
    assert values.git_info(recipe) == {"commit": head, "dirty": False}
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "x").write_text("untracked outputs do not count")
    values.git_info.cache_clear()
    assert values.git_info(recipe) == {"commit": head, "dirty": False}
    recipe.write_text("a: 2\n")
    values.git_info.cache_clear()
    assert values.git_info(recipe) == {"commit": head, "dirty": True}
    other = tmp_path / "new.yaml"
    other.write_text("b: 1\n")
    _git(tmp_path, "checkout", "-q", "r.yaml")
    values.git_info.cache_clear()
    assert values.git_info(other) == {"commit": head, "dirty": True}  # recipe not committed
    values.git_info.cache_clear()
