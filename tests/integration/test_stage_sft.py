"""The sft stage with trl, trained for real on a nano llama pretrained here (CPU, offline).

A module fixture pretrains once (20 steps); each sft stage of the recipe then starts
from that model: full fine-tuning on gsm8k rows with validation, conversational rows
with assistant-only loss, LoRA, continuing that LoRA adapter, and QLoRA (skipped
without bitsandbytes).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import training
from llm_recipe.runtime.checkpoints import LATEST, read_pointer
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import pretrain, sft

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

TRAIN = "lr: 1.0e-3, batch_size: 8, max_seq_len: 128, save_every: 10"
RECIPE = f"""\
recipe: 1
name: ft
seed: 5
models:
  scratch:
    init: {{architecture: llama, size: nano}}
    tokenizer:
      train: {{data: corpus, vocab_size: 400}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 300}}
  arith: {{builtin: arithmetic, split: train, n: 160, format: gsm8k}}
  arith_val: {{builtin: arithmetic, split: test, n: 16, format: gsm8k}}
  dialogues: {{builtin: arithmetic, split: train, n: 32, format: messages}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 20, lr: 3.0e-3, batch_size: 8, max_seq_len: 64, log_every: 10}}
  sft:
    kind: sft
    model: pretrain
    data: arith
    validation: arith_val
    train: {{max_steps: 30, log_every: 5, {TRAIN}}}
  chat:
    kind: sft
    model: pretrain
    data: dialogues
    train: {{max_steps: 4, log_every: 2, {TRAIN}}}
  lora:
    kind: sft
    model: pretrain
    data: arith
    adapter: {{type: lora, r: 4, alpha: 8, dropout: 0.0}}
    train: {{max_steps: 20, log_every: 5, lr: 5.0e-3, batch_size: 8, max_seq_len: 128}}
  lora_more:
    kind: sft
    model: lora
    data: arith
    train: {{max_steps: 4, log_every: 2, {TRAIN}}}
  qlora:
    kind: sft
    model: pretrain
    data: arith
    adapter: {{type: qlora, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
    train: {{max_steps: 4, log_every: 2, {TRAIN}}}
"""


def context(root: Path, name: str, *overrides: str) -> StageContext:
    (root / "r.yaml").write_text(RECIPE)
    plan = compile_recipe(root / "r.yaml", cwd=root, overrides=overrides)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name))


def train_losses(ctx: StageContext) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(ctx.dir) if r["phase"] == "train"}


def state_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A workspace with the pretrain stage done, that the sft stages start from."""
    root = tmp_path_factory.mktemp("sft")
    pretrain.run(context(root, "pretrain"))
    return root


@pytest.fixture(scope="module")
def full(root):
    ctx = context(root, "sft")
    return ctx, sft.run(ctx)


def test_full_fine_tuning_learns_and_writes_a_model(full):
    ctx, result = full
    losses = train_losses(ctx)
    assert sorted(losses) == list(range(5, 31, 5))
    assert losses[30] < losses[5] - 0.5
    assert result.steps == 30 and result.metrics["loss"] == pytest.approx(losses[30])
    assert 0 < result.metrics["eval_loss"] < losses[5]
    assert [r["step"] for r in read_metrics(ctx.dir) if r["phase"] == "eval"] == [30]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (ctx.output_path / name).is_file(), name
    base = state_dict(ctx.path(ctx.input("model").path or "") / "model.safetensors")
    tuned = state_dict(ctx.output_path / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert not base["model.layers.0.self_attn.v_proj.weight"].equal(
        tuned["model.layers.0.self_attn.v_proj.weight"])
    latest = read_pointer(ctx.checkpoints, LATEST)
    assert latest is not None and latest.name == "checkpoint-30"


def test_no_trl_model_card_in_checkpoints(full):
    ctx, _ = full
    assert (ctx.checkpoints / "checkpoint-30").is_dir()
    assert not (ctx.checkpoints / "README.md").exists()  # trl's "generated_from_trainer"


def test_completion_only_loss_ignores_the_prompt(root):
    ctx = context(root, "sft")
    trainer, tokenizer = sft.build_trainer(ctx)
    config = sft.SftConfig.from_config(ctx.config)
    sources = [sft.to_trl(row, "gsm8k", config) for row in ctx.rows("data")[:2]]
    rows = [trainer.train_dataset[i] for i in range(2)]
    assert set(rows[0]) == {"input_ids", "labels"}  # tokenized here; trl's preparation skipped
    batch = trainer.data_collator(rows)
    for i, (row, source) in enumerate(zip(rows, sources, strict=True)):
        prompt = len(tokenizer(source["prompt"])["input_ids"])
        labels = batch["labels"][i].tolist()
        ids = batch["input_ids"][i].tolist()
        n = len(row["input_ids"])
        assert source["prompt"].startswith("Question: ")
        assert source["prompt"].endswith("\nAnswer:")
        assert labels[:prompt] == [-100] * prompt
        assert labels[prompt:n] == ids[prompt:n]
        assert labels[n:] == [-100] * (len(labels) - n)
        assert tokenizer.decode(ids[prompt:n]) == source["completion"] + tokenizer.eos_token
        assert "#### " in source["completion"]

    trainer, _ = sft.build_trainer(context(root, "sft", "stages.sft.loss=all"))
    row = trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]


def test_trl_defaults_do_not_leak_onto_the_cpu(root):
    # SFTConfig defaults to bf16 and gradient checkpointing; compute.py decides instead.
    template = 'stages.sft.prompt_template="Q: {question}\\nA:"'
    trainer, _ = sft.build_trainer(context(root, "sft", template, "stages.sft.packing=true"))
    args = trainer.args
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert not args.gradient_checkpointing and not trainer.model.is_gradient_checkpointing
    assert args.max_length == 128 and args.seed == 5
    row = trainer.train_dataset[0]
    assert len(row["input_ids"]) <= 128 and "seq_lengths" in row  # packed
    trainer, tokenizer = sft.build_trainer(context(root, "sft", template))
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).startswith("Q: ")


def test_conversations_train_on_assistant_turns_only(root):
    ctx = context(root, "chat")
    trainer, tokenizer = sft.build_trainer(ctx)
    row = trainer.train_dataset[0]
    kept = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    answer = ctx.rows("data")[0]["messages"][-1]["content"]
    assert tokenizer.decode(kept) == answer + tokenizer.eos_token
    assert tokenizer.decode(row["input_ids"]).startswith("<|user|>\n")

    result = sft.run(ctx)
    assert result.steps == 4 and result.metrics["loss"] > 0
    assert (ctx.output_path / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def lora(root):
    """The LoRA stage run step by step (what run() does), keeping the trainer to inspect."""
    ctx = context(root, "lora")
    trainer, tokenizer = sft.build_trainer(ctx)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = training.train(ctx, trainer)
    training.save_output(ctx, trainer.model, tokenizer)
    after = dict(trainer.model.named_parameters())
    return ctx, result, before, after


def test_lora_trains_only_the_adapter(lora):
    ctx, result, before, after = lora
    losses = train_losses(ctx)
    assert losses[20] < losses[5]
    assert result.steps == 20 and result.metrics["loss"] == pytest.approx(losses[20])
    lora_names = [n for n in before if "lora_" in n]
    assert lora_names and all(after[n].requires_grad for n in lora_names)
    assert any(not before[n].equal(after[n]) for n in lora_names if "lora_B" in n)
    base_names = [n for n in before if "lora_" not in n]
    assert base_names and all(before[n].equal(after[n]) for n in base_names)

    files = {p.name for p in ctx.output_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    saved = state_dict(ctx.output_path / "adapter_model.safetensors")
    assert saved and all("lora_" in key for key in saved)
    assert any(t.abs().sum() > 0 for key, t in saved.items() if "lora_B" in key)


def test_same_seed_gives_the_same_losses(root, lora, tmp_path):
    shutil.copytree(root / "outputs", tmp_path / "outputs",
                    ignore=lambda d, names: [n for n in names if n in ("lora", "sft", "chat")])
    again = context(tmp_path, "lora")
    sft.run(again)
    assert train_losses(again) == train_losses(lora[0])


def test_an_adapter_input_keeps_training_that_adapter(root, lora):
    ctx = context(root, "lora_more")
    assert ctx.stage.output.type == "adapter"
    result = sft.run(ctx)
    assert result.steps == 4
    first = state_dict(lora[0].output_path / "adapter_model.safetensors")
    more = state_dict(ctx.output_path / "adapter_model.safetensors")
    assert first.keys() == more.keys()
    assert any(not first[k].equal(more[k]) for k in first)


def test_qlora_without_bitsandbytes_says_what_to_install(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(RecipeError) as caught:
        sft.build_trainer(context(root, "qlora"))
    assert "llm-recipe[qlora]" in caught.value.render()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes (the qlora extra) is not installed")
def test_qlora_trains_an_adapter_on_a_4bit_base(root):
    ctx = context(root, "qlora")
    trainer, _ = sft.build_trainer(ctx)
    kinds = {type(m).__name__ for m in trainer.model.modules()}
    assert "Linear4bit" in kinds
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    result = sft.run(ctx)
    assert result.steps == 4 and result.metrics["loss"] > 0
    assert (ctx.output_path / "adapter_model.safetensors").is_file()
    assert not (ctx.dir / ".qlora-base").exists()
