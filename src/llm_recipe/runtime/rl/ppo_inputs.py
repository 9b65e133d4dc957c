"""What a ppo stage's inputs become: prompts, a policy with its reference, a value
function and a reward.

The stage (:mod:`llm_recipe.runtime.stages.ppo`) says what each input means (its
docstring is the contract) and runs the loop; this module does the loading, through
the stage's :class:`~llm_recipe.runtime.context.StageContext`, so that the models of
:mod:`llm_recipe.runtime.rl.ppo_rollout` know nothing of plans and workspaces:

- **prompts** (:func:`prompt_rows`, :func:`encode_prompts`): the rows rendered as sft
  and eval render them, their other columns kept for the reward functions, and the
  token ids cut from the left to leave room for the response.
- **policy and reference** (:func:`load_policy`): full weights, a new adapter or a
  continued one, each with its kind of reference; a resumed run takes the trained
  weights from the checkpoint and the reference from the input, as on the first start.
- **value function** (:func:`load_value`, :func:`policy_value`): a head on the policy
  or on ``value_model``, put together with the policy into the one trained module.
- **reward** (:func:`scorer`): reward functions or a reward model, behind one function.

torch, transformers and peft are imported inside functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import PROMPT_TEMPLATE

if TYPE_CHECKING:
    from llm_recipe.runtime.stages.ppo import PpoConfig

REFERENCE_ADAPTER = "reference"
"""The name of the frozen copy of a continued adapter, loaded beside the trained one."""


# ----------------------------------------------------------------------------- prompts


def prompt_rows(ctx: StageContext) -> tuple[list[str], list[dict[str, Any]]]:
    """(prompt texts, the other columns of each row) of the ``prompts`` dataset."""
    from llm_recipe.runtime.metrics import render_prompt

    fmt = ctx.input("prompts").format or ""
    rows = ctx.rows("prompts")
    if not rows:
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{ctx.input('prompts').ref}' "
                          "is empty", hint="check the dataset's source and limit")
    if fmt == "gsm8k":
        return ([render_prompt(PROMPT_TEMPLATE, row) for row in rows],
                [{k: v for k, v in row.items() if k != "question"} for row in rows])
    if fmt == "prompt_completion":  # the reference completion is the answer, as in grpo
        return ([row["prompt"] for row in rows],
                [{**{k: v for k, v in row.items() if k not in ("prompt", "completion")},
                  "answer": row["completion"]} for row in rows])
    raise RecipeError(f"stage {ctx.stage.name}: ppo cannot take prompts from {fmt} data",
                      expected="a gsm8k or prompt_completion dataset")



def encode_prompts(ctx: StageContext, config: PpoConfig, tokenizer: Any, policy: Any,
                   prompts: list[str]) -> list[list[int]]:
    """Token ids of every prompt, cut from the left to leave room for the response."""
    limit = config.max_seq_len
    context = getattr(policy.config, "max_position_embeddings", None) or getattr(
        policy.config, "n_positions", None)
    if context:
        limit = min(limit, int(context))
    room = limit - config.max_new_tokens
    if room < 1:
        raise RecipeError(
            f"stage {ctx.stage.name}: generation.max_new_tokens ({config.max_new_tokens}) "
            f"leaves no room for a prompt in {limit} tokens (train.max_seq_len"
            + (f", or the model's context of {context})" if context else ")"),
            hint="lower generation.max_new_tokens or raise train.max_seq_len")
    encoded = tokenizer(prompts)["input_ids"]
    cut = sum(len(ids) > room for ids in encoded)
    if cut:
        ctx.log.line(f"[ppo] warning: {cut} of {len(prompts)} prompts are longer than "
                     f"{room} tokens and keep their last {room}")
    return [list(ids[-room:]) for ids in encoded]


# ----------------------------------------------------------------------------- models


def load_policy(ctx: StageContext, config: PpoConfig, resume: Path | None,
                device: str) -> tuple[Any, Any, Any, str]:
    """(policy, reference, tokenizer, what the reference is) for the policy input.

    When resuming, the trained weights come from the checkpoint's ``policy/`` and the
    reference from the input, exactly as on the first start.
    """
    from llm_recipe.runtime import loading
    from llm_recipe.runtime.rl import ppo_rollout

    item = ctx.input("policy")
    saved = resume / "policy" if resume is not None else None
    if config.adapter and item.type == "adapter":
        raise RecipeError(
            f"stage {ctx.stage.name}: '{item.ref}' is already an adapter; a second adapter "
            "cannot be stacked on it", hint="remove the stage's adapter: block to keep "
            "training that adapter, or train a stage that produced full weights")
    if item.type == "adapter":
        from peft import PeftModel
        from transformers import AutoTokenizer

        base, _ = loading.load_named_model(ctx, item.base or "")
        start = ctx.path(item.path or "")
        policy = PeftModel.from_pretrained(_to(base, device), str(saved or start),
                                           is_trainable=True)
        policy.load_adapter(str(start), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        policy.set_adapter("default")
        return (policy, ppo_rollout.adapter_named(policy, REFERENCE_ADAPTER),
                AutoTokenizer.from_pretrained(str(start)),
                f"adapter {item.ref} as it starts (a frozen copy beside the trained one)")
    if config.adapter:
        import torch
        from peft import PeftModel, get_peft_model

        from llm_recipe.runtime.adapters import load_quantized, lora_config

        if config.adapter["type"] == "qlora":
            from peft import prepare_model_for_kbit_training

            base, tokenizer = load_quantized(ctx, item, config.adapter)
            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=compute.activation_checkpointing(ctx.compute))
        else:
            base, tokenizer = ctx.load_model(item)
            base = _to(base, device)
        if saved is not None:
            policy = PeftModel.from_pretrained(base, str(saved), is_trainable=True)
        else:
            torch.manual_seed(config.seed)
            policy = get_peft_model(base, lora_config(config.adapter))
        return policy, ppo_rollout.adapter_disabled(policy), tokenizer, f"{item.ref} (adapter off)"
    model, tokenizer = ctx.load_model(item, trainable=True)
    model = _to(model, device)
    if saved is None:
        return model, ppo_rollout.frozen_copy(model), tokenizer, f"frozen copy of {item.ref}"
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(str(saved), dtype=_dtype(model))
    return _to(policy, device), ppo_rollout.frozen(model), tokenizer, f"frozen {item.ref}"


def load_value(ctx: StageContext, config: PpoConfig, policy: Any, tokenizer: Any,
               resume: Path | None) -> tuple[Any, Any]:
    """(value head, value model or None); from the checkpoint when resuming."""
    import torch

    from llm_recipe.runtime.rl import ppo_rollout

    value_model = None
    hidden = policy.config.hidden_size
    if ctx.has_input("value_model"):
        item = ctx.input("value_model")
        value_model, value_tokenizer = ctx.load_model(item, trainable=True)
        if value_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise RecipeError(
                f"stage {ctx.stage.name}: value_model '{item.ref}' has another tokenizer "
                "than the policy", expected="a value model with the policy's vocabulary",
                hint="use a model of the policy's family, or leave value_model out to put "
                "the value head on the policy")
        if resume is not None:
            from transformers import AutoModelForCausalLM

            value_model = AutoModelForCausalLM.from_pretrained(
                str(resume / "value_model"), dtype=_dtype(value_model))
        hidden = value_model.config.hidden_size
    torch.manual_seed(config.seed)
    head = ppo_rollout.ValueHead(hidden)
    if resume is not None:
        from safetensors.torch import load_file

        head.load_state_dict(load_file(str(resume / "value_head.safetensors")))
    return head, value_model


def policy_value(ctx: StageContext, config: PpoConfig, policy: Any, tokenizer: Any,
                 resume: Path | None, device: str) -> Any:
    """The trained module (:class:`~llm_recipe.runtime.rl.ppo_rollout.PolicyValue`): the
    policy with the value head (and value model) of :func:`load_value` on ``device``,
    dropout off, activation checkpointing as the compute settings say."""
    from llm_recipe.runtime.rl import ppo_rollout

    model = ppo_rollout.PolicyValue(policy, *load_value(ctx, config, policy, tokenizer, resume))
    model.head.to(device)
    if model.value_model is not None:
        model.value_model.to(device)
    for part in (policy, model.value_model):
        if part is not None:
            ppo_rollout.disable_dropout(part)
            if compute.activation_checkpointing(ctx.compute):
                part.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def remove_reference_adapter(policy: Any) -> None:
    """Delete a continued adapter's reference copy, so the output is the trained adapter."""
    if REFERENCE_ADAPTER in (getattr(policy, "peft_config", None) or {}):
        policy.delete_adapter(REFERENCE_ADAPTER)


def _to(model: Any, device: str) -> Any:
    return model if _quantized(model) else model.to(device)


def _quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False)
                or getattr(getattr(model, "base_model", None), "is_loaded_in_4bit", False))


def _dtype(model: Any) -> Any:
    return next(model.parameters()).dtype


# ----------------------------------------------------------------------------- reward


def scorer(ctx: StageContext, config: PpoConfig, device: str) -> tuple[Any, str]:
    """(score function, a description). The function maps (prompts, completions, rows'
    other columns) to (one score per completion, {metric name: mean} to log).

    A reward model scores ``prompt + completion + eos`` as the reward_model stage trained
    it (:func:`llm_recipe.runtime.stages.reward_model.score_texts`), in its own tokenizer.
    """
    if ctx.has_input("reward.model"):
        from llm_recipe.runtime.loading import load_reward_model
        from llm_recipe.runtime.stages.reward_model import score_texts

        item = ctx.input("reward.model")
        model, tokenizer = load_reward_model(ctx, item)
        model = _to(model, device)

        def by_model(prompts: list[str], completions: list[str],
                     columns: list[dict[str, Any]]) -> tuple[list[float], dict[str, float]]:
            scores = score_texts(model, tokenizer, prompts, completions,
                                 batch_size=config.micro_batch)
            _check_scores(ctx, scores, f"reward model '{item.ref}'")
            return scores, {}

        return by_model, f"model {item.ref}"

    from llm_recipe.runtime.rl.rewards import WeightedRewards

    base_dir = ctx.root / Path(ctx.plan.recipe["file"]).parent
    rewards = WeightedRewards(list(config.reward_functions), base_dir)

    def by_functions(prompts: list[str], completions: list[str],
                     columns: list[dict[str, Any]]) -> tuple[list[float], dict[str, float]]:
        keys = columns[0].keys() if columns else ()
        parts = rewards.components(prompts, completions,
                                   **{k: [c[k] for c in columns] for k in keys})
        scores = rewards.total(parts)
        _check_scores(ctx, scores, "reward functions")
        return scores, {f"rewards/{name}/mean": sum(v) / len(v) for name, v in parts.items()}

    return by_functions, " + ".join(f"{w:g} x {n}" for n, w in config.reward_functions)


def _check_scores(ctx: StageContext, scores: list[float], source: str) -> None:
    bad = [s for s in scores if not math.isfinite(s)]
    if bad:
        raise RecipeError(f"stage {ctx.stage.name}: {source} returned {bad[0]} for "
                          f"{len(bad)} of {len(scores)} completions",
                          expected="finite scores")

