"""The pretrain stage, trained for real on a nano llama from ``init`` (CPU, offline).

Each run is a few seconds: a 300-row builtin corpus, a 400-token trained tokenizer,
64-token blocks, 30 steps. Runs are shared through module fixtures and compared with
each other (same seed, interrupted and resumed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime import training
from llm_recipe.runtime.checkpoints import BEST, LATEST, read_pointer
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import pretrain

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

STEPS = 30
RECIPE = f"""\
recipe: 1
name: pt
seed: 11
models:
  scratch:
    init: {{architecture: llama, size: nano, context_length: 64}}
    tokenizer:
      train: {{data: corpus, vocab_size: 400}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 300}}
  heldout: {{builtin: corpus, format: text, n: 40, split: validation}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    validation: heldout
    train: {{max_steps: {STEPS}, lr: 3.0e-3, batch_size: 8, max_seq_len: 64, log_every: 5,
             save_every: 10, eval_every: 10, lr_scheduler: cosine}}
  more:
    kind: pretrain
    model: pretrain
    data: corpus
    packing: false
    train: {{max_steps: 6, lr: 1.0e-3, batch_size: 4, max_seq_len: 48, log_every: 2}}
"""


def context(root: Path, name: str, resume_from: Path | None = None) -> StageContext:
    (root / "r.yaml").write_text(RECIPE)
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name),
                        resume_from=resume_from)


def train_losses(ctx: StageContext, start: int = 0) -> dict[int, float]:
    rows = read_metrics(ctx.dir)[start:]
    return {r["step"]: r["loss"] for r in rows if r["phase"] == "train"}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    ctx = context(tmp_path_factory.mktemp("first"), "pretrain")
    return ctx, pretrain.run(ctx)


def test_loss_goes_down_and_the_model_is_written(first):
    ctx, result = first
    losses = train_losses(ctx)
    assert sorted(losses) == list(range(5, STEPS + 1, 5))
    assert losses[STEPS] < losses[5] - 1.0
    assert result.steps == STEPS and result.key_metric == "loss"
    assert result.metrics["loss"] == pytest.approx(losses[STEPS])
    assert result.metrics["eval_loss"] < 6.0
    out = ctx.output_path
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name


def test_weights_moved_from_the_init_weights(first):
    from transformers import AutoModelForCausalLM

    ctx, _ = first
    init, _ = ctx.load_model(ctx.input("model"))  # the same seeded random weights
    trained = AutoModelForCausalLM.from_pretrained(str(ctx.output_path))
    before, after = init.state_dict(), trained.state_dict()
    assert before.keys() == after.keys()
    name = "model.layers.0.mlp.up_proj.weight"
    assert not before[name].equal(after[name])


def test_logs_and_checkpoint_pointers(first):
    ctx, _ = first
    lines = (ctx.dir / "train.log").read_text().splitlines()
    train_line = re.compile(r"^\[train\] step=\d+ loss=\d+\.\d+ lr=\S+ tok/s=\d+ grad_norm=\S+$")
    assert sum(bool(train_line.match(line)) for line in lines) == STEPS // 5
    assert [line.split()[1] for line in lines if line.startswith("[eval]")] == [
        "step=10", "step=20", "step=30"]
    assert all(r["tok/s"] > 0 for r in read_metrics(ctx.dir) if r["phase"] == "train")
    latest = read_pointer(ctx.checkpoints, LATEST)
    assert latest is not None and latest.name == f"checkpoint-{STEPS}"
    assert (latest / "optimizer.pt").is_file() and (latest / "trainer_state.json").is_file()
    assert read_pointer(ctx.checkpoints, BEST) is not None


def test_same_seed_gives_the_same_losses(first, tmp_path):
    ctx, _ = first
    again = context(tmp_path, "pretrain")
    pretrain.run(again)
    assert train_losses(again) == train_losses(ctx)


def test_an_interrupted_run_resumes_from_its_latest_checkpoint(first, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    class Killed(Exception):
        pass

    class KillAfterSave(TrainerCallback):
        """Dies right after checkpoint-20 is complete, like a preempted job."""

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 20:
                raise Killed

    real = training.callbacks
    monkeypatch.setattr(training, "callbacks", lambda c: [*real(c), KillAfterSave()])
    ctx = context(tmp_path, "pretrain")
    with pytest.raises(Killed):
        pretrain.run(ctx)
    assert not ctx.output_path.exists()
    monkeypatch.setattr(training, "callbacks", real)

    latest = read_pointer(ctx.checkpoints, LATEST)
    assert latest is not None and latest.name == "checkpoint-20"
    seen = len(read_metrics(ctx.dir))
    resumed = context(tmp_path, "pretrain", resume_from=latest)
    result = pretrain.run(resumed)
    after = train_losses(resumed, start=seen)
    assert min(after) == 25 and max(after) == STEPS and result.steps == STEPS
    # Optimizer, schedule, RNG and data position came back: the same losses as a run
    # that was never interrupted.
    uninterrupted = train_losses(first[0])
    assert after == pytest.approx({s: uninterrupted[s] for s in after}, rel=1e-5)
    assert (resumed.output_path / "model.safetensors").is_file()


def test_continued_pretraining_without_packing(first, tmp_path):
    from transformers import AutoModelForCausalLM

    shutil.copytree(first[0].root / "outputs", tmp_path / "outputs")
    ctx = context(tmp_path, "more")
    model, tokenizer = ctx.load_model(ctx.input("model"))
    config = pretrain.PretrainConfig.from_config(ctx.config)
    rows = ctx.rows("data")
    padded = pretrain.sequences(rows, tokenizer, config)
    assert len(padded) == len(rows)
    assert all(len(s) <= 48 for s in padded)
    assert any(len(s) < 48 and s[-1] == tokenizer.eos_token_id for s in padded)
    packed = pretrain.sequences(rows, tokenizer, pretrain.PretrainConfig(True, 48))
    assert {len(s) for s in packed} == {48}

    stale = ctx.checkpoints / "checkpoint-999"  # left by a run of another config
    (stale / "trainer_state.json").parent.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    (ctx.checkpoints / LATEST).write_text('{"checkpoint": "checkpoint-999", "step": 999}')

    result = pretrain.run(ctx)
    assert result.steps == 6
    assert not stale.exists()
    assert read_pointer(ctx.checkpoints, LATEST) == ctx.checkpoints / "checkpoint-6"
    trained = AutoModelForCausalLM.from_pretrained(str(ctx.output_path)).state_dict()
    name = "model.layers.1.self_attn.q_proj.weight"
    assert not model.state_dict()[name].equal(trained[name])
