"""The dpo stage with trl, on a nano llama pretrained here and a LoRA SFT adapter (CPU).

A module fixture pretrains a nano model and trains a LoRA SFT adapter on it; the dpo
stages of the recipe then start from those, on preference pairs written by the test
(chosen: the right worked answer; rejected: the same answer with a wrong result).

What is checked: at step 1 the policy is its reference, so trl's sigmoid loss is ln 2
and the reward margin 0, for a continued SFT adapter, for ``policy_adapter: merge`` and
for full weights; a reference other than the policy (the SFT adapter's base) is honoured
(the loss at step 1 is then not ln 2); the margin of chosen over rejected rises on the
pairs trained on; what is written; and a kill -9 mid-stage resumes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime import training
from llm_recipe.runtime.builtin import arithmetic
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import dpo, pretrain, sft

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

LN2 = math.log(2)
LORA = "{type: lora, r: 4, alpha: 8, dropout: 0.0}"
STEP1 = "max_steps: 2, lr: 1.0e-3, batch_size: 4, max_seq_len: 128, log_every: 1"
RECIPE = f"""\
recipe: 1
name: pref
seed: 3
models:
  scratch:
    init: {{architecture: llama, size: nano}}
    tokenizer:
      train: {{data: corpus, vocab_size: 400}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 300}}
  arith: {{builtin: arithmetic, split: train, n: 64, format: gsm8k}}
  pairs: {{path: pairs.jsonl, format: preference}}
  few_pairs: {{path: pairs.jsonl, format: preference, limit: 8}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 10, lr: 3.0e-3, batch_size: 8, max_seq_len: 64, log_every: 5}}
  sft:
    kind: sft
    model: pretrain
    data: arith
    adapter: {LORA}
    train: {{max_steps: 10, lr: 1.0e-2, batch_size: 8, max_seq_len: 128, log_every: 5}}
  dpo:
    kind: dpo
    policy: sft
    reference: sft
    data: pairs
    train: {{{STEP1}, grad_accum: 2}}
  dpo_merge:
    kind: dpo
    policy: sft
    reference: sft
    policy_adapter: merge
    adapter: {LORA}
    data: pairs
    train: {{{STEP1}}}
  dpo_full:
    kind: dpo
    policy: pretrain
    data: pairs
    train: {{{STEP1}}}
  dpo_base_ref:
    kind: dpo
    policy: sft
    reference: pretrain
    data: pairs
    beta: 1.0
    train: {{{STEP1}}}
  dpo_learn:
    kind: dpo
    policy: sft
    data: few_pairs
    beta: 0.1
    train: {{max_steps: 30, lr: 2.0e-2, batch_size: 4, max_seq_len: 128, log_every: 5}}
"""


def preference_rows(n: int) -> list[dict[str, str]]:
    """Arithmetic word problems: the right worked answer over one with a wrong result."""
    rows = []
    for row in arithmetic(split="train", n=n, seed=11):
        work, result = row["answer"].rsplit("#### ", 1)
        wrong = str(int(result) + 3)
        rows.append({"prompt": f"Question: {row['question']}\nAnswer:",
                     "chosen": f" {work}#### {result}", "rejected": f" {work}#### {wrong}",
                     "pair_type": "correctness"})
    return rows


def write_workspace(root: Path, recipe: str = RECIPE) -> None:
    (root / "r.yaml").write_text(recipe)
    with (root / "pairs.jsonl").open("w") as handle:
        for row in preference_rows(24):
            handle.write(json.dumps(row) + "\n")


def context(root: Path, name: str, *overrides: str) -> StageContext:
    plan = compile_recipe(root / "r.yaml", cwd=root, overrides=overrides)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name))


def train_rows(ctx: StageContext) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(ctx.dir) if r["phase"] == "train"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A workspace with a pretrained nano model and a LoRA SFT adapter on it."""
    root = tmp_path_factory.mktemp("dpo")
    write_workspace(root)
    pretrain.run(context(root, "pretrain"))
    sft.run(context(root, "sft"))
    return root


def assert_starts_at_ln2(ctx: StageContext) -> dict:
    rows = train_rows(ctx)
    first = rows[1]
    assert first["loss"] == pytest.approx(LN2, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    return rows


def test_continued_sft_adapter_starts_at_ln2_against_the_frozen_sft_model(root):
    ctx = context(root, "dpo")
    trainer, tokenizer = dpo.build_trainer(ctx)
    model = trainer.model
    assert set(model.peft_config) == {"default", dpo.REF_ADAPTER}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    ref_before = {n: p.detach().clone() for n, p in model.named_parameters()
                  if ".ref." in n}
    sft_adapter = state_dict(context(root, "sft").output_path / "adapter_model.safetensors")
    # the reference adapter is the SFT adapter, not zeros (the bare base)
    for key, value in sft_adapter.items():
        ref_name = key.replace(".weight", ".ref.weight")
        assert ref_before[ref_name].equal(value), key
    assert any(v.abs().sum() > 0 for k, v in sft_adapter.items() if "lora_B" in k)

    result = training.train(ctx, trainer)
    after = dict(model.named_parameters())
    assert all(after[n].equal(ref_before[n]) for n in ref_before), "the reference moved"
    training.save_output(ctx, dpo.final_model(ctx, trainer.model), tokenizer)
    rows = assert_starts_at_ln2(ctx)
    assert rows[2]["loss"] != rows[1]["loss"]
    assert result.steps == 2

    log = (ctx.dir / "train.log").read_text()
    assert "[dpo] policy: sft (pretrain + sft's adapter), adapter trained" in log
    assert "[dpo] reference: sft (pretrain + sft's adapter), frozen" in log
    assert "batch: 4 per device x 2 accumulation x 1 process = 8 pairs per step" in log
    files = {p.name for p in ctx.output_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "ref" not in files and "model.safetensors" not in files
    saved = state_dict(ctx.output_path / "adapter_model.safetensors")
    assert saved.keys() == sft_adapter.keys()
    assert any(not saved[k].equal(sft_adapter[k]) for k in saved)


def test_merge_mode_starts_at_ln2_and_writes_full_weights(root):
    ctx = context(root, "dpo_merge")
    assert ctx.stage.output.type == "model"
    result = dpo.run(ctx)
    assert_starts_at_ln2(ctx)
    assert result.steps == 2 and "rewards/margins" in result.metrics
    files = {p.name for p in ctx.output_path.iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files
    weights = state_dict(ctx.output_path / "model.safetensors")
    assert not any("lora_" in k for k in weights)
    log = (ctx.dir / "train.log").read_text()
    assert "merged) with a new LoRA adapter (r=4), trained" in log
    assert "the policy with its new adapter disabled" in log


def test_full_weights_start_at_ln2_against_a_frozen_copy(root):
    ctx = context(root, "dpo_full")
    result = dpo.run(ctx)
    assert_starts_at_ln2(ctx)
    assert result.steps == 2
    assert (ctx.output_path / "model.safetensors").is_file()
    assert "a copy of the policy's starting weights" in (ctx.dir / "train.log").read_text()


def test_a_reference_other_than_the_policy_is_honoured(root):
    ctx = context(root, "dpo_base_ref")
    trainer, _ = dpo.build_trainer(ctx)
    assert trainer.ref_model is not None
    assert set(trainer.model.peft_config) == {"default"}
    training.train(ctx, trainer)
    first = train_rows(ctx)[1]
    # the SFT adapter moved the policy away from its base: rewards, not ln 2, at step 1
    assert abs(first["rewards/chosen"]) > 0.1 and abs(first["rewards/rejected"]) > 0.1
    assert abs(first["loss"] - LN2) > 1e-3
    assert "[dpo] reference: pretrain, frozen, loaded on its own" in (
        ctx.dir / "train.log").read_text()


def test_the_margin_of_chosen_over_rejected_rises_on_its_pairs(root):
    ctx = context(root, "dpo_learn")
    trainer, _ = dpo.build_trainer(ctx)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    before = trainer.evaluate(trainer.train_dataset)
    result = training.train(ctx, trainer)
    after = trainer.evaluate(trainer.train_dataset)
    assert before["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert after["eval_rewards/margins"] > 0.1
    assert after["eval_rewards/accuracies"] == 1.0
    assert after["eval_loss"] < LN2 - 0.05
    rows = train_rows(ctx)
    assert rows[30]["rewards/margins"] > rows[5]["rewards/margins"]
    assert result.steps == 30
    print(f"margin before {before['eval_rewards/margins']:.4f} "
          f"after {after['eval_rewards/margins']:.4f}")


def state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


KILL_RECIPE = RECIPE.split("  dpo:\n")[0] + """\
  dpo:
    kind: dpo
    policy: sft
    reference: sft
    data: pairs
    train: {max_steps: 60, lr: 1.0e-3, batch_size: 4, max_seq_len: 128, log_every: 5,
            save_every: 5}
"""


def test_kill_9_mid_stage_then_a_rerun_resumes_and_finishes(tmp_path):
    write_workspace(tmp_path, KILL_RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", "run", "r.yaml", "-q"],
                            cwd=tmp_path, env=env, start_new_session=True)
    stage_dir = tmp_path / "outputs" / "pref" / "dpo"
    latest = stage_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if latest.exists() and json.loads(latest.read_text())["step"] >= 10:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 60 and not (stage_dir / "manifest.json").exists()
    plan = compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)
    assert plan.stage("dpo").status["state"] == "partial"

    done = subprocess.run([sys.executable, "-m", "llm_recipe", "run", "r.yaml", "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    actions = {s["name"]: s["action"] for s in json.loads(done.stdout)["stages"]}
    assert actions == {"pretrain": "skipped", "sft": "skipped", "dpo": "resumed"}
    log = (stage_dir / "train.log").read_text()
    assert f"resuming from checkpoint-{killed_at}" in log
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["steps"] == 60 and manifest["resumed_from"] == f"checkpoint-{killed_at}"
    steps = [r["step"] for r in read_metrics(stage_dir) if r["phase"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert (stage_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not (stage_dir / "adapter" / "ref").exists()
    shutil.rmtree(tmp_path / "outputs", ignore_errors=True)
