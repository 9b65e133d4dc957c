"""The ppo stage trained for real on nano models (CPU, offline, one thread).

The task is learnable in a few dozen steps from random weights: a ``module:function``
reward next to the recipe pays the share of a completion's characters that are the
token "7" (about 1 in 300 tokens at the start). Through ``recipe run``: the mean
reward rises, the KL to the reference is logged, finite and bounded, the adaptive
controller follows Ziegler et al.'s rule, a kill -9 resumes to the same numbers, and
the policy can be an adapter (new or continued) and the reward a reward model.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.checkpoints import (
    BEST,
    LATEST,
    checkpoint_problem,
    read_pointer,
    record_step,
    write_pointer,
)
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.usage import RATE_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

SEVENS = '''\
def share_of_sevens(prompts, completions, **kwargs):
    """The share of each completion's characters that are the token "7"."""
    assert len(kwargs["answer"]) == len(completions)  # the gsm8k rows' other column
    return [c.count("7") / max(len(c), 1) for c in completions]
'''
MODELS = """\
recipe: 1
name: rl
seed: 3
models:
  scratch:
    init: {architecture: gpt2, size: nano, context_length: 128}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 200, format: text}
  prompts: {builtin: arithmetic, split: train, n: 64, format: gsm8k}
compute: {launcher: local, gpus_per_node: 0}
"""
LEARN = MODELS + """\
stages:
  ppo:
    kind: ppo
    policy: scratch
    prompts: prompts
    reward: {functions: [{function: "sevens:share_of_sevens"}]}
    kl_coef: 0.02
    generation: {max_new_tokens: 8, temperature: 1.0, batch_size: 16}
    train: {max_steps: 40, batch_size: 16, lr: 1.0e-2, lr_scheduler: constant,
            log_every: 1, save_every: 10, max_seq_len: 128}
"""
NEW_TOKENS, VOCAB = 8, 300
KL_BOUND = NEW_TOKENS * math.log(VOCAB)
"""KL(pi || ref) per sample <= sum_t log(1 / ref(a_t)): about 8 x ln 300 = 45.6 nats
against a reference that is near-uniform over 300 tokens (random init)."""


def project(folder: Path, recipe: str) -> Path:
    (folder / "rl.yaml").write_text(recipe)
    (folder / "sevens.py").write_text(SEVENS)
    return folder


def recipe_run(folder: Path, *args: str) -> dict:
    """`recipe run rl.yaml --json ...` in-process from ``folder``; {stage: outcome}."""
    out = StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(out):
        code = main(["run", "rl.yaml", "--json", *args])
    assert code == 0, out.getvalue()
    return {s["name"]: s for s in json.loads(out.getvalue())["stages"]}


def train_rows(stage_dir: Path) -> list[dict]:
    return [r for r in read_metrics(stage_dir) if r.get("phase") == "train"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """The LEARN recipe run once through `recipe run`, uninterrupted."""
    folder = project(tmp_path_factory.mktemp("learned"), LEARN)
    outcome = recipe_run(folder)
    assert outcome["ppo"]["action"] == "ran"
    return folder / "outputs" / "rl" / "ppo"


def test_mean_reward_rises_through_recipe_run(learned: Path) -> None:
    rows = train_rows(learned)
    assert [r["step"] for r in rows] == list(range(1, 41))
    rewards = [r["reward"] for r in rows]
    early, late = mean(rewards[:5]), mean(rewards[-5:])
    print(f"mean reward: steps 1-5 {early:.4f}, steps 36-40 {late:.4f}")
    assert early < 0.05
    assert late > 0.2 and late > 5 * early
    for key in ("kl", "kl_coef", "policy_loss", "value_loss", "clip_frac", "approx_kl",
                "entropy", "response_len", "lr", "reward_std", "grad_norm"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[0]["entropy"] > rows[-1]["entropy"]  # the policy concentrates
    log = (learned / "train.log").read_text()
    assert "[train] step=40 reward=" in log and "kl_coef=0.0200" in log
    manifest = json.loads((learned / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 40
    assert manifest["key_metric"] == "reward"
    assert manifest["metrics"]["reward"] == pytest.approx(rewards[-1])
    assert json.loads((learned / "stage.json").read_text())["config"]["kl_coef"] == 0.02
    assert (learned / "model" / "model.safetensors").is_file()
    assert (learned / "model" / "tokenizer.json").is_file()


def test_kl_to_the_reference_is_logged_finite_and_bounded(learned: Path) -> None:
    rows = train_rows(learned)
    kls = [r["kl"] for r in rows]
    print(f"kl: step 1 {kls[0]:.4f}, max {max(kls):.2f} (bound {KL_BOUND:.1f}), "
          f"last 5 {mean(kls[-5:]):.2f}")
    assert kls[0] == pytest.approx(0.0, abs=1e-5)  # the reference is the starting policy
    assert all(math.isfinite(k) and k < KL_BOUND for k in kls)
    assert mean(kls[-5:]) > 0.1  # the policy moved away from the reference, and it shows
    assert {r["kl_coef"] for r in rows} == {0.02}  # fixed: no kl_target
    for row in rows:
        assert row["non_score_reward"] == pytest.approx(-0.02 * row["kl"], rel=1e-4, abs=1e-7)


def test_adaptive_kl_controller_moves_beta_toward_the_target(tmp_path: Path) -> None:
    target, horizon, samples = 4.0, 32, 16
    folder = project(tmp_path, LEARN)
    settings = ("kl_coef=0.2", f"kl_target={target}", f"kl_horizon={horizon}",
                "train.max_steps=30")
    recipe_run(folder, *(arg for s in settings for arg in ("--set", f"stages.ppo.{s}")))
    rows = train_rows(folder / "outputs" / "rl" / "ppo")
    assert len(rows) == 30 and rows[0]["kl_coef"] == 0.2
    for before, after in itertools.pairwise(rows):
        error = min(max(before["kl"] / target - 1, -0.2), 0.2)
        assert after["kl_coef"] == pytest.approx(
            before["kl_coef"] * (1 + error * samples / horizon), rel=1e-9)
        # toward the target: beta rises while KL is above it and falls while below
        assert (after["kl_coef"] > before["kl_coef"]) == (before["kl"] > target)
    kls = [r["kl"] for r in rows]
    betas = [r["kl_coef"] for r in rows]
    print(f"adaptive: kl max {max(kls):.2f}, beta {min(betas):.4f}..{max(betas):.4f}")
    assert rows[1]["kl_coef"] < 0.2  # KL starts at 0, under the target: beta falls first
    assert all(math.isfinite(k) and k < KL_BOUND for k in kls)
    log = (folder / "outputs" / "rl" / "ppo" / "train.log").read_text()
    assert f"kl: adaptive toward {target:g} (horizon {horizon})" in log


def test_kill_9_mid_stage_resumes_to_the_same_numbers(tmp_path: Path, learned: Path) -> None:
    folder = project(tmp_path, LEARN)
    stage_dir = folder / "outputs" / "rl" / "ppo"
    latest = stage_dir / "checkpoints" / LATEST
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", "run", "rl.yaml", "-q"],
                            cwd=folder, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if latest.exists() and json.loads(latest.read_text())["step"] >= 10:
                break
            assert proc.poll() is None, "the stage ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 40 and not (stage_dir / "manifest.json").exists()
    checkpoint = stage_dir / "checkpoints" / f"checkpoint-{killed_at}"
    assert checkpoint_problem(checkpoint) is None
    for name in ("policy/model.safetensors", "value_head.safetensors", "optimizer.pt",
                 "scheduler.pt", "rng_state.pth", "ppo_state.json", "files.json"):
        assert (checkpoint / name).is_file(), name
    import torch

    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):  # no pickled objects
        torch.load(checkpoint / name, weights_only=True)
    assert json.loads((checkpoint / "ppo_state.json").read_text())["step"] == killed_at

    resumed = recipe_run(folder)
    assert resumed["ppo"]["action"] == "resumed"
    log = (stage_dir / "train.log").read_text()
    after = log.split(f"resuming from checkpoint-{killed_at}")[1]
    assert int(after.split("[train] step=")[1].split()[0]) == killed_at + 1
    rows = train_rows(stage_dir)
    assert [r["step"] for r in rows] == list(range(1, 41)), "duplicate or missing rows"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["steps"] == 40 and manifest["resumed_from"] == f"checkpoint-{killed_at}"
    # the same prompts, samples and updates as the uninterrupted run
    for mine, theirs in zip(rows, train_rows(learned), strict=True):
        for key, value in theirs.items():
            if isinstance(value, float) and key not in ("time", *RATE_KEYS):
                assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (mine["step"], key)


def test_checkpoints_keep_latest_best_and_no_more(learned: Path) -> None:
    checkpoints = learned / "checkpoints"
    latest, best = read_pointer(checkpoints, LATEST), read_pointer(checkpoints, BEST)
    assert latest is not None and latest.name == "checkpoint-40"
    assert best is not None
    pointer = json.loads((checkpoints / BEST).read_text())
    rewards = {r["step"]: r["reward"] for r in train_rows(learned)}
    windows = {s: mean([rewards[i] for i in range(s - 9, s + 1)]) for s in (10, 20, 30, 40)}
    assert pointer["metric"] == pytest.approx(max(windows.values()), rel=1e-6)
    assert pointer["step"] == max(windows, key=lambda s: (windows[s], s))
    kept = {p.name for p in checkpoints.glob("checkpoint-*")}
    assert kept == {"checkpoint-40", "checkpoint-30", best.name}  # keep_checkpoints: 2


# ------------------------------------------------------- adapters and a reward model

MORE = MODELS.replace("architecture: gpt2", "architecture: llama").replace(
    "datasets:", "  judge: {path: judge}\ndatasets:") + """\
stages:
  sft_lora:
    kind: sft
    model: scratch
    data: prompts
    adapter: {type: lora, r: 4, alpha: 8, dropout: 0.0}
    train: {max_steps: 4, batch_size: 8, max_seq_len: 96, lr: 2.0e-2}
  ppo_lora:
    kind: ppo
    policy: scratch
    prompts: prompts
    adapter: {type: lora, r: 4, alpha: 8}
    reward: {functions: [{function: "sevens:share_of_sevens"}, {function: format, weight: 0.5}]}
    generation: {max_new_tokens: 6, temperature: 1.0, batch_size: 8}
    train: {max_steps: 3, batch_size: 8, lr: 1.0e-2, log_every: 1, save_every: 2,
            max_seq_len: 96}
  ppo_more:
    kind: ppo
    policy: sft_lora
    prompts: prompts
    reward: {functions: [{function: "sevens:share_of_sevens"}]}
    generation: {max_new_tokens: 6, temperature: 1.0, batch_size: 8}
    train: {max_steps: 3, batch_size: 8, lr: 1.0e-2, log_every: 1, save_every: 2,
            max_seq_len: 96}
  ppo_judged:
    kind: ppo
    policy: scratch
    prompts: prompts
    reward: {model: judge}
    value_model: scratch
    whiten_rewards: true
    mini_batches: 2
    generation: {max_new_tokens: 6, temperature: 1.0, batch_size: 8}
    train: {max_steps: 4, batch_size: 4, grad_accum: 2, lr: 1.0e-2, log_every: 2,
            save_every: 2, max_seq_len: 96}
"""


def build_reward_model(folder: Path) -> None:
    """A tiny GPT-2 sequence classifier with its own tokenizer, saved to ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from llm_recipe.runtime.builtin import generate
    from llm_recipe.runtime.models import train_tokenizer

    tokenizer = train_tokenizer([r["text"] for r in generate("corpus", split="train", n=100)],
                                vocab_size=280)
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=128,
        num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def more(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    folder = project(tmp_path_factory.mktemp("more"), MORE)
    build_reward_model(folder / "judge")
    outcome = recipe_run(folder)
    assert {name: s["action"] for name, s in outcome.items()} == dict.fromkeys(
        ("sft_lora", "ppo_lora", "ppo_more", "ppo_judged"), "ran")
    return folder


def context(folder: Path, stage: str) -> StageContext:
    plan = compile_recipe(folder / "rl.yaml", cwd=folder)
    found = plan.stage(stage)
    return StageContext(plan, found, root=folder, log=StageLog(folder / found.dir, stage))


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_new_adapter_starts_at_its_base_and_writes_an_adapter(more: Path) -> None:
    stage_dir = more / "outputs" / "rl" / "ppo_lora"
    rows = train_rows(stage_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # reference: the adapter off
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["value_loss"]) for r in rows)
    assert "rewards/format/mean" in rows[0]
    assert "rewards/sevens:share_of_sevens/mean" in rows[0]
    assert all(r["reward"] == pytest.approx(r["rewards/sevens:share_of_sevens/mean"]
                                            + 0.5 * r["rewards/format/mean"]) for r in rows)
    output = stage_dir / "adapter"
    assert (output / "adapter_config.json").is_file() and not (output / "reference").exists()
    assert (stage_dir / "checkpoints" / "checkpoint-2" / "policy" /
            "adapter_model.safetensors").is_file()


def test_a_continued_adapter_is_its_own_reference(more: Path) -> None:
    import torch

    # The sft adapter changed the model: the bare base would not be the starting policy.
    ctx = context(more, "ppo_more")
    policy, tokenizer = ctx.load_model(ctx.input("policy"))
    ids = torch.tensor([tokenizer("Question: 3 + 4\nAnswer:")["input_ids"]])
    with torch.no_grad():
        tuned = policy(input_ids=ids).logits.log_softmax(-1)
        with policy.disable_adapter():
            bare = policy(input_ids=ids).logits.log_softmax(-1)
    assert (tuned - bare).abs().max().item() > 1e-3

    stage_dir = more / "outputs" / "rl" / "ppo_more"
    rows = train_rows(stage_dir)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # reference == starting adapter
    assert rows[-1]["kl"] != pytest.approx(0.0, abs=1e-5)
    assert "reference: adapter sft_lora as it starts" in (stage_dir / "train.log").read_text()
    output = stage_dir / "adapter"
    assert not (output / "reference").exists()
    start = adapter_weights(more / "outputs" / "rl" / "sft_lora" / "adapter")
    trained = adapter_weights(output)
    assert start.keys() == trained.keys()
    assert any(not start[k].equal(trained[k]) for k in start)


def test_reward_from_a_reward_model_path(more: Path) -> None:
    stage_dir = more / "outputs" / "rl" / "ppo_judged"
    rows = train_rows(stage_dir)
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        for key in ("reward", "reward_std", "kl", "policy_loss", "value_loss"):
            assert math.isfinite(row[key]), key
    assert rows[0]["reward_std"] > 0  # scored per completion by the classifier
    log = (stage_dir / "train.log").read_text()
    assert "reward: model judge" in log and "value: value_model scratch" in log
    assert "2 mini-batches" in log
    checkpoint = read_pointer(stage_dir / "checkpoints", LATEST)
    assert checkpoint is not None and checkpoint.name == "checkpoint-4"
    assert (checkpoint / "value_model" / "model.safetensors").is_file()
    assert (stage_dir / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", ["ppo_lora", "ppo_more", "ppo_judged"])
def test_adapters_value_models_and_reward_models_resume_exactly(more: Path, stage: str) -> None:
    """An interrupted run (its latest save at step 2, no manifest) resumes from step 2:
    the adapter, its reference, the value model and head, the optimizer and the KL state
    come back from the checkpoint, and the later rows are those of the first run."""
    stage_dir = more / "outputs" / "rl" / stage
    before = train_rows(stage_dir)
    checkpoints = stage_dir / "checkpoints"
    write_pointer(checkpoints, LATEST, checkpoints / "checkpoint-2", step=2)
    for folder in checkpoints.glob("checkpoint-*"):
        if record_step(folder) > 2:
            shutil.rmtree(folder)
    (stage_dir / "manifest.json").unlink()
    outcome = recipe_run(more, "--only", stage)
    assert outcome[stage]["action"] == "resumed"
    after = train_rows(stage_dir)
    assert [r["step"] for r in after] == [r["step"] for r in before]
    for mine, theirs in zip(after, before, strict=True):
        for key, value in theirs.items():
            if isinstance(value, float) and key not in ("time", *RATE_KEYS):
                assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (mine["step"], key)


def test_the_reward_model_scores_each_completion_whatever_the_batch(more: Path) -> None:
    from llm_recipe.runtime.rl.ppo_inputs import scorer
    from llm_recipe.runtime.stages import ppo as stage

    ctx = context(more, "ppo_judged")
    config = stage.PpoConfig.from_config(ctx.config)
    score, note = scorer(ctx, config, "cpu")
    assert note == "model judge"
    prompts = ["Question: 1 + 1\nAnswer:"] * 3
    completions = [" 2", " a longer completion with 7 and 77 and more", "7"]
    together, logged = score(prompts, completions, [{}] * 3)
    alone = [score(prompts[:1], [c], [{}])[0][0] for c in completions]
    assert logged == {}
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(together)) == 3
