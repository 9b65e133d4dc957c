"""reward_model: a one-score sequence classifier trained on preference pairs (trl's
RewardTrainer), which a ppo stage uses as its ``reward.model``.

The starting model is loaded as a classifier by :func:`loading.sequence_classifier`:
full weights get a new score head (seeded by the stage's seed); an adapter input is
continued on its base, as sft continues one. With ``adapter:`` a new LoRA/QLoRA adapter
is trained, and peft's ``modules_to_save`` trains and saves the score head with it (a
classification task's head is kept by peft), so the adapter output restores the whole
reward model on its base. The output is what the plan says: full weights
(``AutoModelForSequenceClassification``, ``num_labels=1``) or that adapter, with the
tokenizer, whose pad token is set (its eos when it had none). PPO loads it with
:func:`llm_recipe.runtime.loading.load_reward_model`.

trl scores ``prompt + answer + eos``; :func:`score_texts` does the same for callers.
With ``validation`` the accuracy of chosen over rejected (trl's ``accuracy``) is
reported in the eval rows and the stage's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import adapters, compute, training
from llm_recipe.runtime.context import StageContext, StageResult

METRICS = ("accuracy", "margin")
"""trl's reward log keys kept beside loss (train rows, and as eval_* in eval rows)."""


@dataclass(frozen=True)
class RewardModelConfig:
    adapter: dict[str, Any] | None
    max_seq_len: int
    seed: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RewardModelConfig:
        return cls(adapter=config.get("adapter"), max_seq_len=int(config["train"]["max_seq_len"]),
                   seed=int(config["seed"]))


def run(ctx: StageContext) -> StageResult:
    """Train the reward model on the pairs and write it (full or adapter) with its tokenizer."""
    trainer, tokenizer = build_trainer(ctx)
    result = training.fit_and_save(ctx, trainer, tokenizer)
    evals = [row for row in trainer.state.log_history if "eval_accuracy" in row]
    if evals:
        result.metrics["accuracy"] = float(evals[-1]["eval_accuracy"])
        result.key_metric = "accuracy"
    return result


def build_trainer(ctx: StageContext) -> tuple[Any, Any]:
    """(RewardTrainer, tokenizer), ready to train."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import RewardTrainer

    config = RewardModelConfig.from_config(ctx.config)
    rows = pair_rows(ctx, "data")
    has_validation = ctx.has_validation  # a validation dataset, or validation_split
    eval_rows = pair_rows(ctx, "validation") if has_validation else None
    args = training_arguments(ctx, config)
    set_seed(config.seed)  # the new score head (and adapter) are random
    model, tokenizer, peft_config = load_model(ctx, config, args)
    trainer = RewardTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        callbacks=training.callbacks(ctx, metrics=METRICS))
    _check_kept(ctx, "training", len(rows), len(trainer.train_dataset), config.max_seq_len)
    if eval_rows:
        _check_kept(ctx, "validation", len(eval_rows), len(trainer.eval_dataset),
                    config.max_seq_len)
    item = ctx.input("model")
    what = (f"a new {config.adapter['type']} adapter (r={config.adapter['r']}) and the score "
            "head" if config.adapter else "its adapter and the score head"
            if item.type == "adapter" else "all weights")
    ctx.log.line(f"[reward_model] {item.ref} as a one-score classifier, training {what}; "
                 f"{len(trainer.train_dataset)} pairs")
    return trainer, tokenizer


def pair_rows(ctx: StageContext, field: str) -> list[dict[str, Any]]:
    """The pairs of the ``data`` (refused when empty) or ``validation`` input as trl rows:
    what RewardTrainer prepares, and what ``recipe data`` shows."""
    rows = [to_trl(row) for row in ctx.rows(field)]
    if not rows and field == "data":
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{ctx.input('data').ref}' has no "
                          "preference pairs", hint="check the dataset's source and limit")
    return rows


def training_arguments(ctx: StageContext, config: RewardModelConfig) -> Any:
    """The stage's RewardConfig (its max_length decides which pairs trl keeps)."""
    from trl import RewardConfig

    return compute.training_args(
        RewardConfig, ctx.config, ctx.compute, ctx.checkpoints,
        has_validation=ctx.has_validation, max_length=config.max_seq_len)


def to_trl(row: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}


def load_model(ctx: StageContext, config: RewardModelConfig, args: Any) -> tuple[Any, Any, Any]:
    """(classifier, tokenizer, peft_config) for the stage's input and adapter block."""
    from llm_recipe.runtime.loading import sequence_classifier

    item = ctx.input("model")
    adapter = config.adapter
    if adapter and item.type == "adapter":
        raise RecipeError(
            f"stage {ctx.stage.name}: '{item.ref}' is already an adapter; a second adapter "
            "cannot be stacked on it", hint="remove the stage's adapter: block to keep "
            "training that adapter, or start from a stage that produced full weights")
    if adapter and adapter["type"] == "qlora":
        raise RecipeError(f"stage {ctx.stage.name}: a reward model with a QLoRA adapter is "
                          "not supported yet", expected="adapter type: lora",
                          hint="use type: lora")
    model, tokenizer = sequence_classifier(ctx, item, trainable=True)
    if not adapter:
        return model, tokenizer, None
    return model, tokenizer, adapters.lora_config(adapter, task_type="SEQ_CLS")


def _check_kept(ctx: StageContext, what: str, given: int, kept: int, max_seq_len: int) -> None:
    """trl drops pairs longer than max_length: say so, and refuse when none is left."""
    if kept == given:
        return
    if kept == 0:
        raise RecipeError(
            f"stage {ctx.stage.name}: all {given} {what} pairs are longer than "
            f"train.max_seq_len ({max_seq_len} tokens) and dropped",
            hint=f"raise stages.{ctx.stage.name}.train.max_seq_len")
    ctx.log.line(f"[data] warning: {given - kept} of {given} {what} pairs dropped: longer than "
                 f"max_seq_len {max_seq_len}")


def score_texts(model: Any, tokenizer: Any, prompts: list[str], answers: list[str], *,
                batch_size: int = 16) -> list[float]:
    """The reward of each ``prompt + answer``, scored as trl trained it (eos appended)."""
    import torch

    eos = tokenizer.eos_token or ""
    texts = [p + a if a.endswith(eos) else p + a + eos
             for p, a in zip(prompts, answers, strict=True)]
    device = next(model.parameters()).device
    scores: list[float] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt",
                              padding=True).to(device)
            with torch.no_grad():
                logits = model(**batch).logits
            scores.extend(float(x) for x in logits[:, 0])
    finally:
        tokenizer.padding_side = side
    return scores
