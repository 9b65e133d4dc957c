"""grpo: group relative policy optimisation with trl's GRPOTrainer.

Each step samples ``num_generations`` completions per prompt, scores every completion
with the recipe's reward functions and pushes the policy towards the completions that
beat their group's mean, with a KL penalty (``beta``) towards the frozen starting policy.

- **Prompts.** gsm8k rows are shown to the policy with the template sft trains with
  (:data:`~llm_recipe.runtime.data.PROMPT_TEMPLATE`), so an SFT model answers in its
  trained format; prompt_completion rows go as they are. A row's other fields stay
  dataset columns, which trl passes to every reward function as keyword arguments:
  ``answer`` (gsm8k), and a prompt_completion row's reference ``completion`` as
  ``answer`` (trl keeps the name ``completion`` for the sampled text). Prompts that
  leave no room for ``generation.max_new_tokens`` within ``train.max_seq_len`` are
  dropped, with a warning.
- **Rewards.** Each ``{function, weight}`` is resolved by the shared registry
  (:func:`llm_recipe.runtime.rl.rewards.resolve`: built-ins, or ``module:function``
  imported from the recipe's folder) before any model is loaded; a module that does
  not import is a RecipeError naming the function's place in the stage. The functions
  go to ``reward_funcs`` under the recipe's names and the weights to ``reward_weights``,
  so trl sums them by weight and logs ``rewards/<name>/mean`` for each.
- **Batches.** ``train.batch_size`` is the number of completions per device per
  micro-step. trl's defaults are kept: a generation round samples batch_size x
  grad_accum x processes completions (``generation_batch_size``) once per optimizer
  step (``steps_per_generation`` = grad_accum), which is the number the compiler checks
  is a multiple of ``num_generations``. ``generation.batch_size`` does not apply here:
  trl generates the whole round at once.
- **Sampling.** ``generation.max_new_tokens``, ``temperature`` and ``top_p`` become
  trl's ``max_completion_length``, ``temperature`` and ``top_p``. vLLM (colocated) is
  used when ``generation.backend`` says ``vllm``, or ``auto`` with vLLM installed and a
  GPU present, the plan's rule.
- **Policy.** Full weights are trained; ``adapter:`` trains a new LoRA/QLoRA adapter
  on a full model (the reference is the model with the adapter disabled); an adapter
  policy is continued (trl keeps a frozen copy of it as the reference). ``beta: 0``
  needs no reference at all.

Metrics (train.log and metrics.jsonl, trl's names): loss, reward, reward_std,
rewards/<name>/mean per function, kl (when beta > 0), completions/mean_length,
completions/clipped_ratio and entropy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import adapters, compute, training
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.data import PROMPT_TEMPLATE

LOGGED = ("reward", "reward_std", "kl", "completions/mean_length",
          "completions/clipped_ratio", "entropy")
"""trl's log keys kept in train.log and metrics.jsonl, besides each rewards/<name>/mean."""
REFERENCE_DIR = ".grpo-reference"
"""Where the starting weights are written when trl must reload them and they are not on
disk (an ``init`` model, a hub model), removed once the trainer is built."""


@dataclass(frozen=True)
class GrpoConfig:
    rewards: tuple[tuple[str, float], ...]
    """(function name, weight) pairs, in recipe order."""
    num_generations: int
    beta: float
    max_new_tokens: int
    temperature: float
    top_p: float
    backend: str
    max_seq_len: int
    adapter: dict[str, Any] | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> GrpoConfig:
        generation = config.get("generation") or {}
        return cls(
            rewards=tuple((spec["function"], float(spec.get("weight", 1.0)))
                          for spec in config["rewards"]),
            num_generations=int(config["num_generations"]),
            beta=float(config["beta"]),
            max_new_tokens=int(generation.get("max_new_tokens", 256)),
            temperature=float(generation.get("temperature", 0.0)),
            top_p=float(generation.get("top_p", 1.0)),
            backend=generation.get("backend", "auto"),
            max_seq_len=int(config["train"]["max_seq_len"]),
            adapter=config.get("adapter"))


def run(ctx: StageContext) -> StageResult:
    """Train the policy on its prompts and rewards; write the model or adapter."""
    trainer, tokenizer = build_trainer(ctx)
    result = training.train(ctx, trainer)
    _drop_reference_adapter(trainer.model)
    training.save_output(ctx, trainer.model, tokenizer)
    return with_rewards(result, trainer.state.log_history)


def build_trainer(ctx: StageContext) -> tuple[Any, Any]:
    """(GRPOTrainer, tokenizer), ready to train; tests inspect its args and dataset."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GrpoConfig.from_config(ctx.config)
    _check_sampling(ctx, config)
    names, functions = reward_functions(ctx, config)
    rows = prompt_rows(ctx)
    use_vllm = uses_vllm(ctx, config)
    args = compute.training_args(
        GRPOConfig, ctx.config, ctx.compute, ctx.checkpoints,
        num_generations=config.num_generations, beta=config.beta,
        max_completion_length=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, reward_weights=[weight for _, weight in config.rewards],
        # trl counts prompt and completion tokens itself; the Trainer's own count looks
        # for input_ids in a batch of prompt rows and warns at every step.
        include_num_input_tokens_seen="no",
        **(_vllm_args(config) if use_vllm else {}))
    model, tokenizer, peft_config = load_policy(ctx, config, args)
    rows = fitting_prompts(ctx, rows, tokenizer, config)
    metrics = LOGGED + tuple(f"rewards/{name}/mean" for name in names)
    # trl's reference and vLLM's engine load the weights by name; an adapter policy has
    # its reference inside (trl copies the adapter) and vLLM gets its merged weights
    needs_weights = not training.is_peft(model) and (
        (config.beta != 0.0 and peft_config is None) or use_vllm)
    with starting_weights_on_disk(ctx, model, needed=needs_weights):
        trainer = GRPOTrainer(
            model=model, reward_funcs=functions, args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows), peft_config=peft_config,
            callbacks=training.callbacks(ctx, metrics=metrics))
    return trainer, tokenizer


def _check_sampling(ctx: StageContext, config: GrpoConfig) -> None:
    at = ("stages", ctx.stage.name, "generation")
    if config.temperature <= 0:
        raise RecipeError(
            "GRPO learns from the differences between the completions it samples for a "
            "prompt, and temperature 0 (greedy) makes them all the same",
            path=(*at, "temperature"), expected="generation.temperature > 0",
            hint="e.g. generation: {temperature: 0.9}")
    if config.max_new_tokens >= config.max_seq_len:
        raise RecipeError(
            f"generation.max_new_tokens ({config.max_new_tokens}) leaves no room for the "
            f"prompt within train.max_seq_len ({config.max_seq_len})",
            path=(*at, "max_new_tokens"), expected="max_new_tokens < train.max_seq_len",
            hint="raise train.max_seq_len or lower generation.max_new_tokens")


def recipe_dir(ctx: StageContext) -> Path:
    """The recipe's folder: where ``module:function`` reward modules are looked up."""
    return ctx.root / Path(ctx.plan.recipe["file"]).parent


def reward_functions(ctx: StageContext, config: GrpoConfig) -> tuple[list[str], list[Any]]:
    """(names, callables) of the stage's reward functions, in recipe order.

    Each callable carries the recipe's name (trl logs ``rewards/<its __name__>/mean``);
    a name listed twice gets ``[index]`` so its metrics stay apart.
    """
    from llm_recipe.runtime.rl import rewards

    names: list[str] = []
    functions: list[Any] = []
    for index, (name, _) in enumerate(config.rewards):
        try:
            function = rewards.resolve(name, recipe_dir(ctx))
        except RecipeError as exc:
            raise replace(exc, path=("stages", ctx.stage.name, "rewards", index, "function")
                          ) from None
        shown = name if name not in names else f"{name}[{index}]"
        names.append(shown)
        functions.append(named_reward(shown, function))
    return names, functions


def named_reward(name: str, function: Any) -> Any:
    """``function`` under ``name``, called the way trl calls reward functions."""
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            type(function).__call__):  # an async function, or an object with async __call__
        async def reward(**kwargs: Any) -> list[float]:
            return await function(**kwargs)
    else:
        def reward(**kwargs: Any) -> list[float]:  # type: ignore[misc]
            return function(**kwargs)
    reward.__name__ = reward.__qualname__ = name
    return reward


def prompt_rows(ctx: StageContext) -> list[dict[str, Any]]:
    """The prompts dataset as trl rows: ``prompt`` plus the columns rewards read."""
    item = ctx.input("prompts")
    fmt = item.format or "gsm8k"
    rows = [to_trl(row, fmt) for row in ctx.rows("prompts")]
    if not rows:
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{item.ref}' is empty",
                          hint="check the dataset's source and limit")
    return rows


def to_trl(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    if fmt == "gsm8k":
        others = {k: v for k, v in row.items() if k not in ("question", "prompt")}
        return {"prompt": PROMPT_TEMPLATE.format(question=row["question"]), **others}
    if fmt == "prompt_completion":
        others = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        return {"prompt": row["prompt"], "answer": row["completion"], **others}
    raise RecipeError(f"grpo cannot take prompts from {fmt} data",
                      hint="use a gsm8k or prompt_completion dataset")


def fitting_prompts(ctx: StageContext, rows: list[dict[str, Any]], tokenizer: Any,
                    config: GrpoConfig) -> list[dict[str, Any]]:
    """The rows whose prompt leaves room for max_new_tokens within max_seq_len."""
    room = config.max_seq_len - config.max_new_tokens
    lengths = [len(ids) for ids in tokenizer([row["prompt"] for row in rows])["input_ids"]]
    kept = [row for row, n in zip(rows, lengths, strict=True) if n <= room]
    if not kept:
        raise RecipeError(
            f"stage {ctx.stage.name}: every prompt is longer than the {room} tokens that "
            f"train.max_seq_len ({config.max_seq_len}) leaves beside "
            f"generation.max_new_tokens ({config.max_new_tokens}); the shortest has "
            f"{min(lengths)}", expected="train.max_seq_len >= prompt + max_new_tokens",
            hint=f"raise stages.{ctx.stage.name}.train.max_seq_len")
    if len(kept) < len(rows):
        ctx.log.line(f"[data] warning: {len(rows) - len(kept)} of {len(rows)} prompts dropped: "
                     f"longer than {room} tokens (max_seq_len {config.max_seq_len} - "
                     f"max_new_tokens {config.max_new_tokens})")
    return kept


def uses_vllm(ctx: StageContext, config: GrpoConfig) -> bool:
    """vLLM when the recipe says so, or for ``auto`` when it is installed and a GPU is
    here (the plan's rule, decided again where the stage runs)."""
    installed = importlib.util.find_spec("vllm") is not None
    if config.backend == "vllm":
        if not installed:
            raise RecipeError(
                f"stage {ctx.stage.name}: generation.backend is vllm, and vLLM is not installed",
                path=("stages", ctx.stage.name, "generation", "backend"),
                hint="pip install vllm (needs a CUDA GPU), or backend: auto")
        return True
    if config.backend != "auto" or not installed or not compute.uses_gpu(ctx.compute):
        return False
    import torch

    return torch.cuda.is_available()


def _vllm_args(config: GrpoConfig) -> dict[str, Any]:
    # Colocated: vLLM shares the training GPUs, so one `recipe run` needs no server.
    return {"use_vllm": True, "vllm_mode": "colocate",
            "vllm_max_model_length": config.max_seq_len}


def load_policy(ctx: StageContext, config: GrpoConfig, args: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config): the policy, trainable, and a new adapter if any."""
    item = ctx.input("policy")
    adapters.refuse_stacking(ctx, item, config.adapter)
    return adapters.load_for_training(ctx, item, config.adapter,
                                      gradient_checkpointing=bool(args.gradient_checkpointing))


@contextlib.contextmanager
def starting_weights_on_disk(ctx: StageContext, model: Any, *, needed: bool) -> Iterator[None]:
    """Make ``model.config._name_or_path`` a folder holding the model's weights while the
    trainer is built.

    trl builds the reference model (and vLLM its engine) with ``from_pretrained`` of
    that name. A stage output or a local path already is such a folder; an ``init``
    model exists only in memory and a hub id would be fetched again without the
    entry's revision, so those weights are written to the stage folder first and the
    copy is removed once trl has loaded it.
    """
    config = model.config
    original = config._name_or_path
    if not needed or (Path(original) / "config.json").is_file():
        yield
        return
    from llm_recipe.runtime import distributed

    folder = ctx.dir / REFERENCE_DIR
    if distributed.is_main():
        shutil.rmtree(folder, ignore_errors=True)
        model.save_pretrained(str(folder))
    distributed.barrier()
    config._name_or_path = str(folder)
    try:
        yield
    finally:
        config._name_or_path = original
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(folder, ignore_errors=True)


def _drop_reference_adapter(model: Any) -> None:
    """trl's frozen copy of a continued adapter ("ref") is not part of the output."""
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and "ref" in peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")


def with_rewards(result: StageResult, history: list[dict[str, Any]]) -> StageResult:
    """The stage's result with the last logged mean reward (and KL) as its key metric."""
    rows = [row for row in history if row.get("reward") is not None]
    if rows:
        result.metrics["reward"] = float(rows[-1]["reward"])
        if rows[-1].get("kl") is not None:
            result.metrics["kl"] = float(rows[-1]["kl"])
        result.key_metric = "reward"
    return result
