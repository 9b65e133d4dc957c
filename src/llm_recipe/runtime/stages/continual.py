"""continual: train gated low-rank patches on a frozen causal LM, phase after phase.

The algorithm lives in :mod:`llm_recipe.runtime.continual` (the patch equation in
``patch.py``, the loss terms in ``losses.py``, phases and resume in ``trainer.py``, a
step, probes and rollback in ``run.py``, the ledger in ``ledger.py``); this module reads
the stage's settings and hands them over.

- **model.** The ``model`` input, frozen (``requires_grad`` off, bit-identical after the
  stage). Each block in ``patch.layers`` gets a patch of rank ``patch.rank`` whose gate
  bias starts at ``patch.gate_init``; at the start of every run the stage checks that
  base + initial patch computes exactly what the base computes and logs
  ``[invertibility] max_abs_diff=...``.
- **phases.** ``phases[k]`` trains ``steps`` optimizer steps on its data;
  ``replay_ratio`` of each batch comes from earlier phases' data, with ``kl_weight`` x KL
  to the teacher (phase k-1's committed patch) on those rows, and ``regularizers``
  (gate, patch, scale; 1e-3 each by default) keep the patch small. ``train.lr``,
  ``batch_size``, ``grad_accum``, ``max_seq_len``, ``optimizer``, ``weight_decay``,
  ``max_grad_norm`` as in every training kind; ``lr_scheduler``/``warmup_ratio`` run
  once per phase, and each phase starts a fresh optimizer.
- **probes.** Every ``probes[i].every`` steps of a phase, the held-out loss on the probe's
  data; a probe more than ``rollback_threshold`` (relative) above its value at the last
  good snapshot rolls the patch back to that snapshot, and ``rollback_response`` scales the
  learning rate (``lr_scale``, 0.5) and the KL weight (``kl_scale``, 2.0) for the rest of
  the phase. A pass writes a ``good`` snapshot at most every ``ledger.good_every`` steps.
- **logs.** ``[train] step=N loss=... new=... old=... kl=... gate=... patch=... scale=...``
  every ``train.log_every`` steps (means since the previous line), ``[probe]`` lines, a
  ``=== Phase k <name>`` header per phase and per run.
- **ledger and checkpoints.** ``ledger/`` (see :mod:`llm_recipe.runtime.continual.ledger`)
  and ``checkpoints/checkpoint-<step>/`` every ``train.save_every`` steps and at every
  ledger entry, for exact resume.
- **output.** ``patch/``: ``patch.safetensors`` (the last phase's commit) and
  ``patch_config.json``; an eval stage loads it on its base (``runtime.loading``).

Naive fine-tuning of the same patch, the baseline the method is compared with, is a
recipe setting: ``replay_ratio: 0``, ``kl_weight: 0``, ``regularizers: {gate: 0, patch: 0,
scale: 0}``, ``patch.gate_init: 10`` (gate on) and a large ``rollback_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.runtime.context import StageContext, StageResult

REGULARIZER_DEFAULTS = {"gate": 1e-3, "patch": 1e-3, "scale": 1e-3}
ROLLBACK_DEFAULTS = {"lr_scale": 0.5, "kl_scale": 2.0}


@dataclass(frozen=True)
class Phase:
    index: int
    name: str
    data: str
    """The dataset's name (the stage input is ``phases.<index>.data``)."""
    steps: int


@dataclass(frozen=True)
class Probe:
    index: int
    name: str
    data: str
    every: int


@dataclass(frozen=True)
class ContinualConfig:
    """A continual stage's settings, schema defaults filled (also for absent blocks)."""

    seed: int
    phases: tuple[Phase, ...]
    probes: tuple[Probe, ...]
    rank: int
    layers: str | tuple[int, ...]
    gate_init: float
    replay_ratio: float
    kl_weight: float
    rollback_threshold: float
    good_every: int
    reg_gate: float
    reg_patch: float
    reg_scale: float
    rollback_lr_scale: float
    rollback_kl_scale: float
    lr: float
    batch_size: int
    grad_accum: int
    max_seq_len: int
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    optimizer: str
    log_every: int
    save_every: int
    keep_checkpoints: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ContinualConfig:
        patch = config.get("patch") or {}
        train = config["train"]
        regs = {**REGULARIZER_DEFAULTS, **(config.get("regularizers") or {})}
        response = {**ROLLBACK_DEFAULTS, **(config.get("rollback_response") or {})}
        layers = patch.get("layers", "all")
        return cls(
            seed=int(config.get("seed", 0)),
            phases=tuple(Phase(i, p["name"], p["data"], int(p["steps"]))
                         for i, p in enumerate(config["phases"])),
            probes=tuple(Probe(i, p["name"], p["data"], int(p.get("every", 1000)))
                         for i, p in enumerate(config.get("probes") or [])),
            rank=int(patch.get("rank", 8)),
            layers="all" if layers == "all" else tuple(int(i) for i in layers),
            gate_init=float(patch.get("gate_init", -4.0)),
            replay_ratio=float(config.get("replay_ratio", 0.25)),
            kl_weight=float(config.get("kl_weight", 0.1)),
            rollback_threshold=float(config.get("rollback_threshold", 0.05)),
            good_every=int((config.get("ledger") or {}).get("good_every", 1000)),
            reg_gate=float(regs["gate"]), reg_patch=float(regs["patch"]),
            reg_scale=float(regs["scale"]),
            rollback_lr_scale=float(response["lr_scale"]),
            rollback_kl_scale=float(response["kl_scale"]),
            lr=float(train["lr"]), batch_size=int(train["batch_size"]),
            grad_accum=int(train["grad_accum"]), max_seq_len=int(train["max_seq_len"]),
            lr_scheduler=train["lr_scheduler"], warmup_ratio=float(train["warmup_ratio"]),
            weight_decay=float(train["weight_decay"]),
            max_grad_norm=float(train["max_grad_norm"]), optimizer=train["optimizer"],
            log_every=int(train["log_every"]), save_every=int(train["save_every"]),
            keep_checkpoints=int(train["keep_checkpoints"]))

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)


def run(ctx: StageContext) -> StageResult:
    """Train the patches phase by phase; write the last commit as the stage's patch."""
    from llm_recipe.runtime.continual.trainer import train

    return train(ctx, ContinualConfig.from_config(ctx.config))
