"""PPO's mathematics on tiny tensors, against hand computations (no model).

GAE (Schulman et al. 2016), the KL-penalised per-token rewards and the adaptive KL
controller (Ziegler et al. 2019), the clipped surrogate and clipped value loss
(Schulman et al. 2017), masked whitening, response masks and the prompt order.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from llm_recipe.runtime.rl import ppo, ppo_rollout  # noqa: E402
from llm_recipe.runtime.rl.ppo_state import step_rows  # noqa: E402


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def test_gae_matches_a_hand_computation() -> None:
    rewards, values = t([0.0, 0.0, 1.0]), t([0.5, 0.2, 0.1])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # delta_2 = 1 - 0.1 = 0.9; delta_1 = 0 + 0.1 - 0.2 = -0.1; delta_0 = 0 + 0.2 - 0.5 = -0.3
    a2 = 0.9
    a1 = -0.1 + 0.95 * a2
    a0 = -0.3 + 0.95 * a1
    assert advantages[0].tolist() == pytest.approx([a0, a1, a2])
    assert returns[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.2, a2 + 0.1])


def test_gae_discounts_and_ends_each_row_at_its_mask() -> None:
    rewards = t([1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 9.0, 9.0])
    values = t([0.2, 0.4, 0.6, 9.0], [1.0, 0.5, 9.0, 9.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.5
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    # row 0: three steps; V after the last step is 0, whatever is stored past the mask
    d = [1.0 + gamma * 0.4 - 0.2, 0.0 + gamma * 0.6 - 0.4, 2.0 - 0.6]
    a = [0.0, 0.0, d[2]]
    a[1] = d[1] + gamma * lam * a[2]
    a[0] = d[0] + gamma * lam * a[1]
    assert advantages[0].tolist() == pytest.approx([*a, 0.0])
    # row 1: two steps, rewards and values past the mask ignored
    e1 = 3.0 - 0.5
    e0 = 0.0 + gamma * 0.5 - 1.0 + gamma * lam * e1
    assert advantages[1].tolist() == pytest.approx([e0, e1, 0.0, 0.0])
    assert returns[1].tolist() == pytest.approx([e0 + 1.0, e1 + 0.5, 0.0, 0.0])


def test_gae_lambda_one_is_monte_carlo_and_lambda_zero_is_td() -> None:
    rewards, values = t([0.5, -1.0, 2.0]), t([0.3, 0.1, -0.2])
    mask = torch.ones(1, 3, dtype=torch.bool)
    gamma = 0.8
    mc, returns = ppo.gae(rewards, values, mask, gamma, lam=1.0)
    discounted = [0.5 + gamma * -1.0 + gamma**2 * 2.0, -1.0 + gamma * 2.0, 2.0]
    assert returns[0].tolist() == pytest.approx(discounted)
    assert mc[0].tolist() == pytest.approx([g - v for g, v in zip(discounted, [0.3, 0.1, -0.2],
                                                                   strict=True)])
    td, _ = ppo.gae(rewards, values, mask, gamma, lam=0.0)
    assert td[0].tolist() == pytest.approx([0.5 + gamma * 0.1 - 0.3, -1.0 + gamma * -0.2 - 0.1,
                                            2.0 + 0.2])


def test_penalized_rewards_put_the_score_on_each_rows_last_token() -> None:
    logprobs = t([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0])
    ref = t([-1.5, -1.0, -3.0], [-2.0, -0.5, -7.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    rewards, kl = ppo.penalized_rewards(torch.tensor([1.0, 2.0]), logprobs, ref, mask, 0.1)
    close(kl, [[0.5, -1.0, 0.0], [1.0, -0.5, 0.0]])
    close(rewards, [[-0.05, 0.1, 1.0], [-0.1, 0.05 + 2.0, 0.0]])


def test_whiten_uses_masked_entries_only() -> None:
    x = t([1.0, 2.0, 3.0, float("nan")], [5.0, float("nan"), float("nan"), float("nan")])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    out = ppo.whiten(x, mask)
    kept = out[mask]
    assert torch.isfinite(out).all()
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.var().item() == pytest.approx(1.0, rel=1e-5)  # unbiased, like masked_var
    assert out[~mask].tolist() == [0.0] * 4
    values = [1.0, 2.0, 3.0, 5.0]
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert out[0, 0].item() == pytest.approx((1.0 - mean) / sd, rel=1e-5)


def test_whiten_without_shifting_keeps_the_mean() -> None:
    x, mask = t([1.0, 2.0, 6.0]), torch.ones(1, 3, dtype=torch.bool)
    out = ppo.whiten(x, mask, shift_mean=False)
    assert out.mean().item() == pytest.approx(3.0, rel=1e-5)
    assert out.var().item() == pytest.approx(1.0, rel=1e-5)


def _surrogate_grad(ratio: float, advantage: float, eps: float = 0.2) -> tuple[float, float]:
    logprob = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, _ = ppo.clipped_surrogate(logprob, torch.zeros(1, 1), torch.tensor([[advantage]]), eps)
    loss.sum().backward()
    assert logprob.grad is not None
    return loss.item(), logprob.grad.item()


def test_clipped_surrogate_stops_at_the_clip_in_the_favoured_direction() -> None:
    # inside the trust region: -rho * A, gradient -rho * A
    assert _surrogate_grad(1.1, 2.0) == pytest.approx((-2.2, -2.2))
    # past 1 + eps with A > 0: flat at -(1 + eps) A, no gradient
    assert _surrogate_grad(1.5, 2.0) == pytest.approx((-2.4, 0.0))
    # below 1 - eps with A < 0: flat at -(1 - eps) A, no gradient
    assert _surrogate_grad(0.5, -2.0) == pytest.approx((1.6, 0.0))
    # the pessimistic side is never clipped: past 1 + eps with A < 0 keeps its gradient
    assert _surrogate_grad(1.5, -2.0) == pytest.approx((3.0, 3.0))
    assert _surrogate_grad(0.5, 2.0) == pytest.approx((-1.0, -1.0))


def test_clipped_surrogate_reports_which_tokens_were_clipped() -> None:
    ratios = torch.tensor([[1.0, 1.5, 0.5, 1.5]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    _, clipped = ppo.clipped_surrogate(ratios.log(), torch.zeros(1, 4), advantages, 0.2)
    assert clipped.tolist() == [[False, True, True, False]]


def test_clipped_value_loss_takes_the_larger_error() -> None:
    old, returns = t([0.0, 0.0, 0.0]), t([1.0, 1.0, -1.0])
    values = t([0.1, 0.5, 0.5])
    loss, clipped = ppo.clipped_value_loss(values, old, returns, value_clip=0.2)
    # 0.1 moved less than the clip: plain error. 0.5 towards 1.0: clipped to 0.2, whose
    # error (0.8^2) is larger than 0.5's. 0.5 away from -1: unclipped error is larger.
    close(loss, [[0.5 * 0.81, 0.5 * 0.64, 0.5 * 2.25]])
    assert clipped.tolist() == [[False, True, False]]


def test_fixed_kl_coefficient_never_moves() -> None:
    controller = ppo.KLController(0.05)
    controller.update(100.0, 64)
    assert controller.value == 0.05


def test_adaptive_kl_controller_follows_ziegler_et_al() -> None:
    controller = ppo.KLController(0.1, target=6.0, horizon=10000)
    controller.update(7.2, 256)  # 20% over the target: e = 0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    before = controller.value
    controller.update(60.0, 256)  # far over: e is clipped at 0.2
    assert controller.value == pytest.approx(before * (1 + 0.2 * 256 / 10000))
    before = controller.value
    controller.update(5.7, 100)  # 5% under: beta falls proportionally
    assert controller.value == pytest.approx(before * (1 - 0.05 * 100 / 10000))
    before = controller.value
    controller.update(0.0, 100)  # far under: clipped at -0.2
    assert controller.value == pytest.approx(before * (1 - 0.2 * 100 / 10000))
    controller.update(6.0, 100)
    assert ppo.KLController.from_state(controller.state()) == controller


def test_adaptive_kl_controller_converges_on_a_kl_that_follows_beta() -> None:
    """KL that falls as beta rises (here KL = 1/beta) settles at the target."""
    controller = ppo.KLController(0.05, target=4.0, horizon=100)
    for _ in range(2000):
        controller.update(1.0 / controller.value, 10)
    assert 1.0 / controller.value == pytest.approx(4.0, rel=0.01)


def test_response_mask_keeps_the_first_eos_and_nothing_after() -> None:
    eos = 9
    responses = torch.tensor([[4, 5, 9, 3, 9], [4, 4, 4, 4, 4], [9, 1, 1, 1, 1]])
    assert ppo_rollout.response_mask(responses, eos).long().tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ppo_rollout.response_mask(responses, None).all()


def test_positions_count_real_tokens_of_left_padded_rows() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert ppo.position_ids(mask).tolist() == [[0, 0, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]


def test_logprobs_and_entropy() -> None:
    logits = torch.zeros(1, 2, 5)
    close(ppo.entropy_of(logits), [[math.log(5)] * 2])
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert ppo.logprobs_of(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_masked_mean_ignores_nan_outside_the_mask() -> None:
    x = t([1.0, float("nan"), 3.0])
    mask = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    assert ppo.masked_mean(x, mask).item() == 2.0
    assert ppo.masked_var(t([1.0]), torch.ones(1, 1, dtype=torch.bool)).item() == 0.0


def test_prompt_order_is_a_function_of_seed_and_step() -> None:
    n, size = 10, 4
    steps = [step_rows(7, s, size, n) for s in range(1, 6)]
    assert steps == [step_rows(7, s, size, n) for s in range(1, 6)]  # no hidden state
    flat = [i for rows in steps for i in rows]
    assert sorted(flat[:10]) == list(range(10))  # each epoch visits every row once
    assert sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # and reshuffles
    assert step_rows(8, 1, size, n) != steps[0]
