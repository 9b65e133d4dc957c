"""ppo: RLHF by proximal policy optimisation with a KL penalty to the starting policy.

The algorithm is :mod:`llm_recipe.runtime.rl.ppo` (equations and papers there) and its
models and rollouts :mod:`llm_recipe.runtime.rl.ppo_rollout`; this module gives it its
models, prompts and reward (loaded by :mod:`llm_recipe.runtime.rl.ppo_inputs`) and keeps
the workspace contract of every training stage (checkpoints and resume:
:mod:`llm_recipe.runtime.rl.ppo_state`):

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
  ``checkpoints/checkpoint-<step>/`` holds the policy (adapter or full model), the
  value head (and value model), the optimizer, schedule and RNG states and
  ``ppo_state.json`` (step, KL controller, best so far); the layout is
  :mod:`~llm_recipe.runtime.rl.ppo_state`'s. The ``best`` pointer names the checkpoint
  with the highest mean reward over the steps since the previous checkpoint (ties go
  to the later one). ``keep_checkpoints`` step checkpoints are kept besides the best.
- **output.** The policy after the last step (adapter or full weights, as the plan
  says), like every training stage; ``best`` names the checkpoint to prefer.

One process: a multi-process launcher is refused (see the algorithm module's note).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute, training
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.usage import TokenRate

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
    from llm_recipe.runtime.rl import ppo, ppo_inputs, ppo_rollout, ppo_state

    if distributed.world_size() > 1:
        raise RecipeError(f"stage {ctx.stage.name}: ppo runs in one process, and this "
                          f"launch started {distributed.world_size()}",
                          hint="run it with one process (launcher local, or processes: 1)")
    config = PpoConfig.from_config(ctx.config)
    resume = ctx.resume_from
    state = ppo_state.start(ctx)
    device = compute.device(ctx.compute)
    hp = config.hyperparameters()

    prompts, columns = ppo_inputs.prompt_rows(ctx)
    policy, reference, tokenizer, ref_note = ppo_inputs.load_policy(ctx, config, resume, device)
    model = ppo_inputs.policy_value(ctx, config, policy, tokenizer, resume, device)
    score, reward_note = ppo_inputs.scorer(ctx, config, device)
    prompt_ids = ppo_inputs.encode_prompts(ctx, config, tokenizer, policy, prompts)
    pad = training.pad_id(tokenizer)

    total = config.total_steps(len(prompts))
    optimizer = ppo_state.make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    scheduler = ppo_state.make_scheduler(config, optimizer, total * config.updates_per_step())
    step, progress = ppo_state.restore(ctx, config, state, optimizer, scheduler, device)
    controller = progress.controller

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
    rate = TokenRate()  # prompt and response tokens trained on, per second
    while step < total:
        step += 1
        rows = ppo_state.step_rows(config.seed, step, config.rollout_size, len(prompts))
        torch.manual_seed(ppo_state.step_seed(config.seed, step))
        batch = ppo_rollout.sample(policy, tokenizer, [prompt_ids[i] for i in rows], hp,
                                   pad_id=pad, device=device)
        scores, components = score([prompts[i] for i in rows], batch.completions,
                                   [columns[i] for i in rows])
        beta = controller.value
        ppo_rollout.score_rollout(model, reference, batch, scores, beta, hp)
        stats = {**ppo.rollout_stats(batch, beta), **components}
        generator = torch.Generator().manual_seed(ppo_state.step_seed(config.seed, step) + 1)
        stats.update(ppo.update(model, optimizer, scheduler, batch, hp, generator))
        stats["lr"] = float(scheduler.get_last_lr()[0])
        if not ppo.finite(stats):
            bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not math.isfinite(v))
            raise RecipeError(f"stage {ctx.stage.name}: PPO diverged at step {step} ({bad})",
                              hint="lower train.lr (or raise kl_coef) and run again")
        controller.update(stats["kl"], len(batch))
        rate.add(int(batch.attention_mask.sum()))
        pending.append(stats)
        progress.rewards.append(stats["reward"])
        ctx.log.update(step, reward=round(stats["reward"], 4), kl=round(stats["kl"], 4))
        if step % config.log_every == 0 or step == total:
            progress.last = _mean_rows(pending)
            ctx.log.metrics(step, {**progress.last, "tok/s": rate.take()})
            pending = []
        if step % config.save_every == 0 or step == total:
            progress.checkpoint(ctx, config, model, optimizer, scheduler, step, total)

    ppo_inputs.remove_reference_adapter(policy)
    training.save_output(ctx, policy, tokenizer)
    best, last = progress.best, progress.last
    metrics = {"steps": step, "reward": last.get("reward"), "kl": last.get("kl"),
               "kl_coef": controller.value,
               "best_step": best["step"] if best else None,
               "best_reward": best["reward"] if best else None}
    return StageResult(metrics=metrics, key_metric="reward", steps=step)


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(rows[-1])
    return {k: rows[-1][k] if k in _LAST_ONLY else sum(r[k] for r in rows) / len(rows)
            for k in keys}
