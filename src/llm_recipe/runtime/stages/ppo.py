"""ppo: RLHF by proximal policy optimisation with a KL penalty to the starting policy.

The algorithm is :mod:`llm_recipe.runtime.rl.ppo` (equations and papers there); this
module gives it its models, prompts and reward, and keeps the workspace contract of
every training stage:

- **models.** The policy is the ``policy`` input: full weights (all trained; the
  reference is a frozen copy of them as loaded), a new LoRA/QLoRA adapter when the
  stage has ``adapter:`` (the reference is the policy with the adapter switched off),
  or an adapter input, whose training continues (the reference is a frozen second
  copy of that starting adapter, never the bare base). The value function is a scalar
  head on the policy's last hidden state, or on ``value_model``'s (trained too).
- **prompts.** gsm8k rows are rendered with the prompt template sft and eval use,
  prompt_completion rows give their prompt; the rows' other columns reach reward
  functions as keyword arguments: ``answer`` (gsm8k), and a prompt_completion row's
  reference completion as ``answer`` (as grpo passes them). Step ``s`` takes rollout rows
  ``(s-1)*n .. s*n-1`` of an endless sequence of epochs, each a shuffle of the rows
  seeded by (seed, epoch), and samples with torch seeded by (seed, s): the prompts and
  samples of a step are a function of the seed and the step alone, so a resumed run
  continues with exactly the batch an uninterrupted one would have drawn.
- **reward.** ``reward.functions`` through the shared registry
  (:class:`~llm_recipe.runtime.rl.rewards.WeightedRewards`, ``module:function`` next to
  the recipe), or ``reward.model``: a sequence classifier (loaded by
  :func:`llm_recipe.runtime.loading.load_reward_model`) scoring ``prompt + completion
  + eos`` in its own tokenizer, as the reward_model stage trained it (logit 0).
- **sizes.** A step samples ``train.batch_size x train.grad_accum`` prompts (the
  plan's global batch), then makes ``ppo_epochs x mini_batches`` optimizer steps over
  them, ``train.batch_size`` rows per forward pass. The learning-rate schedule spans
  every optimizer step of the stage. ``train.max_seq_len`` bounds prompt plus response:
  prompts keep their last ``max_seq_len - max_new_tokens`` tokens.
- **sampling.** ``generation`` as written; PPO needs sampled responses, so a
  temperature of 0 (greedy, the schema's default) samples at 1.0, and says so in the log.
- **logs.** ``[train] step=...`` lines and metrics.jsonl rows every ``log_every`` steps
  and at the last (means over the steps since the previous row): ``reward`` (mean
  score), ``rewards/<function>/mean`` per reward function, ``kl`` (mean per-sample KL
  to the reference), ``kl_coef`` (the step's), ``policy_loss``, ``value_loss``,
  ``clip_frac``, ``approx_kl``, ``entropy``, ``response_len``, ``lr``...; progress
  every step.
- **checkpoints.** Every ``save_every`` steps and at the last,
  ``checkpoints/checkpoint-<step>/`` holds ``policy/`` (save_pretrained: the adapter or
  the full model, safetensors), ``value_head.safetensors`` (and ``value_model/``),
  ``optimizer.pt``, ``scheduler.pt`` and ``rng_state.pth`` (state dicts of tensors,
  read back with ``torch.load(weights_only=True)``: nothing is unpickled) and
  ``ppo_state.json`` (step, KL controller, best so far). Then ``files.json``, the
  ``latest`` pointer and the ``best`` pointer: the checkpoint with the highest mean
  reward over the steps since the previous checkpoint (ties go to the later one).
  ``keep_checkpoints`` step checkpoints are kept besides the best.
- **output.** The policy after the last step (adapter or full weights, as the plan
  says), like every training stage; ``best`` names the checkpoint to prefer.

One process: a multi-process launcher is refused (see the algorithm module's note).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute, training
from llm_recipe.runtime.checkpoints import BEST, LATEST, record_files, record_step, write_pointer
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.data import PROMPT_TEMPLATE
from llm_recipe.runtime.workspace import atomic_write_json

STATE = "ppo_state.json"
REFERENCE_ADAPTER = "reference"
_LAST_ONLY = ("kl_coef",)
"""Metrics a log row reports at its step rather than averaged over the steps it covers."""


@dataclass(frozen=True)
class PpoConfig:
    """A ppo stage's settings, schema defaults filled (also for an absent generation block)."""

    seed: int
    max_steps: int | None
    epochs: float
    rollout_size: int
    micro_batch: int
    max_seq_len: int
    lr: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    optimizer: str
    max_grad_norm: float
    log_every: int
    save_every: int
    keep_checkpoints: int
    adapter: dict[str, Any] | None
    reward_functions: tuple[tuple[str, float], ...]
    kl_coef: float
    kl_target: float | None
    kl_horizon: int
    clip_range: float
    value_clip: float
    vf_coef: float
    gamma: float
    lam: float
    whiten_rewards: bool
    ppo_epochs: int
    mini_batches: int
    max_new_tokens: int
    temperature: float
    top_p: float
    generation_batch: int
    backend: str

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PpoConfig:
        from llm_recipe.compiler.schema import fill_defaults, recipe_schema

        gen = fill_defaults(dict(config.get("generation") or {}),
                            recipe_schema()["$defs"]["generation"])
        train = config["train"]
        functions = (config.get("reward") or {}).get("functions") or []
        return cls(
            seed=int(config.get("seed", 0)), max_steps=train.get("max_steps"),
            epochs=float(train.get("epochs", 1)),
            rollout_size=int(train["batch_size"]) * int(train["grad_accum"]),
            micro_batch=int(train["batch_size"]), max_seq_len=int(train["max_seq_len"]),
            lr=float(train["lr"]), lr_scheduler=train["lr_scheduler"],
            warmup_ratio=float(train["warmup_ratio"]),
            weight_decay=float(train["weight_decay"]), optimizer=train["optimizer"],
            max_grad_norm=float(train["max_grad_norm"]), log_every=int(train["log_every"]),
            save_every=int(train["save_every"]),
            keep_checkpoints=int(train["keep_checkpoints"]), adapter=config.get("adapter"),
            reward_functions=tuple((f["function"], float(f.get("weight", 1.0)))
                                   for f in functions),
            kl_coef=float(config["kl_coef"]), kl_target=config.get("kl_target"),
            kl_horizon=int(config["kl_horizon"]), clip_range=float(config["clip_range"]),
            value_clip=float(config["value_clip"]), vf_coef=float(config["vf_coef"]),
            gamma=float(config["gamma"]), lam=float(config["lam"]),
            whiten_rewards=bool(config["whiten_rewards"]),
            ppo_epochs=int(config["ppo_epochs"]), mini_batches=int(config["mini_batches"]),
            max_new_tokens=int(gen["max_new_tokens"]), temperature=float(gen["temperature"]),
            top_p=float(gen["top_p"]), generation_batch=int(gen["batch_size"]),
            backend=gen["backend"])

    @property
    def sampling_temperature(self) -> float:
        return self.temperature if self.temperature > 0 else 1.0

    def total_steps(self, n_prompts: int) -> int:
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * n_prompts / self.rollout_size))

    def updates_per_step(self) -> int:
        return self.ppo_epochs * min(self.mini_batches, self.rollout_size)

    def hyperparameters(self) -> Any:
        from llm_recipe.runtime.rl.ppo import Hyperparameters

        return Hyperparameters(
            clip_range=self.clip_range, value_clip=self.value_clip, vf_coef=self.vf_coef,
            gamma=self.gamma, lam=self.lam, whiten_rewards=self.whiten_rewards,
            ppo_epochs=self.ppo_epochs, mini_batches=self.mini_batches,
            micro_batch=self.micro_batch, max_grad_norm=self.max_grad_norm,
            temperature=self.sampling_temperature, top_p=self.top_p,
            max_new_tokens=self.max_new_tokens, generation_batch=self.generation_batch)


def run(ctx: StageContext) -> StageResult:
    """Train the policy with PPO against the reward; write the policy (model or adapter)."""
    import torch

    from llm_recipe.runtime import distributed
    from llm_recipe.runtime.rl import ppo

    if distributed.world_size() > 1:
        raise RecipeError(f"stage {ctx.stage.name}: ppo runs in one process, and this "
                          f"launch started {distributed.world_size()}",
                          hint="run it with one process (launcher local, or processes: 1)")
    config = PpoConfig.from_config(ctx.config)
    resume = ctx.resume_from
    if resume is None:
        shutil.rmtree(ctx.checkpoints, ignore_errors=True)
    state = _read_state(resume) if resume is not None else {}
    device = compute.device(ctx.compute)
    hp = config.hyperparameters()

    prompts, columns = prompt_rows(ctx)
    policy, reference, tokenizer, ref_note = load_policy(ctx, config, resume, device)
    model = ppo.PolicyValue(policy, *load_value(ctx, config, policy, tokenizer, resume))
    model.head.to(device)
    if model.value_model is not None:
        model.value_model.to(device)
    for part in (policy, model.value_model):
        if part is not None:
            ppo.disable_dropout(part)
            if compute.activation_checkpointing(ctx.compute):
                part.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
    score, reward_note = scorer(ctx, config, device)
    prompt_ids = encode_prompts(ctx, config, tokenizer, policy, prompts)
    pad = training.pad_id(tokenizer)

    total = config.total_steps(len(prompts))
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    scheduler = make_scheduler(config, optimizer, total * config.updates_per_step())
    controller = ppo.KLController(config.kl_coef, config.kl_target, config.kl_horizon)
    step, best = 0, state.get("best")
    last: dict[str, Any] = state.get("last") or {}
    if resume is not None:
        step = int(state["step"])
        controller = ppo.KLController.from_state(state["kl"])
        if best and not (ctx.checkpoints / f"checkpoint-{best['step']}").is_dir():
            # Resumed from an older save than the one that last moved the best: the
            # best then known has been rotated away; this checkpoint stands in for it.
            best = {"step": step, "reward": state["reward"]}
        optimizer.load_state_dict(_load(resume / "optimizer.pt", device))
        scheduler.load_state_dict(_load(resume / "scheduler.pt", device))
        _set_rng(_load(resume / "rng_state.pth", "cpu"))

    value_note = (f"value_model {ctx.input('value_model').ref}" if model.value_model
                  else "head on the policy")
    kl_note = (f"adaptive toward {config.kl_target:g} (horizon {config.kl_horizon})"
               if config.kl_target is not None else f"fixed {config.kl_coef:g}")
    ctx.log.line(
        f"[ppo] {len(prompts)} prompts, {total} steps of {config.rollout_size} samples "
        f"(up to {config.max_new_tokens} tokens at temperature {hp.temperature:g}), "
        f"{config.ppo_epochs} epochs x {min(config.mini_batches, config.rollout_size)} "
        f"mini-batches; reference: {ref_note}; value: {value_note}; reward: {reward_note}; "
        f"kl: {kl_note}")
    if config.backend == "vllm":
        ctx.log.line("[ppo] generation.backend is vllm; ppo samples with transformers "
                     "generate from the policy being trained")
    if config.temperature <= 0:
        ctx.log.line("[ppo] generation.temperature is 0 (greedy); PPO samples its "
                     "responses, so they are sampled at temperature 1.0")
    ctx.log.start(total, "ppo")
    if step:
        ctx.log.update(step)
    pending: list[dict[str, float]] = []
    window: list[float] = []
    while step < total:
        step += 1
        rows = step_rows(config.seed, step, config.rollout_size, len(prompts))
        torch.manual_seed(_step_seed(config.seed, step))
        batch = ppo.sample(policy, tokenizer, [prompt_ids[i] for i in rows], hp,
                           pad_id=pad, device=device)
        scores, components = score([prompts[i] for i in rows], batch.completions,
                                   [columns[i] for i in rows])
        beta = controller.value
        ppo.score_rollout(model, reference, batch, scores, beta, hp)
        stats = {**ppo.rollout_stats(batch, beta), **components}
        generator = torch.Generator().manual_seed(_step_seed(config.seed, step) + 1)
        stats.update(ppo.update(model, optimizer, scheduler, batch, hp, generator))
        stats["lr"] = float(scheduler.get_last_lr()[0])
        if not ppo.finite(stats):
            bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not math.isfinite(v))
            raise RecipeError(f"stage {ctx.stage.name}: PPO diverged at step {step} ({bad})",
                              hint="lower train.lr (or raise kl_coef) and run again")
        controller.update(stats["kl"], len(batch))
        pending.append(stats)
        window.append(stats["reward"])
        ctx.log.update(step, reward=round(stats["reward"], 4), kl=round(stats["kl"], 4))
        if step % config.log_every == 0 or step == total:
            last = _mean_rows(pending)
            ctx.log.metrics(step, last)
            pending = []
        if step % config.save_every == 0 or step == total:
            reward = sum(window) / len(window)
            if best is None or reward >= best["reward"]:
                best = {"step": step, "reward": reward}
            window = []
            save_checkpoint(ctx, config, model, optimizer, scheduler, step, {
                "step": step, "max_steps": total, "kl": controller.state(), "best": best,
                "reward": reward, "last": last, "seed": config.seed})

    if _has_reference_adapter(policy):
        policy.delete_adapter(REFERENCE_ADAPTER)
    training.save_output(ctx, policy, tokenizer)
    metrics = {"steps": step, "reward": last.get("reward"), "kl": last.get("kl"),
               "kl_coef": controller.value,
               "best_step": best["step"] if best else None,
               "best_reward": best["reward"] if best else None}
    return StageResult(metrics=metrics, key_metric="reward", steps=step)


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


def step_rows(seed: int, step: int, size: int, n: int) -> list[int]:
    """The prompt rows of step ``step`` (from 1): positions ``(step-1)*size ..
    step*size-1`` of an endless sequence of epochs, epoch ``e`` being
    ``range(n)`` shuffled by ``random.Random(seed * 1_000_003 + e)``."""
    orders: dict[int, list[int]] = {}
    out = []
    for position in range((step - 1) * size, step * size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][offset])
    return out


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919) % (2**63)


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
    from llm_recipe.runtime.rl import ppo

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
        return (policy, ppo.adapter_named(policy, REFERENCE_ADAPTER),
                AutoTokenizer.from_pretrained(str(start)),
                f"adapter {item.ref} as it starts (a frozen copy beside the trained one)")
    if config.adapter:
        import torch
        from peft import PeftModel, get_peft_model

        from llm_recipe.runtime.stages.sft import load_quantized, lora_config

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
        return policy, ppo.adapter_disabled(policy), tokenizer, f"{item.ref} (adapter off)"
    model, tokenizer = ctx.load_model(item, trainable=True)
    model = _to(model, device)
    if saved is None:
        return model, ppo.frozen_copy(model), tokenizer, f"frozen copy of {item.ref}"
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(str(saved), dtype=_dtype(model))
    return _to(policy, device), ppo.frozen(model), tokenizer, f"frozen {item.ref}"


def load_value(ctx: StageContext, config: PpoConfig, policy: Any, tokenizer: Any,
               resume: Path | None) -> tuple[Any, Any]:
    """(value head, value model or None); from the checkpoint when resuming."""
    import torch

    from llm_recipe.runtime.rl import ppo

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
    head = ppo.ValueHead(hidden)
    if resume is not None:
        from safetensors.torch import load_file

        head.load_state_dict(load_file(str(resume / "value_head.safetensors")))
    return head, value_model


def _has_reference_adapter(policy: Any) -> bool:
    return REFERENCE_ADAPTER in (getattr(policy, "peft_config", None) or {})


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


# ------------------------------------------------------------------ optimizer, schedule


def make_optimizer(config: PpoConfig, params: list[Any]) -> Any:
    """``train.optimizer`` over the trained parameters (policy or adapter, value head)."""
    import torch

    name, lr, decay = config.optimizer, config.lr, config.weight_decay
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    try:
        import bitsandbytes
    except ImportError as exc:
        raise RecipeError("optimizer adamw_8bit needs bitsandbytes, which is not installed",
                          hint="pip install bitsandbytes, or use adamw_torch") from exc
    return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=decay)


def make_scheduler(config: PpoConfig, optimizer: Any, updates: int) -> Any:
    """``train.lr_scheduler`` over every optimizer step of the stage."""
    from transformers import get_scheduler

    warmup = math.ceil(config.warmup_ratio * updates)
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup,
                         num_training_steps=updates)


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(ctx: StageContext, config: PpoConfig, model: Any, optimizer: Any,
                    scheduler: Any, step: int, state: dict[str, Any]) -> Path:
    """Write ``checkpoint-<step>``, then files.json, the latest and best pointers, and
    remove step checkpoints beyond ``keep_checkpoints`` (never the best)."""
    import torch
    from safetensors.torch import save_file

    folder = ctx.checkpoints / f"checkpoint-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    policy = model.policy
    if training.is_peft(policy):
        policy.save_pretrained(str(folder / "policy"), selected_adapters=["default"])
    else:
        policy.save_pretrained(str(folder / "policy"))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
              str(folder / "value_head.safetensors"))
    if model.value_model is not None:
        model.value_model.save_pretrained(str(folder / "value_model"))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, folder / "rng_state.pth")
    atomic_write_json(folder / STATE, state)
    record_files(folder)
    write_pointer(ctx.checkpoints, LATEST, folder, step=step)
    best = state["best"]
    best_folder = ctx.checkpoints / f"checkpoint-{best['step']}"
    write_pointer(ctx.checkpoints, BEST, best_folder, step=best["step"],
                  metric=best["reward"], metric_name="reward")
    saved = sorted(ctx.checkpoints.glob("checkpoint-*"), key=record_step, reverse=True)
    for old in saved[config.keep_checkpoints:]:
        if old != best_folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE).read_text("utf-8"))


def _load(path: Path, device: Any) -> Any:
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def _set_rng(states: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(rows[-1])
    return {k: rows[-1][k] if k in _LAST_ONLY else sum(r[k] for r in rows) / len(rows)
            for k in keys}
