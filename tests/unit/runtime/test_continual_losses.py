"""The continual stage's loss terms, schedule, batch order and settings (no model)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from llm_recipe.runtime.continual import data, losses  # noqa: E402
from llm_recipe.runtime.epochs import positions  # noqa: E402
from llm_recipe.runtime.stages.continual import ContinualConfig  # noqa: E402


def test_token_ce_matches_cross_entropy_and_skips_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    ids = torch.randint(0, 7, (2, 5), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    nll, count = losses.token_ce(logits, ids, mask)
    assert count.tolist() == [4.0, 2.0]
    full = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    part = torch.nn.functional.cross_entropy(logits[1, :2], ids[1, 1:3], reduction="sum")
    torch.testing.assert_close(nll, torch.stack([full, part]))


def test_kl_is_zero_against_itself_and_matches_its_definition() -> None:
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 5, generator=generator), torch.randn(2, 3, 5)
    assert torch.allclose(losses.kl_per_token(student, student), torch.zeros(2, 3), atol=1e-6)
    p, q = teacher.softmax(-1), student.softmax(-1)
    torch.testing.assert_close(losses.kl_per_token(student, teacher),
                               (p * (p.log() - q.log())).sum(-1))
    assert (losses.kl_per_token(student, teacher) > 0).all()


def test_regularisers_average_over_blocks() -> None:
    records = [(torch.full((1, 2, 1), 0.2), torch.full((1, 2, 3), 2.0)),
               (torch.full((1, 2, 1), 0.4), torch.zeros(1, 2, 3))]
    scales = [torch.tensor([1.0]), torch.tensor([1.5])]
    regs = losses.regularisers(records, scales)
    assert regs["gate"].item() == pytest.approx(0.3)
    assert regs["patch"].item() == pytest.approx(2.0)  # (4 + 0) / 2
    assert regs["scale_penalty"].item() == pytest.approx(0.125)  # (0 + 0.25) / 2
    assert regs["scale"].item() == pytest.approx(1.25)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_lr_factor_matches_transformers(schedule: str) -> None:
    from transformers import get_scheduler

    total, ratio = 20, 0.1
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=math.ceil(ratio * total),
                              num_training_steps=total)
    for step in range(total):
        assert losses.lr_factor(schedule, step, total, ratio) == pytest.approx(
            optimizer.param_groups[0]["lr"], abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_positions_are_a_function_of_seed_and_position_only() -> None:
    first = positions(7, 0, 10, 4)
    assert sorted(first[:4]) == [0, 1, 2, 3] and sorted(first[4:8]) == [0, 1, 2, 3]
    assert positions(7, 6, 4, 4) == first[6:10]  # resuming mid-epoch draws the same
    assert positions(8, 0, 10, 4) != first


def test_replay_rows_follow_the_ratio() -> None:
    assert data.replay_rows(16, 0.25, 0) == 0  # phase 0 has no earlier data
    assert data.replay_rows(16, 0.25, 1) == 4
    assert data.replay_rows(8, 0.01, 1) == 1  # a positive ratio replays at least one row
    assert data.replay_rows(8, 0.99, 2) == 7  # the current phase always trains
    assert data.replay_rows(8, 0.0, 1) == 0


BASE = {"kind": "continual", "model": "m", "seed": 3,
        "phases": [{"name": "a", "data": "x", "steps": 5}, {"name": "b", "data": "y", "steps": 7}],
        "train": {"lr": 1e-3, "batch_size": 4, "grad_accum": 1, "max_seq_len": 32,
                  "lr_scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
                  "max_grad_norm": 1.0, "optimizer": "adamw_torch", "log_every": 1,
                  "save_every": 2, "keep_checkpoints": 2}}


def test_config_fills_what_the_plan_leaves_out() -> None:
    config = ContinualConfig.from_config(BASE)
    assert config.total_steps == 12 and config.probes == ()
    assert (config.reg_gate, config.reg_patch, config.reg_scale) == (1e-3, 1e-3, 1e-3)
    assert (config.rollback_lr_scale, config.rollback_kl_scale) == (0.5, 2.0)
    assert config.layers == "all" and config.rank == 8 and config.gate_init == -4.0
    naive = ContinualConfig.from_config({
        **BASE, "replay_ratio": 0, "kl_weight": 0, "patch": {"gate_init": 10.0, "layers": [1]},
        "regularizers": {"gate": 0, "patch": 0, "scale": 0},
        "rollback_response": {"lr_scale": 1.0, "kl_scale": 1.0}})
    assert (naive.replay_ratio, naive.kl_weight, naive.reg_gate, naive.reg_scale) == (0, 0, 0, 0)
    assert naive.layers == (1,) and naive.gate_init == 10.0 and naive.rollback_lr_scale == 1.0
