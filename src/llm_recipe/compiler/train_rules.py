"""Plan-time rules for the training settings users bring from Axolotl, TRL and friends.

- ``eval_every: epoch`` / ``save_every: epoch`` map to the HF Trainer's epoch strategies,
  so only kinds trained by a Trainer take them (ppo and continual count steps);
- ``early_stopping`` needs validation data, evaluations (``eval_every``), checkpoints
  saved when evaluations run (the best one is kept: HF ``load_best_model_at_end``) and,
  for a metric that is not a loss, which direction is better;
- ``neftune_noise_alpha`` is sft's (trl's and transformers' NEFTune);
- ``resume_from`` resumes a Trainer's checkpoint (ppo and continual keep their own);
- ``push_to_hub`` uploads a model, adapter or patch (not datasets or reports).

Every error is located at the setting, with what would work; checked with the other
rules once the schema has vouched for the fields.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError, RecipePath

TRAINER_KINDS = ("pretrain", "sft", "dpo", "grpo", "reward_model")
"""Kinds trained by a Hugging Face Trainer (or a trl trainer built on it)."""
VALIDATED_KINDS = ("pretrain", "sft", "reward_model")
"""Kinds with a ``validation`` input, the data early stopping watches."""
PUSHED_KINDS = ("pretrain", "sft", "dpo", "grpo", "ppo", "reward_model", "continual")
"""Kinds whose output is a model, an adapter or a patch: what the Hub stores as a model."""
SAVE_DEFAULT = 100
"""train.save_every when a recipe does not say (the schema's default)."""


def train_errors(data: dict[str, Any], where: SourceMap) -> list[RecipeError]:
    errors: list[RecipeError] = []
    stages = mapping_at(data, "stages")
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        kind = stage.get("kind")
        at: RecipePath = ("stages", name)
        train = mapping_at(stage, "train")
        for key in ("eval_every", "save_every"):
            if train.get(key) == "epoch" and kind not in TRAINER_KINDS:
                errors.append(where.error(
                    (*at, "train", key), f"a {kind} stage counts steps, not epochs",
                    expected=f"{key}: a number of steps",
                    hint=f"epoch is for {', '.join(TRAINER_KINDS)}"))
        if "early_stopping" in train:
            errors.extend(_early_stopping(name, stage, train, where))
        if "neftune_noise_alpha" in train and kind != "sft":
            errors.append(where.error(
                (*at, "train", "neftune_noise_alpha"), f"NEFTune is for sft stages; this is {kind}",
                expected="neftune_noise_alpha on an sft stage",
                hint="NEFTune adds noise to the embeddings of instruction tuning; remove it here"))
        if "resume_from" in train and kind not in TRAINER_KINDS:
            errors.append(where.error(
                (*at, "train", "resume_from"), f"a {kind} stage resumes only from its own "
                "checkpoints (after an interruption, by itself)",
                expected=f"resume_from on {', '.join(TRAINER_KINDS)}",
                hint="remove resume_from; an interrupted run resumes without it"))
        if "push_to_hub" in stage and kind not in PUSHED_KINDS:
            errors.append(where.error(
                (*at, "push_to_hub"), f"a {kind} stage writes no model to push", key=True,
                expected=f"push_to_hub on a stage that trains ({', '.join(PUSHED_KINDS)})",
                hint="push the model of the stage that trains it"))
    return errors


def has_validation(stage: dict[str, Any]) -> bool:
    """Whether a stage evaluates on held-out data (``validation:``, however it is given)."""
    return any(key.startswith("validation") and stage[key] not in (None, False, 0)
               for key in stage)


def _early_stopping(name: str, stage: dict[str, Any], train: dict[str, Any],
                    where: SourceMap) -> list[RecipeError]:
    at: RecipePath = ("stages", name, "train", "early_stopping")
    kind = stage.get("kind")
    if kind not in VALIDATED_KINDS:
        return [where.error(at, f"a {kind} stage has no validation data to watch", key=True,
                            expected=f"early_stopping on {', '.join(VALIDATED_KINDS)}",
                            hint="remove early_stopping, or set max_steps")]
    errors = []
    if not has_validation(stage):
        errors.append(where.error(
            at, "early stopping watches a validation metric, and the stage has no validation "
            "data", key=True, expected=f"stages.{name}.validation: a dataset",
            hint="add validation: <a held-out dataset> to the stage"))
    evals, saves = train.get("eval_every", 0), train.get("save_every", SAVE_DEFAULT)
    if evals == 0:
        errors.append(where.error(
            at, "early stopping needs evaluations during training, and eval_every is 0 "
            "(at the end only)", key=True, expected="train.eval_every: N steps, or epoch",
            hint="e.g. eval_every: 50"))
    elif (evals == "epoch") != (saves == "epoch") or (
            isinstance(evals, int) and isinstance(saves, int) and saves % evals):
        errors.append(where.error(
            ("stages", name, "train", "save_every") if "save_every" in train else at,
            f"early stopping keeps the best checkpoint, so one must be saved whenever an "
            f"evaluation runs: save_every is {saves}, eval_every {evals}",
            key="save_every" not in train,
            expected="save_every: a multiple of eval_every (or both epoch)",
            hint=f"e.g. save_every: {evals}" if isinstance(evals, int) else
            "set save_every: epoch"))
    stopping = train["early_stopping"]
    metric = stopping.get("metric", "eval_loss")
    if "mode" not in stopping and not str(metric).endswith("loss"):
        errors.append(where.error(
            (*at, "metric"), f"is {metric} better higher or lower?",
            expected="early_stopping.mode: max (higher is better) or min",
            hint="a loss is minimised by default; any other metric says which"))
    return errors
