"""The model side of a PPO step: what the algorithm trains and samples with.

:mod:`llm_recipe.runtime.rl.ppo` is the mathematics; this module holds the models it
runs and the rollouts they make, kept apart so that each reads on its own:

- **the trained weights** (:class:`PolicyValue`): the policy and a value function, a
  scalar head (:class:`ValueHead`) on the last hidden state of the policy (shared
  trunk, like trl's ``AutoModelForCausalLMWithValueHead``) or of a separate model.
  Dropout is switched off in every trained model (:func:`disable_dropout`): with it,
  the first update's ratio would not start at 1.
- **the reference policy** (:data:`Reference`), pi_ref of the KL penalty, in the three
  forms a policy input can take: a frozen copy of full weights (:func:`frozen`,
  :func:`frozen_copy`), a new adapter switched off (:func:`adapter_disabled`), or a
  frozen copy of a continued adapter loaded beside the trained one
  (:func:`adapter_named`).
- **a rollout**: responses sampled from the policy (:func:`sample`), then scored
  (:func:`score_rollout`): the log-probabilities of the policy and the reference and
  the values, one forward pass each per micro-batch, from which the algorithm's
  per-token rewards, advantages and returns are filled in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from llm_recipe.runtime.rl.ppo import (
    Hyperparameters,
    Rollout,
    gae,
    logprobs_of,
    micro_batches,
    penalized_rewards,
    position_ids,
    response_logits,
    whiten,
)

# ----------------------------------------------------------------------- the models


class ValueHead(nn.Module):
    """V(s_t): one linear map from a hidden state to a scalar, kept in float32."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


class PolicyValue(nn.Module):
    """The trained weights: the policy, its value head and an optional value model.

    Without ``value_model`` the head reads the policy's last hidden state (one forward
    pass gives logits and values); with one, the head reads that model's.
    """

    def __init__(self, policy: nn.Module, head: ValueHead,
                 value_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.head = head
        self.value_model = value_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.value_model is None
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, output_hidden_states=shared,
                          use_cache=False)
        if shared:
            hidden = out.hidden_states[-1]
        else:
            hidden = self.value_model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids, output_hidden_states=True,
                                      use_cache=False).hidden_states[-1]
        return out.logits, self.head(hidden)


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


Reference = Callable[[], AbstractContextManager[Callable[..., Any]]]
"""How to run the reference policy: a context manager yielding a model to call."""


def frozen(model: nn.Module) -> Reference:
    """The reference of a fully trained policy: ``model`` (the starting policy, loaded
    again or copied before training) frozen in evaluation mode."""
    model.eval().requires_grad_(False)
    return lambda: nullcontext(model)


def frozen_copy(model: nn.Module) -> Reference:
    """A frozen copy of ``model`` as it is now: the reference before training starts."""
    import copy

    return frozen(copy.deepcopy(model))


def adapter_disabled(peft_model: Any) -> Reference:
    """The reference of a new adapter: the policy with its adapter switched off, which
    is exactly the starting policy (a fresh LoRA adds zero: its B matrix starts at 0)."""

    @contextmanager
    def run() -> Iterator[Any]:
        with peft_model.disable_adapter():
            yield peft_model

    return run


def adapter_named(peft_model: Any, name: str, trained: str = "default") -> Reference:
    """The reference of a continued adapter: a frozen copy of the starting adapter,
    loaded beside the trained one as ``name``, made active for the reference pass.

    (Disabling the adapter would give the bare base model, not the starting policy.)
    peft's ``set_adapter`` also sets which adapter requires gradients, so the trained
    one is restored, trainable, afterwards.
    """

    @contextmanager
    def run() -> Iterator[Any]:
        peft_model.set_adapter(name, inference_mode=True)
        try:
            yield peft_model
        finally:
            peft_model.set_adapter(trained)

    return run


# --------------------------------------------------------------------------- rollout


def response_mask(responses: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1 for the tokens of each response up to and including its first EOS."""
    if eos_id is None:
        return torch.ones_like(responses, dtype=torch.bool)
    is_eos = (responses == eos_id).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0


NEUTRAL_SAMPLING = {"top_k": 0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                    "typical_p": 1.0}
"""generate() settings that keep samples from softmax(logits / temperature)."""


@torch.no_grad()
def sample(policy: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], hp: Hyperparameters,
           *, pad_id: int, device: Any) -> Rollout:
    """Responses of the policy to token-id ``prompts`` (the caller seeds torch first).

    All prompts are left-padded to the longest, responses to ``max_new_tokens``, so the
    batch is one tensor whatever the generation batch size. Sampling is plain
    temperature sampling (``top_p`` as configured) with the KV cache: the top-k,
    repetition penalty and n-gram bans a model's generation_config may carry are
    switched off (:data:`NEUTRAL_SAMPLING`), or the samples would not come from the
    policy whose probabilities the updates use.
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        attention[row, width - len(prompt):] = 1
    was_training = policy.training
    policy.eval()
    chunks = []
    for start in range(0, len(prompts), hp.generation_batch):
        part = slice(start, start + hp.generation_batch)
        out = policy.generate(
            input_ids=ids[part].to(device), attention_mask=attention[part].to(device),
            do_sample=True, temperature=hp.temperature, top_p=hp.top_p, **NEUTRAL_SAMPLING,
            max_new_tokens=hp.max_new_tokens, pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id, use_cache=True)
        response = out[:, width:]
        if response.shape[1] < hp.max_new_tokens:  # every row of the chunk stopped early
            fill = response.new_full((response.shape[0], hp.max_new_tokens - response.shape[1]),
                                     pad_id)
            response = torch.cat([response, fill], dim=1)
        chunks.append(response)
    policy.train(was_training)
    responses = torch.cat(chunks).to(device)
    mask = response_mask(responses, tokenizer.eos_token_id)
    responses = torch.where(mask, responses, torch.full_like(responses, pad_id))
    sequences = torch.cat([ids.to(device), responses], dim=1)
    attention_mask = torch.cat([attention.to(device), mask.long()], dim=1)
    completions = []
    for row, keep in zip(responses.tolist(), mask.tolist(), strict=True):
        tokens = [t for t, k in zip(row, keep, strict=True) if k and t != tokenizer.eos_token_id]
        completions.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return Rollout(sequences, attention_mask, width, mask, completions)


@torch.no_grad()
def score_rollout(model: PolicyValue, reference: Reference, rollout: Rollout,
                  scores: Sequence[float], kl_coef: float, hp: Hyperparameters) -> None:
    """Fill in logprobs, reference logprobs, values, rewards, advantages and returns
    (steps 3 and 4 of :mod:`llm_recipe.runtime.rl.ppo`)."""
    batch = rollout
    positions = position_ids(batch.attention_mask)
    tokens = batch.sequences[:, batch.context:]
    logprobs, ref_logprobs, values = [], [], []
    was_training = model.training
    model.eval()
    for part in micro_batches(len(batch), hp.micro_batch):
        args = (batch.sequences[part], batch.attention_mask[part], positions[part])
        logits, value = model(*args)
        logprobs.append(logprobs_of(response_logits(logits, batch.context, hp.temperature),
                                    tokens[part]))
        values.append(value[:, batch.context - 1:-1])
        with reference() as ref_model:
            ref = ref_model(input_ids=args[0], attention_mask=args[1], position_ids=args[2],
                            use_cache=False).logits
        ref_logprobs.append(logprobs_of(response_logits(ref, batch.context, hp.temperature),
                                        tokens[part]))
    model.train(was_training)
    mask = batch.mask
    batch.logprobs = torch.cat(logprobs)
    batch.ref_logprobs = torch.cat(ref_logprobs)
    batch.values = torch.where(mask, torch.cat(values), torch.zeros_like(batch.logprobs))
    batch.scores = torch.tensor(list(scores), dtype=torch.float32, device=mask.device)
    batch.rewards, batch.kl = penalized_rewards(batch.scores, batch.logprobs,
                                                batch.ref_logprobs, mask, kl_coef)
    rewards = whiten(batch.rewards, mask, shift_mean=False) if hp.whiten_rewards else batch.rewards
    advantages, batch.returns = gae(rewards, batch.values, mask, hp.gamma, hp.lam)
    batch.advantages = whiten(advantages, mask)

