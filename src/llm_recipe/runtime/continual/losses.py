"""The continual stage's loss terms and learning-rate schedule (pure functions of tensors).

One optimizer step's batch holds ``n_new`` rows of the current phase's stream and
``n_old`` replayed rows of earlier phases' streams (``n_old ~ replay_ratio x batch``; 0 in
phase 0). With ``CE`` the next-token cross-entropy, token means over the rows named::

    new   = CE(student, new rows)
    old   = CE(student, replayed rows)                               (0 without replay)
    lm    = CE(student, all rows)   = (1 - rho) new + rho old         rho: replayed tokens' share
    kl    = mean over replayed tokens of KL(p_teacher || p_student)   (0 without replay)
    gate  = mean over patched blocks and tokens of g(h)
    patch = mean over patched blocks of mean(delta(h)^2)
    scale = mean over patched blocks of (s - 1)^2                     distance from the start

    loss  = lm + kl_weight * kl + w_gate * gate + w_patch * patch + w_scale * scale

The teacher of phase k is phase k-1's committed patch on the same base (phase 0: the
base). The log's ``scale=`` is the mean coupling scale s itself (the original project's "average
coupling scale"); the loss uses its squared distance from 1. ``gate`` and ``patch`` are
logged as they enter the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Weights:
    kl: float
    gate: float
    patch: float
    scale: float


def token_ce(logits: torch.Tensor, input_ids: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy per row, scored tokens per row), in fp32.

    Position t predicts token t+1; a target counts when both positions are real tokens.
    """
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    scored = (mask[:, 1:] * mask[:, :-1]).to(nll.dtype)
    return (nll * scored).sum(dim=1), scored.sum(dim=1)


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) at every position, summed over the vocabulary, in fp32."""
    student = torch.log_softmax(student_logits.float(), dim=-1)
    teacher = torch.log_softmax(teacher_logits.float(), dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def regularisers(records: list[tuple[torch.Tensor, torch.Tensor]],
                 scales: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """gate, patch (mean delta^2), scale_penalty ((s-1)^2) and scale (mean s), averaged over
    blocks. ``records`` are the ``(gate, delta)`` pairs of one forward pass."""
    zero = scales[0].new_zeros(()) if scales else torch.zeros(())
    if not records:
        return {"gate": zero, "patch": zero, "scale_penalty": zero, "scale": zero}
    gate = torch.stack([g.mean() for g, _ in records]).mean()
    patch = torch.stack([d.pow(2).mean() for _, d in records]).mean()
    stacked = torch.stack([s.reshape(()) for s in scales])
    return {"gate": gate, "patch": patch, "scale_penalty": (stacked - 1).pow(2).mean(),
            "scale": stacked.mean()}


def lr_factor(schedule: str, step: int, total: int, warmup_ratio: float) -> float:
    """The learning-rate multiplier of update ``step`` (0-based) of ``total``, as
    ``transformers.get_scheduler`` computes it: linear warmup over
    ``ceil(warmup_ratio * total)`` updates, then constant, linear decay to 0 or a cosine
    half-wave ('constant' has no warmup). The stage runs one schedule per phase."""
    if schedule == "constant":
        return 1.0
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant_with_warmup":
        return 1.0
    if schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr_scheduler {schedule!r}")
