"""compute.precision is honoured: parameter, optimizer-state and autocast dtypes (CPU).

A nano llama from ``init`` is trained for a few steps by the pretrain stage's own
Trainer (``pretrain.build_trainer``: the runtime's loading and ``compute.training_args``),
then the trained parameters, AdamW's ``exp_avg``/``exp_avg_sq`` and the dtype a Linear
computed in (a forward hook) are read back. CPU has bf16 autocast, so bf16-mixed is
tested for real here; fp16-mixed needs a GPU (on CPU it runs in fp32, checked below).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog
from llm_recipe.runtime.stages import pretrain

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

RECIPE = """\
recipe: 1
name: prec
seed: 5
models:
  scratch:
    init: {{architecture: llama, size: nano, context_length: 32}}
    tokenizer:
      train: {{data: corpus, vocab_size: 300}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 60}}
compute: {{launcher: local, gpus_per_node: 0, precision: {precision}{attn}}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 3, lr: 1.0e-3, batch_size: 4, max_seq_len: 32, log_every: 1,
             save_every: 100}}
"""


def context(root: Path, precision: str, attn: str | None = None) -> StageContext:
    attn_text = f", attn_implementation: {attn}" if attn else ""
    (root / "r.yaml").write_text(RECIPE.format(precision=precision, attn=attn_text))
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage("pretrain")
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, "pretrain"))


def train_and_inspect(ctx: StageContext) -> dict[str, object]:
    """Train 3 steps; the dtypes of parameters, Adam moments and a Linear's output."""
    import torch

    trainer, _ = pretrain.build_trainer(ctx)
    seen: set[torch.dtype] = set()
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    trainer.train()
    params = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    states = [s for s in trainer.optimizer.state.values() if "exp_avg" in s]
    assert states, "AdamW kept no state"
    moments = {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")}
    return {"params": params, "moments": moments, "compute": seen,
            "bf16_flag": trainer.args.bf16, "fp16_flag": trainer.args.fp16}


@pytest.mark.parametrize(("precision", "param", "computed", "bf16_flag"), [
    ("fp32", "float32", "float32", False),
    ("bf16-true", "bfloat16", "bfloat16", False),  # bf16 weights, no autocast flag
    ("bf16", "bfloat16", "bfloat16", False),  # the short name is bf16-true
    ("bf16-mixed", "float32", "bfloat16", True),  # fp32 master weights, bf16 autocast
    ("fp16-mixed", "float32", "float32", False),  # no fp16 autocast on CPU: fp32
])
def test_parameters_and_optimizer_states_follow_the_mode(tmp_path, precision, param,
                                                         computed, bf16_flag):
    import torch

    ctx = context(tmp_path, precision)
    seen = train_and_inspect(ctx)
    assert seen["params"] == {getattr(torch, param)}
    assert seen["moments"] == {getattr(torch, param)}  # AdamW's state follows the weights
    assert seen["compute"] == {getattr(torch, computed)}
    assert seen["bf16_flag"] is bf16_flag and seen["fp16_flag"] is False
    assert f"precision {compute.precision(ctx.compute)}: " in (ctx.dir / "train.log").read_text()


def test_fp16_mixed_sets_the_fp16_flag_on_a_gpu_compute() -> None:
    gpu = {"gpus_per_node": 1, "precision": "fp16-mixed"}
    assert compute.precision(gpu) == "fp16-mixed"
    assert compute.torch_dtype(gpu) == "float32"
    train = {"lr": 1e-3, "batch_size": 1, "grad_accum": 1, "lr_scheduler": "linear",
             "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
             "optimizer": "adamw_torch", "log_every": 1, "save_every": 10,
             "keep_checkpoints": 1, "max_steps": 1}
    kwargs = compute.trainer_kwargs({"train": train, "seed": 1}, gpu, Path("out"))
    assert (kwargs["fp16"], kwargs["bf16"]) == (True, False)
    assert compute.describe_precision({"gpus_per_node": 0, "precision": "fp16"}) == (
        "precision fp32: everything in fp32 (asked: fp16, on CPU)")


def test_attention_implementation_reaches_the_model(tmp_path) -> None:
    (tmp_path / "eager").mkdir()
    (tmp_path / "default").mkdir()
    eager = context(tmp_path / "eager", "fp32", "eager")
    trainer, _ = pretrain.build_trainer(eager)
    assert trainer.model.config._attn_implementation == "eager"
    default = context(tmp_path / "default", "fp32")
    model, _ = default.load_model(default.input("model"), trainable=True)
    assert model.config._attn_implementation == "sdpa"


def test_flash_attention_without_flash_attn_is_a_recipe_error(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    ctx = context(tmp_path, "fp32", "flash_attention_2")
    assert any("flash_attn" in n for n in ctx.stage.estimate["notes"])  # plan time warns
    with pytest.raises(RecipeError, match="flash_attn package is not installed"):
        ctx.load_model(ctx.input("model"), trainable=True)


@pytest.mark.parametrize(("precision", "autocast"), [
    ("fp32", "no"), ("bf16-true", "no"), ("bf16", "no"), ("bf16-mixed", "bf16")])
def test_the_mode_overrides_the_launchers_mixed_precision(tmp_path, monkeypatch, precision,
                                                           autocast) -> None:
    """`accelerate launch` exports its config's mixed_precision; the mode still decides."""
    from transformers import TrainingArguments

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16" if autocast == "no" else "no")
    ctx = context(tmp_path, precision)
    args = compute.training_args(TrainingArguments, ctx.config, ctx.compute, ctx.checkpoints)
    assert args.mixed_precision == autocast
