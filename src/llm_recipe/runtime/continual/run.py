"""One run's state and what a step does to it: the batch, the loss, the probes, rollback.

:mod:`.trainer` is the stage's flow (prepare, fresh start or resume, the phase loop,
commits, the output); this module is the :class:`Run` that flow drives, split from it
because the per-step operations (one optimizer step, the probe rule, a rollback, a ledger
entry, a checkpoint) are a unit of their own, read and changed apart from the order in
which phases run.

One step of phase ``k`` (global step ``t``, phase step ``j``, :meth:`Run.step`): each of
``grad_accum`` micro-batches holds ``batch - n_old`` rows of phase ``k``'s blocks and
``n_old`` replayed rows of the pooled blocks of phases ``0..k-1``, drawn as :mod:`.data`
says; the loss of :mod:`.losses` (:meth:`Run.loss_terms`, the teacher's logits on the
replayed rows only) is averaged over them and one optimizer step taken on the patch at::

    lr = config.lr x lr_mult x schedule(j)          (gradients clipped to max_grad_norm)

**Probes** (:meth:`Run.check_probes`, after the step). The rule, for each evaluated
probe ``p``::

    regression  <=>  loss_p > loss_p(last good) x (1 + rollback_threshold)
                     (or loss_p is not finite)

Any regression (:meth:`Run.rollback`): the patch is restored bit for bit to the last
good snapshot (the phase's start until a good one exists), a ``rollback`` entry holding
the restored patch is written (its info names the restored entry and the regressed
losses), the optimizer's moments are cleared (they describe the rejected trajectory),
and for the rest of the phase ``lr_mult *= rollback_response.lr_scale`` and ``kl_mult
*= rollback_response.kl_scale``. No regression and a good snapshot due: a ``good``
entry, the new rollback target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from llm_recipe.runtime import training
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.continual import data, losses, state
from llm_recipe.runtime.continual.ledger import Ledger
from llm_recipe.runtime.continual.patch import Attachment, PatchSet
from llm_recipe.runtime.epochs import positions
from llm_recipe.runtime.usage import TokenRate

if TYPE_CHECKING:
    from llm_recipe.runtime.stages.continual import ContinualConfig, Phase

TRAIN_KEYS = ("loss", "new", "old", "kl", "gate", "patch", "scale")
"""The ``[train]`` line's values, in the continual GPT-2 project's order."""


@dataclass
class Run:
    """Everything one run of the stage holds: model, data, ledger and progress."""

    ctx: StageContext
    config: ContinualConfig
    model: Any
    tokenizer: Any
    attachment: Attachment
    device: Any
    ledger: Ledger
    phase_blocks: list[list[list[int]]]
    probe_blocks: list[list[list[int]]]
    progress: state.Progress = field(default_factory=state.Progress)
    optimizer: Any = None
    teacher: PatchSet | None = None
    good_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    diff: float = 0.0
    """The invertibility check's max |logits difference| (0 expected)."""
    wrote_entry: bool = False
    """Whether the current step wrote a ledger entry (it then checkpoints)."""
    rate: TokenRate = field(default_factory=TokenRate)
    """Trained tokens per second between log rows."""

    @property
    def student(self) -> PatchSet:
        return self.attachment.patches

    # ------------------------------------------------------------------ the ledger

    def entry(self, kind: str, phase: Phase, metrics: dict[str, float],
              info: dict[str, Any] | None = None) -> dict[str, Any]:
        row = self.ledger.write(self.student.tensors(), kind=kind, phase_idx=phase.index,
                                phase=phase.name, step=self.progress.step, metrics=metrics,
                                info=info)
        self.progress.ledger_count += 1
        self.wrote_entry = True
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        self.ctx.log.line(f"[ledger] {row['name']} ({row['bytes']:,} bytes) {shown}".rstrip())
        return row

    def set_good(self, row: dict[str, Any]) -> None:
        self.progress.good = {"name": row["name"], "step": row["step"],
                              "metrics": row["metrics"]}
        self.good_tensors = self.student.tensors()

    # ------------------------------------------------------------------ probes

    def probe(self, index: int) -> float:
        """Mean next-token loss of the student on probe ``index``'s blocks."""
        total, count = 0.0, 0.0
        size = self.config.batch_size
        blocks = self.probe_blocks[index]
        with torch.no_grad():
            for start in range(0, len(blocks), size):
                ids, mask = data.collate(blocks[start:start + size], self.pad, self.device)
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                nll, scored = losses.token_ce(logits, ids, mask)
                total += float(nll.sum())
                count += float(scored.sum())
        return total / max(count, 1.0)

    def check_probes(self, phase: Phase, last: bool) -> dict[str, float]:
        """Evaluate the probes due after this step and apply the rollback rule; the probe
        losses of the patch the step ends with (empty when none was due)."""
        config, progress = self.config, self.progress
        due = [p for p in config.probes if last or progress.phase_step % p.every == 0]
        if not due:
            return {}
        good_due = last or progress.step - int(progress.good["step"]) >= config.good_every
        if good_due:
            due = list(config.probes)
        values = {p.name: self.probe(p.index) for p in due}
        reference = progress.good["metrics"]
        # "not <=" so that a diverged (NaN) probe counts as a regression too
        regressed = {name: value for name, value in values.items()
                     if not value <= reference[name] * (1 + config.rollback_threshold)}
        verdict = "rollback" if regressed else ("good" if good_due else "pass")
        self.ctx.log.metrics(progress.step, {**values, "verdict": verdict}, prefix="probe",
                             extra=self.extra(phase))
        if regressed:
            self.rollback(phase, values, regressed)
            return dict(reference)
        if good_due:
            self.set_good(self.entry("good", phase, values))
        return values

    def rollback(self, phase: Phase, values: dict[str, float],
                 regressed: dict[str, float]) -> None:
        config, progress = self.config, self.progress
        restored = progress.good
        self.student.load_tensors(self.good_tensors)
        self.optimizer.state.clear()
        progress.lr_mult *= config.rollback_lr_scale
        progress.kl_mult *= config.rollback_kl_scale
        progress.rollbacks += 1
        worse = ", ".join(f"{n} {v:.4f} > {restored['metrics'][n]:.4f} x "
                          f"(1 + {config.rollback_threshold:g})" for n, v in regressed.items())
        self.ctx.log.line(
            f"[rollback] step={progress.step} {worse}: restored {restored['name']}; "
            f"lr x{progress.lr_mult:g} -> {config.lr * progress.lr_mult:.3g}, kl_weight "
            f"x{progress.kl_mult:g} -> {config.kl_weight * progress.kl_mult:.3g}")
        self.entry("rollback", phase, dict(restored["metrics"]), info={
            "restored": restored["name"], "regressed": values,
            "lr_mult": progress.lr_mult, "kl_mult": progress.kl_mult})

    # ------------------------------------------------------------------ training

    @property
    def pad(self) -> int:
        return training.pad_id(self.tokenizer)

    def extra(self, phase: Phase) -> dict[str, Any]:
        """What metrics.jsonl rows say beside the line's values: which phase."""
        return {"phase_idx": phase.index, "continual_phase": phase.name}

    def step(self, phase: Phase, n_old: int) -> dict[str, float]:
        """One optimizer step of ``phase`` (its step ``progress.phase_step``, from 1)."""
        config, progress = self.config, self.progress
        n_new = config.batch_size - n_old
        blocks = self.phase_blocks[phase.index]
        pool = [b for k in range(phase.index) for b in self.phase_blocks[k]]
        lr = config.lr * progress.lr_mult * losses.lr_factor(
            config.lr_scheduler, progress.phase_step - 1, phase.steps, config.warmup_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(TRAIN_KEYS, 0.0)
        for micro in range(config.grad_accum):
            draw = (progress.phase_step - 1) * config.grad_accum + micro
            rows = [blocks[i] for i in positions(
                data.stream_seed(config.seed, phase.index, False), draw * n_new, n_new,
                len(blocks))]
            if n_old:
                rows += [pool[i] for i in positions(
                    data.stream_seed(config.seed, phase.index, True), draw * n_old, n_old,
                    len(pool))]
            ids, mask = data.collate(rows, self.pad, self.device)
            self.rate.add(int(mask.sum()))
            terms = self.loss_terms(ids, mask, n_new)
            (terms["loss"] / config.grad_accum).backward()
            for key in TRAIN_KEYS:
                sums[key] += float(terms[key].detach()) / config.grad_accum
        params = [p for p in self.student.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        self.optimizer.step()
        return {**sums, "lr": lr}

    def loss_terms(self, ids: torch.Tensor, mask: torch.Tensor,
                   n_new: int) -> dict[str, torch.Tensor]:
        """The terms of :mod:`.losses` for one batch (new rows first, replayed after)."""
        config = self.config
        with self.attachment.record() as records:
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        nll, scored = losses.token_ce(logits, ids, mask)
        new = nll[:n_new].sum() / scored[:n_new].sum().clamp(min=1)
        lm = nll.sum() / scored.sum().clamp(min=1)
        zero = lm.new_zeros(())
        old, kl = zero, zero
        if ids.shape[0] > n_new:
            old = nll[n_new:].sum() / scored[n_new:].sum().clamp(min=1)
            with torch.no_grad(), self.attachment.use(self.teacher):
                teacher = self.model(input_ids=ids[n_new:], attention_mask=mask[n_new:],
                                     use_cache=False).logits
            kl = losses.masked_mean(losses.kl_per_token(logits[n_new:], teacher),
                                    mask[n_new:])
        regs = losses.regularisers(records, [b.scale for b in self.student.blocks.values()])
        loss = (lm + config.kl_weight * self.progress.kl_mult * kl
                + config.reg_gate * regs["gate"] + config.reg_patch * regs["patch"]
                + config.reg_scale * regs["scale_penalty"])
        return {"loss": loss, "new": new, "old": old, "kl": kl, "gate": regs["gate"],
                "patch": regs["patch"], "scale": regs["scale"]}

    def log_row(self, phase: Phase, values: dict[str, float], force: bool) -> None:
        """Add a step's values to the pending sums; write a row when one is due."""
        pending = self.progress.pending
        for key, value in values.items():
            pending["sums"][key] = pending["sums"].get(key, 0.0) + value
        pending["count"] += 1
        if not force and self.progress.step % self.config.log_every:
            return
        count = pending["count"]
        row = {key: pending["sums"][key] / count for key in TRAIN_KEYS}
        lr = values["lr"]
        self.ctx.log.metrics(self.progress.step, row, extra={
            "lr": lr, "tok/s": self.rate.take(), **self.extra(phase)})
        self.progress.last = {**row, "lr": lr}
        self.progress.pending = {"sums": {}, "count": 0}

    def new_optimizer(self) -> Any:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return training.make_optimizer(self.config.optimizer, params, self.config.lr,
                                    self.config.weight_decay)

    def checkpoint(self) -> None:
        state.save(self.ctx.checkpoints, self.progress, self.student.tensors(),
                   self.optimizer, self.config.keep_checkpoints)
