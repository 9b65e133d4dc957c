"""Plan-time rules of the settings from Axolotl/TRL: epoch strategies, early stopping,
NEFTune, resume_from, push_to_hub, dataloader workers (compiler only, no torch)."""

from __future__ import annotations

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError, RecipeErrors

RECIPE = """\
recipe: 1
name: settings
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  train: {builtin: arithmetic, split: train, n: 64, format: gsm8k}
  held: {builtin: arithmetic, split: test, n: 16, format: gsm8k}
  text: {builtin: corpus, format: text, n: 64}
stages:
  sft:
    kind: sft
    model: base
    data: train
    validation: held
    train: {TRAIN}
"""


def plan(write, train: str, extra: str = ""):
    return compile_recipe(write(RECIPE.replace("{TRAIN}", train) + extra))


def errors(write, train: str, extra: str = "") -> list[RecipeError]:
    with pytest.raises(RecipeError) as caught:
        plan(write, train, extra)
    error = caught.value
    return list(error.errors) if isinstance(error, RecipeErrors) else [error]


def test_epoch_strategies_and_early_stopping_plan(write) -> None:
    config = plan(write, "{epochs: 3, eval_every: epoch, save_every: epoch, "
                  "early_stopping: {patience: 2}}").stage("sft").config["train"]
    assert config["eval_every"] == config["save_every"] == "epoch"
    assert config["early_stopping"] == {"patience": 2, "metric": "eval_loss", "threshold": 0.0}
    steps = plan(write, "{max_steps: 40, eval_every: 10, save_every: 20, "
                 "early_stopping: {patience: 3, threshold: 0.01}}").stage("sft")
    assert steps.config["train"]["early_stopping"]["threshold"] == 0.01


def test_early_stopping_needs_validation_evaluations_and_aligned_saves(write) -> None:
    no_validation = RECIPE.replace("    validation: held\n", "")
    with pytest.raises(RecipeError) as caught:
        compile_recipe(write(no_validation.replace(
            "{TRAIN}", "{max_steps: 40, eval_every: 10, early_stopping: {patience: 2}}")))
    assert "the stage has no validation data" in caught.value.message
    assert caught.value.location is not None
    assert (caught.value.location.line, caught.value.location.col) == (14, 44)  # the key
    [error] = errors(write, "{max_steps: 40, early_stopping: {patience: 2}}")
    assert "eval_every is 0" in error.message and error.expected == \
        "train.eval_every: N steps, or epoch"
    [error] = errors(write, "{max_steps: 40, eval_every: 30, early_stopping: {patience: 2}}")
    assert "save_every is 100, eval_every 30" in error.message
    assert error.hint == "e.g. save_every: 30"
    [error] = errors(write, "{max_steps: 40, eval_every: epoch, save_every: 10, "
                     "early_stopping: {patience: 2}}")
    assert error.path == ("stages", "sft", "train", "save_every")
    assert error.hint == "set save_every: epoch"


def test_a_metric_that_is_not_a_loss_says_its_direction(write) -> None:
    [error] = errors(write, "{max_steps: 40, eval_every: 10, save_every: 10, "
                     "early_stopping: {patience: 2, metric: eval_mean_token_accuracy}}")
    assert error.message == "is eval_mean_token_accuracy better higher or lower?"
    plan(write, "{max_steps: 40, eval_every: 10, save_every: 10, "
         "early_stopping: {patience: 2, metric: eval_mean_token_accuracy, mode: max}}")


def test_kinds_without_validation_or_a_trainer_refuse_these_settings(write) -> None:
    extra = """\
  pre:
    kind: pretrain
    model: base
    data: text
    train: {max_steps: 4, neftune_noise_alpha: 5}
  cont:
    kind: continual
    model: base
    phases: [{name: a, data: text, steps: 4}]
    train: {save_every: epoch, resume_from: latest}
  evaluate:
    kind: eval
    models: [sft]
    data: held
    push_to_hub: {repo: me/report}
"""
    found = errors(write, "{max_steps: 4}", extra)
    messages = sorted(e.message for e in found)
    assert messages == [
        "NEFTune is for sft stages; this is pretrain",
        "a continual stage counts steps, not epochs",
        "a continual stage resumes only from its own checkpoints (after an interruption, "
        "by itself)",
        "a eval stage writes no model to push",
    ]


def test_push_to_hub_token_must_come_from_the_environment(write) -> None:
    extra = "    push_to_hub: {repo: my-org/tiny, token: hf_abcdefghijklmnop}\n"
    [error] = errors(write, "{max_steps: 4}", extra)
    assert "looks like a secret written inline" in error.message
    assert "hf_abcdefghijklmnop" not in error.render()
    ok = plan(write, "{max_steps: 4}", "    push_to_hub: {repo: my-org/tiny, "
              "token: '${env:HF_TOKEN}'}\n")
    assert ok.stage("sft").config["push_to_hub"] == {
        "repo": "my-org/tiny", "token": "${env:HF_TOKEN}", "private": True}
    assert "HF_TOKEN" in ok.env


def test_settings_that_do_not_change_results_keep_the_fingerprint(write) -> None:
    base = plan(write, "{max_steps: 4}").stage("sft")
    assert base.config["train"]["dataloader_workers"] == 0
    same = [plan(write, "{max_steps: 4, dataloader_workers: 4}").stage("sft"),
            plan(write, "{max_steps: 4}", "    push_to_hub: {repo: me/x}\n").stage("sft")]
    assert {s.fingerprint for s in same} == {base.fingerprint}
    changed = [plan(write, "{max_steps: 4, neftune_noise_alpha: 5}").stage("sft"),
               plan(write, "{max_steps: 4, resume_from: latest}").stage("sft"),
               plan(write, "{max_steps: 4, save_every: epoch}").stage("sft")]
    assert len({s.fingerprint for s in changed} | {base.fingerprint}) == 4


def test_resume_from_a_path_is_relative_to_the_recipe(write, tmp_path) -> None:
    (tmp_path / "runs" / "checkpoint-4").mkdir(parents=True)
    stage = plan(write, "{max_steps: 8, resume_from: runs/checkpoint-4}").stage("sft")
    assert stage.config["train"]["resume_from"].endswith("runs/checkpoint-4")
    missing = plan(write, "{max_steps: 8, resume_from: runs/checkpoint-9}")
    assert any("not a checkpoint folder yet" in w for w in missing.warnings)
