"""Proximal policy optimisation for language models: the algorithm, on torch.

trl 1.x ships no PPO trainer, so the algorithm lives here, small enough to read in one
sitting. This module owns the mathematics of one PPO step and nothing else: the
per-token rewards, the advantages, the losses, the KL coefficient and the update loop.
The models it trains and the rollouts they sample are
:mod:`llm_recipe.runtime.rl.ppo_rollout`'s; the stage
(:mod:`llm_recipe.runtime.stages.ppo`) loads the models, the prompts and the reward
(:mod:`llm_recipe.runtime.rl.ppo_inputs`) and owns the workspace: logs, checkpoints and
resume (:mod:`llm_recipe.runtime.rl.ppo_state`).

One step, for a batch of prompts ``x`` (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences", sections 2 and 2.2; the per-token form is the one of
their code and of trl):

1. **Rollout.** Sample a response ``y ~ pi(.|x)`` from the policy (left-padded batch, KV
   cache, seeded by the caller: :func:`~llm_recipe.runtime.rl.ppo_rollout.sample`).
   Token ``a_t`` of ``y`` is an action, the prompt plus the tokens before it the state
   ``s_t``; the episode ends at the first EOS (included) or after ``max_new_tokens``.
2. **Score.** A sequence reward ``r(x, y)`` from reward functions or a reward model.
3. **Per-token rewards** with the KL penalty to the frozen reference policy:

       R_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  +  [t = T] * r(x, y)

   (:func:`penalized_rewards`). ``KL = sum_t (log pi - log pi_ref)`` is the sample
   estimate of KL(pi || pi_ref) for the whole response.
4. **Advantages** by generalized advantage estimation (Schulman et al. 2016,
   "High-Dimensional Continuous Control Using Generalized Advantage Estimation", eq. 16),
   with ``V(s_{T+1}) = 0``:

       delta_t = R_t + gamma * V(s_{t+1}) - V(s_t)
       A_t     = sum_l (gamma * lam)^l * delta_{t+l}          returns G_t = A_t + V(s_t)

   then whitened over the batch (:func:`gae`, :func:`whiten`). Steps 3 and 4 run in
   :func:`~llm_recipe.runtime.rl.ppo_rollout.score_rollout`, after the forward passes
   that give the log-probabilities and values they need.
5. **Updates** (:func:`update`): ``ppo_epochs`` passes over the batch in
   ``mini_batches`` shuffled mini-batches, one optimizer step each, minimising
   (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 and 9, as a
   loss):

       rho_t  = exp(log pi_theta(a_t|s_t) - log pi_old(a_t|s_t))
       L_clip = -E_t[ min(rho_t * A_t, clip(rho_t, 1 - eps, 1 + eps) * A_t) ]
       V_clip = V_old,t + clip(V_t - V_old,t, -eps_v, eps_v)
       L_vf   = 1/2 E_t[ max((V_t - G_t)^2, (V_clip - G_t)^2) ]
       L      = L_clip + vf_coef * L_vf

   The paper's value term is the plain squared error; the clipped one above is that of
   the authors' reference implementation (OpenAI baselines ``ppo2``), which Ziegler et
   al.'s code and trl use too. Gradients are clipped to ``max_grad_norm``.
6. **KL coefficient** (:class:`KLController`): fixed, or adaptive (Ziegler et al. 2019,
   section 2.2), steering the measured KL toward a target over a horizon of ``n``
   samples per step:

       e    = clip((KL - KL_target) / KL_target, -0.2, 0.2)
       beta = beta * (1 + e * n / horizon)

Token probabilities are those of the distribution that sampled: logits divided by the
sampling temperature, for the policy and the reference alike (as trl does). Nucleus
sampling (``top_p < 1``) samples from a truncated distribution that these logprobs do
not model; the importance ratios are then an approximation (trl makes the same one).

One process runs the loop.
:class:`~llm_recipe.runtime.rl.ppo_rollout.PolicyValue` is one ``nn.Module`` holding
every trained weight, so several processes would wrap it in DistributedDataParallel
(e.g. accelerate's ``prepare``) and all-reduce the whitening statistics; that is not
built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from llm_recipe.runtime.rl.ppo_rollout import PolicyValue

# --------------------------------------------------------------------------- math


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is set; masked entries may be NaN (never multiplied)."""
    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) variance over the masked entries; 0 for fewer than 2."""
    n = mask.sum()
    centred = torch.where(mask.bool(), x - masked_mean(x, mask), torch.zeros_like(x))
    if n < 2:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    return (centred**2).sum() / (n - 1)


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries (0 elsewhere).

    ``shift_mean=False`` only scales (the mean is added back), as trl does for rewards,
    so that whitening does not turn a mostly rewarded batch into a punished one.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros_like(out))


def penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards R_t, per-token KL terms) of a batch (Ziegler et al. 2019).

    ``R_t = -kl_coef * (logprobs_t - ref_logprobs_t)`` on every response token, plus the
    sequence score on the last one. ``mask`` marks response tokens and must be a prefix
    of each row (right padding), as
    :func:`~llm_recipe.runtime.rl.ppo_rollout.response_mask` makes it.
    """
    kl = torch.where(mask.bool(), logprobs - ref_logprobs, torch.zeros_like(logprobs))
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by GAE (Schulman et al. 2016, eq. 16), per row of a batch.

    ``delta_t = R_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, with
    ``V`` and ``A`` zero after a row's last masked token (the episode has ended);
    ``returns = A + V`` are the value targets. ``lam = 1`` gives Monte Carlo returns
    minus the baseline, ``lam = 0`` the one-step TD error.
    """
    keep = mask.bool()
    values = torch.where(keep, values, torch.zeros_like(values))
    rewards = torch.where(keep, rewards, torch.zeros_like(rewards))
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(keep[:, t], delta + gamma * lam * running,
                              torch.zeros_like(running))
        advantages[:, t] = running
    returns = torch.where(keep, advantages + values, torch.zeros_like(values))
    return advantages, returns


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                      advantages: torch.Tensor, clip_range: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, whether the clipped term was taken) of L^CLIP (Schulman et al.
    2017, eq. 7), negated to be minimised: ``-min(rho A, clip(rho, 1-eps, 1+eps) A)``.

    The minimum makes it pessimistic: once the ratio has moved past ``1 +- eps`` in the
    direction the advantage favours, the loss is flat and the token gives no gradient.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       value_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, whether the clipped term was taken) of the clipped value loss:
    ``1/2 max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2)`` (baselines ppo2)."""
    clipped_values = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``softmax(logits)``, in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per position, in float32."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# --------------------------------------------------------------------- KL coefficient


@dataclass
class KLController:
    """The KL coefficient beta: fixed, or adaptive when ``target`` is set.

    Adaptive (Ziegler et al. 2019, section 2.2; ``horizon`` in samples, as in their
    code): ``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)`` after
    each step, ``KL`` being that step's mean KL per sample and ``n`` its samples.
    """

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KLController:
        return cls(float(state["value"]), state.get("target"), int(state["horizon"]))


# ---------------------------------------------------------------- the batch of a step


@dataclass(frozen=True)
class Hyperparameters:
    """The knobs of one PPO step (recipe names; defaults in the recipe schema)."""

    clip_range: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    ppo_epochs: int = 4
    mini_batches: int = 1
    micro_batch: int = 8
    """Rows per forward/backward pass (train.batch_size); mini-batches accumulate them."""
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    generation_batch: int = 8


@dataclass
class Rollout:
    """A batch of sampled responses and everything the updates need, on one device
    (made by :func:`~llm_recipe.runtime.rl.ppo_rollout.sample`, filled in by
    :func:`~llm_recipe.runtime.rl.ppo_rollout.score_rollout`).

    ``sequences`` is ``[B, P + R]``: prompts left-padded to ``P`` tokens, responses of
    up to ``R`` tokens right-padded; the per-token tensors are ``[B, R]``.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    context: int
    mask: torch.Tensor
    completions: list[str]
    logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    ref_logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    values: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    rewards: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    kl: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    advantages: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    returns: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def __len__(self) -> int:
        return self.sequences.shape[0]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, as ``generate`` counts them."""
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def micro_batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def response_logits(logits: torch.Tensor, context: int, temperature: float) -> torch.Tensor:
    """Logits that predicted the response tokens (position t-1 predicts token t)."""
    return logits[:, context - 1:-1] / temperature



# --------------------------------------------------------------------------- updates


def update(model: PolicyValue, optimizer: torch.optim.Optimizer, scheduler: Any,
           batch: Rollout, hp: Hyperparameters, generator: torch.Generator) -> dict[str, float]:
    """``ppo_epochs`` x ``mini_batches`` optimizer steps on one rollout; their mean stats.

    Each mini-batch is processed ``micro_batch`` rows at a time, its token losses summed
    and divided by the mini-batch's token count, so accumulation changes no number.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    positions = position_ids(batch.attention_mask)
    tokens = batch.sequences[:, batch.context:]
    mask = batch.mask
    totals: dict[str, float] = {}
    updates = 0
    model.train()
    for _ in range(hp.ppo_epochs):
        order = torch.randperm(len(batch), generator=generator).to(mask.device)
        for rows in torch.tensor_split(order, min(hp.mini_batches, len(batch))):
            optimizer.zero_grad(set_to_none=True)
            n_tokens = mask[rows].sum().clamp(min=1)
            sums = dict.fromkeys(("policy_loss", "value_loss", "clip_frac", "value_clip_frac",
                                  "approx_kl", "entropy"), 0.0)
            for part in micro_batches(len(rows), hp.micro_batch):
                index = rows[part]
                m = mask[index]
                logits, values = model(batch.sequences[index], batch.attention_mask[index],
                                       positions[index])
                logits = response_logits(logits, batch.context, hp.temperature)
                logprobs = logprobs_of(logits, tokens[index])
                values = values[:, batch.context - 1:-1]
                pg, pg_clipped = clipped_surrogate(logprobs, batch.logprobs[index],
                                                   batch.advantages[index], hp.clip_range)
                vf, vf_clipped = clipped_value_loss(values, batch.values[index],
                                                    batch.returns[index], hp.value_clip)
                pg_loss, vf_loss = masked_sum(pg, m) / n_tokens, masked_sum(vf, m) / n_tokens
                (pg_loss + hp.vf_coef * vf_loss).backward()
                with torch.no_grad():
                    diff = logprobs - batch.logprobs[index]
                    sums["policy_loss"] += pg_loss.item()
                    sums["value_loss"] += vf_loss.item()
                    sums["clip_frac"] += (masked_sum(pg_clipped.float(), m) / n_tokens).item()
                    sums["value_clip_frac"] += (masked_sum(vf_clipped.float(), m)
                                                / n_tokens).item()
                    sums["approx_kl"] += (masked_sum(0.5 * diff**2, m) / n_tokens).item()
                    sums["entropy"] += (masked_sum(entropy_of(logits), m) / n_tokens).item()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            sums["grad_norm"] = float(grad_norm)
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1
    return {key: value / max(updates, 1) for key, value in totals.items()}


def rollout_stats(batch: Rollout, kl_coef: float) -> dict[str, float]:
    """What the rollout itself says: score, KL to the reference, response length."""
    kl_per_sample = batch.kl.sum(dim=1)
    lengths = batch.mask.sum(dim=1).float()
    scores = batch.scores
    return {
        "reward": scores.mean().item(),
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        "kl": kl_per_sample.mean().item(),
        "kl_coef": kl_coef,
        "non_score_reward": (-kl_coef * kl_per_sample).mean().item(),
        "response_len": lengths.mean().item(),
        "value": masked_mean(batch.values, batch.mask).item(),
        "return": masked_mean(batch.returns, batch.mask).item(),
    }


def finite(stats: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in stats.values() if isinstance(v, float))
