"""The grpo stage with trl's GRPOTrainer, trained for real on a nano llama (CPU, offline).

The policy is a random-init nano llama with a small trained tokenizer, so its samples
are random tokens; the reward is the share of digits in a completion, a function in
``my_rewards.py`` next to the recipe (``module:function``). Digits are common enough in
the vocabulary that every group has some signal, so the mean reward climbs from about
0.03 to about 0.9 within 40 steps (seeded; over seeds 1-4 the mean of the first three
log steps was 0.025-0.039 and of the last three 0.86-0.96; seed 3, the test's: 0.028 and
0.958). The whole path goes through ``recipe run``: compile, executor, manifest.

Also: the trainer's settings (CPU, batch arithmetic, reward names and weights, prompt
columns), a new LoRA adapter and a continued one, a reward module that does not import
(exit 2, naming it), and kill -9 mid-stage then a resumed run that finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import grpo

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

REWARDS = """\
def digits(prompts, completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def abstain(prompts, completions, **kwargs):
    return [None] * len(completions)
"""
RECIPE = """\
recipe: 1
name: rl
seed: 3
models:
  scratch:
    init: {architecture: llama, size: nano, context_length: 128}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 300, format: text}
  arith: {builtin: arithmetic, split: train, n: 64, format: gsm8k}
compute: {launcher: local, gpus_per_node: 0, precision: fp32}
stages:
  learn:
    kind: grpo
    policy: scratch
    prompts: arith
    rewards:
      - {function: "my_rewards:digits", weight: 1.0}
      - {function: format, weight: 0.5}
    num_generations: 4
    beta: 0.04
    generation: {max_new_tokens: 8, temperature: 1.0}
    train: {max_steps: 40, lr: 1.0e-2, lr_scheduler: constant, batch_size: 8,
            max_seq_len: 128, log_every: 2, save_every: 20}
  lora:
    kind: grpo
    policy: scratch
    prompts: arith
    adapter: {type: lora, r: 4, alpha: 8, dropout: 0.0}
    rewards: [{function: "my_rewards:digits"}]
    num_generations: 4
    generation: {max_new_tokens: 8, temperature: 1.0}
    train: {max_steps: 4, lr: 1.0e-2, batch_size: 8, max_seq_len: 128, log_every: 2}
  lora_more:
    kind: grpo
    policy: lora
    prompts: arith
    rewards: [{function: "my_rewards:digits"}]
    num_generations: 4
    generation: {max_new_tokens: 8, temperature: 1.0}
    train: {max_steps: 4, lr: 1.0e-2, batch_size: 8, max_seq_len: 128, log_every: 2}
"""
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_recipe(root: Path, recipe: str = RECIPE) -> None:
    (root / "r.yaml").write_text(recipe)
    (root / "my_rewards.py").write_text(REWARDS)


def recipe_run(root: Path, *args: str) -> dict:
    """`recipe run r.yaml --json ...` in-process, from ``root``; returns {stage: outcome}."""
    out = StringIO()
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with redirect_stdout(out):
            code = main(["run", "r.yaml", "--json", *args])
    finally:
        os.chdir(cwd)
    assert code == 0, out.getvalue()
    return {s["name"]: s for s in json.loads(out.getvalue())["stages"]}


def context(root: Path, name: str, *overrides: str) -> StageContext:
    plan = compile_recipe(root / "r.yaml", cwd=root, overrides=overrides)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name))


def train_rows(stage_dir: Path) -> list[dict]:
    return [r for r in read_metrics(stage_dir) if r["phase"] == "train"]


def state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpo")
    write_recipe(root)
    return root


@pytest.fixture(scope="module")
def learned(root):
    outcome = recipe_run(root, "--only", "learn")["learn"]
    return outcome, root / "outputs" / "rl" / "learn"


def test_mean_reward_rises(learned):
    outcome, stage_dir = learned
    rows = train_rows(stage_dir)
    assert [r["step"] for r in rows] == list(range(2, 41, 2))
    rewards = [r["reward"] for r in rows]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"mean reward, first 3 log steps {first:.3f}, last 3 {last:.3f}")
    assert first < 0.15
    assert last > 0.5 and last > first + 0.4
    # each function's mean under the recipe's name; format never fires on random tokens
    assert [r["rewards/my_rewards:digits/mean"] for r in rows] == pytest.approx(rewards)
    assert all(r["rewards/format/mean"] == 0 for r in rows)
    assert rows[0]["kl"] == 0 and rows[-1]["kl"] > 0  # the policy moves off its reference
    assert all(0 < r["completions/mean_length"] <= 8 for r in rows)
    assert all(isinstance(r["loss"], float) and r["tok/s"] > 0 for r in rows)
    assert outcome["action"] == "ran" and outcome["metric"][0] == "reward"
    assert outcome["metrics"]["reward"] == pytest.approx(rewards[-1])
    assert outcome["metrics"]["steps"] == 40


def test_the_stage_writes_its_model_manifest_and_log(learned):
    _, stage_dir = learned
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 40
    assert (stage_dir / "model" / "model.safetensors").is_file()
    assert (stage_dir / "model" / "tokenizer.json").is_file()
    assert json.loads((stage_dir / "checkpoints" / "latest").read_text())["step"] == 40
    assert not (stage_dir / grpo.REFERENCE_DIR).exists()  # the init weights trl reloaded
    log = (stage_dir / "train.log").read_text()
    assert "[train] step=40 loss=" in log and " reward=" in log and " kl=" in log
    assert recipe_run(stage_dir.parents[2], "--only", "learn")["learn"]["action"] == "skipped"


def test_trainer_settings(root):
    trainer, _ = grpo.build_trainer(context(
        root, "learn", "stages.learn.train.batch_size=4", "stages.learn.train.grad_accum=2"))
    args = trainer.args
    assert args.use_cpu and not args.bf16 and not args.fp16 and not args.gradient_checkpointing
    assert not args.use_vllm
    assert (args.num_generations, args.beta, args.max_completion_length) == (4, 0.04, 8)
    assert (args.temperature, args.top_p, args.learning_rate, args.seed) == (1.0, 1.0, 1e-2, 3)
    # trl's defaults: one generation round of batch x accumulation per optimizer step
    assert args.per_device_train_batch_size == 4 and args.gradient_accumulation_steps == 2
    assert args.steps_per_generation == 2 and args.generation_batch_size == 8
    assert trainer.reward_func_names == ["my_rewards:digits", "format"]
    assert trainer.reward_weights.tolist() == [1.0, 0.5]
    assert trainer.ref_model is not None
    row = trainer.train_dataset[0]
    assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:")
    assert "#### " in row["answer"]  # the reference, passed to reward functions as answer=

    trainer, _ = grpo.build_trainer(context(root, "learn", "stages.learn.beta=0"))
    assert trainer.ref_model is None


def test_reward_functions_get_the_prompt_columns(root):
    ctx = context(root, "learn", 'stages.learn.rewards=[{function: gsm8k_correctness}]')
    names, (function,) = grpo.reward_functions(ctx, grpo.GrpoConfig.from_config(ctx.config))
    assert names == ["gsm8k_correctness"] and function.__name__ == "gsm8k_correctness"
    row = grpo.prompt_rows(ctx)[0]
    answer = row["answer"].split("#### ")[-1]
    scores = function(prompts=[row["prompt"]] * 2, completions=[f" so #### {answer}", " 0"],
                      completion_ids=[[], []], answer=[row["answer"]] * 2, trainer_state=None)
    assert scores == [1.0, 0.0]


def test_a_reward_with_no_score_in_a_window_is_left_out_of_the_row(tmp_path):
    # trl logs None for rewards/<name>/mean when a function returned None throughout
    write_recipe(tmp_path)
    rewards = 'stages.learn.rewards=[{function: "my_rewards:digits"}, ' \
        '{function: "my_rewards:abstain"}]'
    recipe_run(tmp_path, "--only", "learn", "--set", "stages.learn.train.max_steps=2",
               "--set", rewards)
    (row,) = train_rows(tmp_path / "outputs" / "rl" / "learn")
    assert "rewards/my_rewards:digits/mean" in row and "reward" in row
    assert "rewards/my_rewards:abstain/mean" not in row


def test_greedy_sampling_and_no_room_are_refused(root):
    with pytest.raises(RecipeError) as caught:  # the plan refuses it
        context(root, "learn", "stages.learn.generation.temperature=0")
    assert "temperature" in caught.value.render()
    ctx = context(root, "learn", "stages.learn.train.max_seq_len=16")
    with pytest.raises(RecipeError) as caught:
        grpo.build_trainer(ctx)
    assert "every prompt is longer than the 8 tokens" in caught.value.render()


@pytest.fixture(scope="module")
def lora(root):
    return recipe_run(root, "--only", "lora")["lora"], root / "outputs" / "rl" / "lora"


def test_adapter_trains_a_new_lora(lora):
    outcome, stage_dir = lora
    assert outcome["metrics"]["steps"] == 4
    files = {p.name for p in (stage_dir / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    saved = state_dict(stage_dir / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)
    assert any(t.abs().sum() > 0 for key, t in saved.items() if "lora_B" in key)
    assert all("kl" in r for r in train_rows(stage_dir))  # reference: the adapter disabled


def test_an_adapter_policy_is_continued(root, lora):
    outcome = recipe_run(root, "--only", "lora_more")["lora_more"]
    assert outcome["metrics"]["steps"] == 4
    out = root / "outputs" / "rl" / "lora_more" / "adapter"
    first = state_dict(lora[1] / "adapter" / "adapter_model.safetensors")
    more = state_dict(out / "adapter_model.safetensors")
    assert first.keys() == more.keys()
    assert any(not first[k].equal(more[k]) for k in first)
    assert not (out / "ref").exists()  # trl's frozen reference copy is not saved


def test_a_reward_module_that_does_not_import_exits_2(tmp_path, capsys):
    write_recipe(tmp_path, RECIPE.replace('"my_rewards:digits", weight: 1.0',
                                          '"broken_rewards:score", weight: 1.0'))
    (tmp_path / "broken_rewards.py").write_text(
        "import a_package_that_is_not_installed_xyz\n\n"
        "def score(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(["run", "r.yaml", "--only", "learn", "-q"])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "stages.learn.rewards[0].function" in err
    assert "broken_rewards:score" in err and "a_package_that_is_not_installed_xyz" in err
    assert not (tmp_path / "outputs" / "rl" / "learn" / "model").exists()


def test_kill_9_mid_stage_then_resume(tmp_path):
    write_recipe(tmp_path)
    sets = ["--set", "stages.learn.train.max_steps=60", "--set", "stages.learn.train.save_every=4"]
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", "run", "r.yaml", "--only",
                             "learn", "-q", *sets], cwd=tmp_path, env=ONE_THREAD,
                            start_new_session=True)
    stage_dir = tmp_path / "outputs" / "rl" / "learn"
    latest = stage_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 8:
            break
        assert proc.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 60 and not (stage_dir / "manifest.json").exists()

    resumed = recipe_run(tmp_path, "--only", "learn", *sets)["learn"]
    assert resumed["action"] == "resumed" and resumed["metrics"]["steps"] == 60
    log = (stage_dir / "train.log").read_text()
    after = log.split(f"resuming from checkpoint-{killed_at}")[1]
    assert int(after.split("[train] step=")[1].split()[0]) > killed_at
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["steps"] == 60 and manifest["resumed_from"] == f"checkpoint-{killed_at}"
    steps = [r["step"] for r in train_rows(stage_dir)]
    assert steps == list(range(2, 61, 2)), "a step logged twice or missing"
    assert (stage_dir / "model" / "model.safetensors").is_file()
    assert not (stage_dir / grpo.REFERENCE_DIR).exists()
