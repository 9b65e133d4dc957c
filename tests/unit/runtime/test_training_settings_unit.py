"""The runtime side of the Axolotl/TRL settings, without torch: trainer arguments, the
DeepSpeed offload rule, resume_from, when a checkpoint ends its stage, push_to_hub offline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute, hub_push, models
from llm_recipe.runtime.integrity import explicit_resume
from llm_recipe.runtime.training import _finished
from llm_recipe.runtime.workspace import atomic_write_json

TRAIN = {"lr": 1e-4, "batch_size": 2, "grad_accum": 1, "lr_scheduler": "linear",
         "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
         "optimizer": "adamw_torch", "log_every": 1, "eval_every": 0, "save_every": 100,
         "keep_checkpoints": 2, "max_steps": 10}
CPU = {"gpus_per_node": 0}


def kwargs(has_validation: bool = True, **train) -> dict:
    return compute.trainer_kwargs({"train": {**TRAIN, **train}, "seed": 1}, CPU, Path("out"),
                                  has_validation=has_validation)


def test_steps_and_epochs_map_to_the_trainers_strategies() -> None:
    steps = kwargs(eval_every=5, save_every=10)
    assert (steps["eval_strategy"], steps["eval_steps"]) == ("steps", 5)
    assert (steps["save_strategy"], steps["save_steps"]) == ("steps", 10)
    epochs = kwargs(eval_every="epoch", save_every="epoch")
    assert epochs["eval_strategy"] == epochs["save_strategy"] == "epoch"
    assert "eval_steps" not in epochs and "save_steps" not in epochs
    assert kwargs(has_validation=False, eval_every="epoch")["eval_strategy"] == "no"
    assert "load_best_model_at_end" not in steps


def test_early_stopping_keeps_and_loads_the_best_checkpoint() -> None:
    args = kwargs(eval_every=5, save_every=5, early_stopping={
        "patience": 2, "metric": "eval_loss", "threshold": 0.0})
    assert args["load_best_model_at_end"] is True
    assert (args["metric_for_best_model"], args["greater_is_better"]) == ("eval_loss", False)
    assert args["restore_callback_states_from_checkpoint"] is True
    accuracy = kwargs(eval_every=5, save_every=5, early_stopping={
        "patience": 2, "metric": "eval_accuracy", "threshold": 0.0, "mode": "max"})
    assert accuracy["greater_is_better"] is True


def test_workers_and_neftune() -> None:
    assert kwargs()["dataloader_num_workers"] == 0
    assert kwargs(dataloader_workers=3)["dataloader_num_workers"] == 3
    assert "neftune_noise_alpha" not in kwargs()
    assert kwargs(neftune_noise_alpha=5)["neftune_noise_alpha"] == 5.0


def _args(optim: str, config: dict) -> SimpleNamespace:
    plugin = SimpleNamespace(hf_ds_config=SimpleNamespace(config=config))
    return SimpleNamespace(optim=SimpleNamespace(value=optim), deepspeed_plugin=plugin)


@pytest.mark.parametrize(("optim", "offload", "kept"), [
    ("sgd", "cpu", True), ("adafactor", "nvme", True),
    ("adamw_torch", "cpu", False),  # accelerate's DeepSpeedCPUAdam is the same update, faster
    ("sgd", "none", False),
])
def test_zero_offload_keeps_the_recipes_optimizer(optim: str, offload: str, kept: bool) -> None:
    config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": offload}}}
    assert compute.keep_optimizer_under_offload(_args(optim, config)) is kept
    assert ("zero_force_ds_cpu_optimizer" in config) is kept
    own = {**config, "optimizer": {"type": "AdamW"}}
    assert compute.keep_optimizer_under_offload(_args(optim, own)) is False
    assert compute.keep_optimizer_under_offload(SimpleNamespace(optim="sgd")) is False


def _state(folder: Path, step: int, total: int, stop: bool = False) -> Path:
    folder.mkdir(parents=True)
    atomic_write_json(folder / "trainer_state.json", {
        "global_step": step, "max_steps": total,
        "stateful_callbacks": {"TrainerControl": {"args": {"should_training_stop": stop}}}})
    return folder


def test_which_checkpoint_ends_its_stage(tmp_path: Path) -> None:
    last = _state(tmp_path / "checkpoint-10", 10, 10, stop=True)
    middle = _state(tmp_path / "checkpoint-4", 4, 10)
    stopped = _state(tmp_path / "checkpoint-6", 6, 10, stop=True)
    assert _finished(last) and not _finished(middle)
    assert _finished(stopped, {"early_stopping": {"patience": 1}})
    assert not _finished(stopped, {})  # without early stopping a stop is an interruption
    # resume_from: latest with more steps trains on from the old run's final checkpoint
    assert not _finished(last, {"max_steps": 20}) and _finished(middle, {"max_steps": 4})


RECIPE = """\
recipe: 1
name: resume
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  math: {builtin: arithmetic, format: gsm8k, n: 16}
stages:
  sft:
    kind: sft
    model: base
    data: math
    train: {max_steps: 8, resume_from: RESUME}
    push_to_hub: {repo: my-org/tiny-sft, token: "${env:MY_HF_TOKEN}"}
"""


def _stage(write, tmp_path: Path, resume: str):
    plan = compile_recipe(write(RECIPE.replace("RESUME", resume)), cwd=tmp_path)
    return plan, plan.stage("sft")


def _checkpoint(folder: Path, step: int) -> Path:
    _state(folder, step, 8)
    atomic_write_json(folder / "files.json", {"trainer_state.json":
                                              (folder / "trainer_state.json").stat().st_size})
    return folder


def test_resume_from_latest_and_from_a_path(write, tmp_path: Path) -> None:
    _, stage = _stage(write, tmp_path, "latest")
    directory = tmp_path / stage.dir
    with pytest.raises(RecipeError, match="no intact checkpoint to resume from"):
        explicit_resume(directory, stage, tmp_path, [])
    checkpoints = directory / "checkpoints"
    own = _checkpoint(checkpoints / "checkpoint-4", 4)
    atomic_write_json(checkpoints / "latest", {"checkpoint": "checkpoint-4", "step": 4})
    assert explicit_resume(directory, stage, tmp_path, []) == own
    notes: list[str] = []
    assert explicit_resume(directory, stage, tmp_path, notes, forced=True) is None
    assert notes == ["--force: starting from step 0 (resume_from: latest not used)"]

    other = _checkpoint(tmp_path / "runs" / "checkpoint-6", 6)
    _, stage = _stage(write, tmp_path, "runs/checkpoint-6")
    assert explicit_resume(directory, stage, tmp_path, []) == other
    (other / "trainer_state.json").write_text("{", "utf-8")  # damaged after its save
    with pytest.raises(RecipeError, match=r"cannot resume from runs/checkpoint-6: "
                       r"trainer_state\.json has 1 bytes"):
        explicit_resume(directory, stage, tmp_path, [])
    _, stage = _stage(write, tmp_path, "runs/checkpoint-9")
    with pytest.raises(RecipeError, match="runs/checkpoint-9 is not a checkpoint folder"):
        explicit_resume(directory, stage, tmp_path, [])


def test_an_offline_push_keeps_the_stage_and_never_writes_the_token(
        write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, stage = _stage(write, tmp_path, "latest")
    directory = tmp_path / stage.dir
    output = tmp_path / stage.output.path
    output.mkdir(parents=True)
    (output / "config.json").write_text("{}", "utf-8")
    atomic_write_json(directory / "manifest.json", {
        "status": "complete", "fingerprint": stage.fingerprint,
        "output": {"path": stage.output.path, "sha256": "abc", "files": {}}})
    secret = "hf_supersecretvalue123"
    monkeypatch.setenv("MY_HF_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models.hub_reachable.cache_clear()
    try:
        assert hub_push.pending(stage, tmp_path)
        result = hub_push.push(plan, stage, tmp_path)
    finally:
        models.hub_reachable.cache_clear()
    assert result["status"] == "failed" and result["repo"] == "my-org/tiny-sft"
    assert "cannot be reached" in result["error"]
    line = hub_push.describe(stage, result)
    assert "my-org/tiny-sft" in line and "The stage is complete" in line
    recorded = json.loads((directory / "push.json").read_text())
    assert recorded["output_sha256"] == "abc" and recorded["status"] == "failed"
    assert hub_push.pending(stage, tmp_path)  # the next run tries again
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text("utf-8", errors="replace"), path
    monkeypatch.delenv("MY_HF_TOKEN")
    assert "MY_HF_TOKEN (push_to_hub.token) is not set" in hub_push.push(
        plan, stage, tmp_path)["error"]
    atomic_write_json(directory / "push.json", {**recorded, "status": "pushed"})
    assert not hub_push.pending(stage, tmp_path)


def test_a_push_uploads_the_output_folder_with_the_token(
        write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    plan, stage = _stage(write, tmp_path, "latest")
    directory = tmp_path / stage.dir
    output = tmp_path / stage.output.path
    output.mkdir(parents=True)
    (output / "config.json").write_text("{}", "utf-8")
    atomic_write_json(directory / "manifest.json", {
        "status": "complete", "fingerprint": stage.fingerprint,
        "output": {"path": stage.output.path, "sha256": "abc", "files": {}}})
    calls: list[tuple] = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return SimpleNamespace(oid="0123456789abcdef", commit_url="https://hf.co/c")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    monkeypatch.setenv("MY_HF_TOKEN", "hf_token_value")
    result = hub_push.push(plan, stage, tmp_path)
    assert result["status"] == "pushed" and result["commit"] == "0123456789abcdef"
    assert calls[0] == ("token", "hf_token_value")
    assert calls[1] == ("create_repo", "my-org/tiny-sft",
                        {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls[2][1]
    assert upload["repo_id"] == "my-org/tiny-sft" and upload["folder_path"] == str(output)
    assert upload["commit_message"].startswith("resume/sft (sft), stage fingerprint ")
    assert "hf_token_value" not in (directory / "push.json").read_text()
    assert not hub_push.pending(stage, tmp_path)
