"""The reward_model stage with trl, on a nano llama pretrained here (CPU, offline).

The pairs are learnable by construction: the chosen answer of a word problem ends in
its right result, the rejected one in a wrong result and a marker word ("maybe").
Full weights and a LoRA adapter (whose score head must be trained and saved with it) are
trained briefly; each output is then loaded back the way a ppo stage does
(``loading.load_reward_model`` on the ppo stage's ``reward.model`` input) and must rank
held-out pairs correctly well above chance.

The kill -9 and resume path is the one every trainer-based stage shares
(``training.fit_and_save``); test_stage_dpo covers it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.builtin import arithmetic
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.loading import load_reward_model, sequence_classifier
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import pretrain, reward_model, sft

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

TRAIN = "max_steps: 40, batch_size: 8, max_seq_len: 128, log_every: 10"
RECIPE = f"""\
recipe: 1
name: rm
seed: 4
models:
  scratch:
    init: {{architecture: llama, size: nano}}
    tokenizer:
      train: {{data: corpus, vocab_size: 400}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 300}}
  pairs: {{path: pairs.jsonl, format: preference}}
  held_out: {{path: held_out.jsonl, format: preference}}
  arith: {{builtin: arithmetic, split: test, n: 8, format: gsm8k}}
  arith_train: {{builtin: arithmetic, split: train, n: 32, format: gsm8k}}
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
    data: arith_train
    adapter: {{type: lora, r: 4, alpha: 8, dropout: 0.0}}
    train: {{max_steps: 4, lr: 1.0e-2, batch_size: 8, max_seq_len: 128, log_every: 2}}
  rm:
    kind: reward_model
    model: pretrain
    data: pairs
    validation: held_out
    train: {{{TRAIN}, lr: 3.0e-3}}
  rm_lora:
    kind: reward_model
    model: pretrain
    data: pairs
    adapter: {{type: lora, r: 8, alpha: 16, dropout: 0.0}}
    train: {{{TRAIN}, lr: 1.0e-2}}
  rm_sft:
    kind: reward_model
    model: sft
    data: pairs
    train: {{{TRAIN}, lr: 1.0e-2}}
  ppo:
    kind: ppo
    policy: pretrain
    prompts: arith
    reward: {{model: rm}}
  ppo_lora:
    kind: ppo
    policy: pretrain
    prompts: arith
    reward: {{model: rm_lora}}
  ppo_sft:
    kind: ppo
    policy: pretrain
    prompts: arith
    reward: {{model: rm_sft}}
  ppo_bad:
    kind: ppo
    policy: pretrain
    prompts: arith
    reward: {{model: pretrain}}
"""


def pairs(split: str, n: int) -> list[dict[str, str]]:
    """The right result over a wrong one that also says 'maybe'."""
    rows = []
    for row in arithmetic(split=split, n=n, seed=21):
        work, result = row["answer"].rsplit("#### ", 1)
        rows.append({"prompt": f"Question: {row['question']}\nAnswer:",
                     "chosen": f" {work}#### {result}",
                     "rejected": f" {work}maybe #### {int(result) + 2}"})
    return rows


def context(root: Path, name: str) -> StageContext:
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name))


def held_out_accuracy(root: Path, consumer: str, score: object = None) -> float:
    """Load the reward model as the ppo stage ``consumer`` would and rank held-out pairs
    (``score``: the score head the stage saved, which the loaded model must have)."""
    ctx = context(root, consumer)
    model, tokenizer = load_reward_model(ctx, ctx.input("reward.model"))
    if score is not None:
        loaded = [p for n, p in model.named_parameters() if n.endswith("score.weight")
                  or ("score.modules_to_save" in n and n.endswith(".weight"))]
        assert loaded and all(p.equal(score) for p in loaded)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token is not None and model.config.pad_token_id is not None
    rows = pairs("test", 40)
    prompts = [r["prompt"] for r in rows]
    chosen = reward_model.score_texts(model, tokenizer, prompts, [r["chosen"] for r in rows])
    rejected = reward_model.score_texts(model, tokenizer, prompts,
                                        [r["rejected"] for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    (root / "r.yaml").write_text(RECIPE)
    for name, rows in (("pairs", pairs("train", 64)), ("held_out", pairs("test", 40))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pretrain.run(context(root, "pretrain"))
    return root


def test_full_reward_model_ranks_held_out_pairs(root):
    ctx = context(root, "rm")
    result = reward_model.run(ctx)
    assert result.steps == 40 and result.metrics["loss"] < 0.5
    rows = read_metrics(ctx.dir)
    evals = [r for r in rows if r["phase"] == "eval"]
    assert evals and evals[-1]["accuracy"] >= 0.8 and "margin" in evals[-1]
    assert result.metrics["accuracy"] == evals[-1]["accuracy"]
    assert result.metrics["eval_loss"] == evals[-1]["loss"]
    assert "accuracy" in [r for r in rows if r["phase"] == "train"][-1]
    config = json.loads((ctx.output_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    accuracy = held_out_accuracy(root, "ppo")
    print(f"full reward model: held-out accuracy {accuracy:.3f}")
    assert accuracy >= 0.8


def test_lora_reward_model_saves_its_score_head(root):
    ctx = context(root, "rm_lora")
    assert ctx.stage.output.type == "adapter"
    trainer, tokenizer = reward_model.build_trainer(ctx)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    from llm_recipe.runtime import training

    result = training.fit_and_save(ctx, trainer, tokenizer)
    assert result.steps == 40
    from safetensors.torch import load_file

    saved = load_file(str(ctx.output_path / "adapter_model.safetensors"))
    assert any("score" in k for k in saved) and any("lora_" in k for k in saved)
    assert not (ctx.output_path / "model.safetensors").exists()
    accuracy = held_out_accuracy(root, "ppo_lora", saved["base_model.model.score.weight"])
    print(f"LoRA reward model: held-out accuracy {accuracy:.3f}")
    assert accuracy >= 0.8


def test_a_reward_model_from_an_sft_adapter_continues_it_with_a_score_head(root):
    sft.run(context(root, "sft"))
    ctx = context(root, "rm_sft")
    assert ctx.stage.output.type == "adapter" and ctx.stage.output.base == "pretrain"
    from safetensors.torch import load_file

    first = load_file(str(context(root, "sft").output_path / "adapter_model.safetensors"))
    start, _ = sequence_classifier(ctx, ctx.input("model"), trainable=True)
    params = dict(start.named_parameters())
    for key, value in first.items():  # the SFT adapter's weights, trainable
        loaded = params[key.replace(".weight", ".default.weight")]
        assert loaded.requires_grad and loaded.equal(value), key
    assert any("score" in n and p.requires_grad for n, p in params.items())
    result = reward_model.run(ctx)
    assert result.steps == 40
    saved = load_file(str(ctx.output_path / "adapter_model.safetensors"))
    assert {k for k in saved if "lora_" in k} == set(first)
    assert "base_model.model.score.weight" in saved
    config = json.loads((ctx.output_path / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    accuracy = held_out_accuracy(root, "ppo_sft", saved["base_model.model.score.weight"])
    print(f"reward model from the SFT adapter: held-out accuracy {accuracy:.3f}")
    assert accuracy >= 0.8


def test_a_model_that_is_not_a_reward_model_is_refused(root):
    ctx = context(root, "ppo_bad")
    with pytest.raises(RecipeError, match="not a reward model"):
        load_reward_model(ctx, ctx.input("reward.model"))
