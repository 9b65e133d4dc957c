"""dpo: direct preference optimisation with trl's DPOTrainer.

The reference model is the point of the stage's design, because the easy way gets it
wrong: trl with a PEFT model and no ``ref_model`` computes the reference by disabling
the adapters, which is the bare base, not the SFT model a ``policy: sft, reference: sft``
recipe means. What each case trains and compares against:

============================  ==================================  ==========================
policy                        trained                             reference (frozen)
============================  ==================================  ==========================
adapter, ``continue``         that adapter, loaded trainable      base + that adapter: a
                                                                  second copy of the adapter
                                                                  in the same model (trl's
                                                                  ``ref`` adapter)
adapter, ``merge``            a new ``adapter:`` on base + the    the merged model, new
                              policy adapter merged               adapter disabled
full weights, ``adapter:``    a new adapter                       the policy, adapter disabled
full weights                  all weights                         a frozen copy of the policy
============================  ==================================  ==========================

A ``reference`` that names another model or adapter than the policy (e.g. the base of an
SFT adapter) is loaded on its own, frozen (an adapter merged into its base), and used as
it is. The policy and the reference are named in train.log, with the batch arithmetic.

Output: the plan decides (``ctx.stage.output.type``): an adapter (the policy's own,
continued, or the new one) or, with ``policy_adapter: merge``, full weights with the new
adapter merged too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import adapters, compute, training
from llm_recipe.runtime.context import StageContext, StageResult

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
"""trl's DPO log keys kept in train.log and metrics.jsonl beside loss, lr and grad_norm."""
REF_ADAPTER = "ref"
"""The name trl gives the frozen copy of a continued adapter."""


@dataclass(frozen=True)
class DpoConfig:
    beta: float
    loss_type: str
    label_smoothing: float
    policy_adapter: str
    """continue | merge: what to do when the policy is an adapter."""
    adapter: dict[str, Any] | None
    max_seq_len: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DpoConfig:
        return cls(beta=float(config["beta"]), loss_type=config["loss_type"],
                   label_smoothing=float(config["label_smoothing"]),
                   policy_adapter=config["policy_adapter"], adapter=config.get("adapter"),
                   max_seq_len=int(config["train"]["max_seq_len"]))


@dataclass(frozen=True)
class Models:
    """What the trainer gets, and the words train.log uses for the two roles."""

    policy: Any
    tokenizer: Any
    peft_config: Any
    ref_model: Any
    policy_text: str
    reference_text: str


def run(ctx: StageContext) -> StageResult:
    """Train the policy on the preference pairs and write the adapter or model."""
    trainer, tokenizer = build_trainer(ctx)
    result = training.train(ctx, trainer)
    training.save_output(ctx, final_model(ctx, trainer.model), tokenizer)
    result.metrics.update(last_logged(trainer.state.log_history, METRICS))
    return result


def build_trainer(ctx: StageContext) -> tuple[Any, Any]:
    """(DPOTrainer, tokenizer), ready to train; tests inspect its models and datasets."""
    from datasets import Dataset
    from trl import DPOTrainer

    config = DpoConfig.from_config(ctx.config)
    rows = train_rows(ctx)
    args = training_arguments(ctx, config)
    models = load_models(ctx, config, args)
    trainer = DPOTrainer(
        model=models.policy, ref_model=models.ref_model, args=args,
        processing_class=models.tokenizer, peft_config=models.peft_config,
        train_dataset=Dataset.from_list(rows),
        callbacks=training.callbacks(ctx, metrics=METRICS))
    _check_reference(ctx, trainer, models)
    _check_kept(ctx, len(rows), len(trainer.train_dataset), config.max_seq_len)
    ctx.log.line(f"[dpo] policy: {models.policy_text}")
    ctx.log.line(f"[dpo] reference: {models.reference_text}")
    ctx.log.line(f"[dpo] {batch_text(args)}; beta {config.beta}, loss {config.loss_type}, "
                 f"{len(trainer.train_dataset)} pairs")
    return trainer, models.tokenizer


def train_rows(ctx: StageContext) -> list[dict[str, Any]]:
    """The preference pairs as trl rows; what DPOTrainer prepares, and ``recipe data`` shows."""
    rows = [to_trl(row) for row in ctx.rows("data")]
    if not rows:
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{ctx.input('data').ref}' has no "
                          "preference pairs", hint="check the preferences stage's log: a "
                          "strategy or margin can leave no pair")
    return rows


def training_arguments(ctx: StageContext, config: DpoConfig) -> Any:
    """The stage's DPOConfig (its max_length and truncation decide which pairs trl keeps)."""
    from trl import DPOConfig

    return compute.training_args(
        DPOConfig, ctx.config, ctx.compute, ctx.checkpoints, max_length=config.max_seq_len,
        beta=config.beta, loss_type=[config.loss_type], label_smoothing=config.label_smoothing)


def to_trl(row: dict[str, Any]) -> dict[str, Any]:
    """A preference row as trl reads it (extra fields such as pair_type are dropped)."""
    return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}


def batch_text(args: Any) -> str:
    """Per-device batch x accumulation x processes = pairs per optimizer step."""
    per_device, accum, processes = (args.per_device_train_batch_size,
                                    args.gradient_accumulation_steps, args.world_size)
    return (f"batch: {per_device} per device x {accum} accumulation x {processes} "
            f"process{'es' if processes != 1 else ''} = {per_device * accum * processes} "
            "pairs per step")


def load_models(ctx: StageContext, config: DpoConfig, args: Any) -> Models:
    """The policy (and its new adapter, if any) and the reference, per the table above."""
    policy = ctx.input("policy")
    reference = ctx.input("reference") if ctx.has_input("reference") else None
    same = reference is None or reference.ref == policy.ref
    if policy.type == "adapter" and config.policy_adapter == "merge":
        adapter = _adapter_block(ctx, config, merge=True)
        model, tokenizer = ctx.load_model(policy)
        model = model.merge_and_unload()
        policy_text = (f"{policy.ref} ({policy.base} + {policy.ref}'s adapter, merged) with a "
                       f"new {_adapter_text(adapter)}, trained; written merged (full weights)")
        merged = f"{policy.ref} ({policy.base} + {policy.ref}'s adapter, merged)"
        if same:
            return Models(model, tokenizer, _lora_config(adapter), None, policy_text,
                          f"{merged}: the policy with its new adapter disabled")
        ref, ref_text = _load_reference(ctx, reference, tokenizer)
        return Models(model, tokenizer, _lora_config(adapter), ref, policy_text, ref_text)
    if policy.type == "adapter":
        if config.adapter:
            raise RecipeError(
                f"stage {ctx.stage.name}: '{policy.ref}' is already an adapter; a new adapter "
                "cannot be stacked on it", hint="remove adapter: to continue that adapter, or "
                "set policy_adapter: merge to merge it and train the new one")
        model, tokenizer = ctx.load_model(policy, trainable=True)
        policy_text = f"{policy.ref} ({policy.base} + {policy.ref}'s adapter), adapter trained"
        if same:
            return Models(model, tokenizer, None, None, policy_text,
                          f"{policy.ref} ({policy.base} + {policy.ref}'s adapter), frozen: a "
                          "second copy of the adapter in the policy model")
        ref, ref_text = _load_reference(ctx, reference, tokenizer)
        return Models(model, tokenizer, None, ref, policy_text, ref_text)
    if config.adapter:
        adapter = _adapter_block(ctx, config, merge=False)
        model, tokenizer, peft_config = _load_for_adapter(ctx, policy, adapter, args)
        policy_text = f"{policy.ref} with a new {_adapter_text(adapter)}, trained"
        if same:
            return Models(model, tokenizer, peft_config, None, policy_text,
                          f"{policy.ref}: the policy with its new adapter disabled")
        ref, ref_text = _load_reference(ctx, reference, tokenizer)
        return Models(model, tokenizer, peft_config, ref, policy_text, ref_text)
    model, tokenizer = ctx.load_model(policy, trainable=True)
    policy_text = f"{policy.ref}, all weights trained"
    if same:
        return Models(model, tokenizer, None, _frozen(copy.deepcopy(model)), policy_text,
                      f"{policy.ref}, frozen: a copy of the policy's starting weights")
    ref, ref_text = _load_reference(ctx, reference, tokenizer)
    return Models(model, tokenizer, None, ref, policy_text, ref_text)


def _adapter_block(ctx: StageContext, config: DpoConfig, *, merge: bool) -> dict[str, Any]:
    adapter = config.adapter
    if not adapter:  # the compiler refuses this; a hand-edited plan may not
        raise RecipeError(f"stage {ctx.stage.name}: policy_adapter: merge needs an adapter: "
                          "block for the new adapter", hint="add adapter: {type: lora, r: 16}")
    if merge and adapter["type"] == "qlora":
        raise RecipeError(
            f"stage {ctx.stage.name}: policy_adapter: merge trains on full weights it has just "
            "merged, which cannot be 4-bit", expected="adapter type: lora",
            hint="use type: lora, or continue the policy's adapter (policy_adapter: continue)")
    return adapter


def _adapter_text(adapter: dict[str, Any]) -> str:
    return f"{'QLoRA' if adapter['type'] == 'qlora' else 'LoRA'} adapter (r={adapter['r']})"


def _lora_config(adapter: dict[str, Any]) -> Any:
    return adapters.lora_config(adapter)


def _load_for_adapter(ctx: StageContext, item: Any, adapter: dict[str, Any],
                      args: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) for a new LoRA/QLoRA adapter on full weights (as sft)."""
    return adapters.load_for_training(ctx, item, adapter,
                                      gradient_checkpointing=bool(args.gradient_checkpointing))


def _load_reference(ctx: StageContext, item: Any, tokenizer: Any) -> tuple[Any, str]:
    """A reference other than the policy: loaded on its own, an adapter merged, frozen."""
    model, ref_tokenizer = ctx.load_model(item)
    text = f"{item.ref}, frozen, loaded on its own"
    if item.type == "adapter":
        model = model.merge_and_unload()
        text = f"{item.ref} ({item.base} + {item.ref}'s adapter, merged), frozen, loaded on its own"
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RecipeError(
            f"stage {ctx.stage.name}: the reference '{item.ref}' has another tokenizer than the "
            "policy, so their log-probabilities of the same tokens cannot be compared",
            hint="use a reference built on the same base model as the policy")
    return _frozen(model), text


def _frozen(model: Any) -> Any:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _check_reference(ctx: StageContext, trainer: Any, models: Models) -> None:
    """A continued adapter must have its frozen copy, or trl would compare with the bare base."""
    from llm_recipe.runtime.training import is_peft

    if models.ref_model is not None or models.peft_config is not None:
        return
    model = trainer.model
    if not is_peft(model):
        return
    if REF_ADAPTER not in model.peft_config:
        raise RecipeError(
            f"stage {ctx.stage.name}: trl did not add a frozen copy of the policy's adapter, so "
            "its reference would be the base model without the adapter",
            hint="this trl/peft version is not supported for continuing an adapter with DPO; "
            "use policy_adapter: merge")
    for name, param in model.named_parameters():
        if f".{REF_ADAPTER}." in name:
            param.requires_grad_(False)


def _check_kept(ctx: StageContext, given: int, kept: int, max_seq_len: int) -> None:
    """trl drops pairs whose prompt alone fills max_length: say so instead of failing later."""
    if kept == given:
        return
    if kept == 0:
        raise RecipeError(
            f"stage {ctx.stage.name}: all {given} preference pairs are dropped: their prompts "
            f"alone fill train.max_seq_len ({max_seq_len} tokens)",
            expected="train.max_seq_len longer than the prompts in tokens",
            hint=f"raise stages.{ctx.stage.name}.train.max_seq_len")
    ctx.log.line(f"[data] warning: {given - kept} of {given} pairs dropped: their prompts fill "
                 f"max_seq_len {max_seq_len}")


def final_model(ctx: StageContext, model: Any) -> Any:
    """What to write: the trained adapter alone (not trl's reference copy), or full weights
    with the new adapter merged when the plan wants a model (``policy_adapter: merge``)."""
    from llm_recipe.runtime.training import is_peft

    model = getattr(model, "module", model)
    if not is_peft(model):
        return model
    if ctx.stage.output.type == "model":
        return model.merge_and_unload()
    if REF_ADAPTER in model.peft_config:
        model.delete_adapter(REF_ADAPTER)
    return model


def last_logged(history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    """The last logged value of each of ``keys`` in the trainer's log history."""
    out: dict[str, float] = {}
    for row in history:
        out.update({key: float(row[key]) for key in keys if key in row})
    return out
