"""Phases, probes, rollback and resume: the continual stage's training loop.

One run of the stage:

1. Load the base, freeze it (``requires_grad`` off) and keep it in eval mode throughout:
   it is the fixed function the patches are measured against, so dropout stays off in
   training, teacher passes and probes alike. Attach a freshly initialised patch and
   check invertibility: ``max |logits(base + patch) - logits(base)|`` on a batch of
   phase 0's data must be 0 (logged as ``[invertibility] max_abs_diff=...``; above 1e-6
   the stage stops).
2. Fresh start: evaluate the probes, write ``000_<phase>_start`` (the rollback target
   until the first good snapshot) and checkpoint step 0. Resume: read the checkpoint,
   cut the ledger back to what it had seen, load the student, the good snapshot and the
   teacher from the ledger, and continue the phase where it stopped.
3. Each step of phase ``k`` (global step ``t``, phase step ``j``): the batch of
   :mod:`.data` (replayed rows from phases before ``k``), the loss of :mod:`.losses`, one
   optimizer step on the patch at ``lr x lr_mult x schedule(j)`` (:meth:`.run.Run.step`).
   A ``[train]`` line every ``train.log_every`` global steps and at the phase's end
   (means since the last).
4. **Probes** (after the step). A probe is due when ``j`` is a multiple of its ``every``;
   all are due at the phase's last step, and all are evaluated when a good snapshot is
   due (``t - step(last good) >= ledger.good_every``, or the phase's end), so a good
   snapshot records every probe. A probe above the last good snapshot's loss by more
   than ``rollback_threshold`` rolls the patch back to that snapshot (the phase's start
   until a good one exists) and damps ``lr`` and ``kl_weight`` for the rest of the
   phase; none, with a good snapshot due, writes a ``good`` entry. The rule and the
   rollback are :mod:`.run`'s (:meth:`.run.Run.check_probes`).
5. **Phase end.** ``commit`` entry (the patch after the last step's probes, i.e. the last
   good one if they rolled back); the next phase starts from it with a ``start`` entry, a
   fresh optimizer, ``lr_mult = kl_mult = 1`` and the commit as its teacher.
6. A checkpoint (:mod:`.state`) every ``train.save_every`` global steps, at every step
   that wrote a ledger entry and at each phase's end, always after the step's log rows
   and entries: a resumed run drops the rows after its checkpoint (the executor does) and
   the ledger entries after it (:meth:`.ledger.Ledger.truncate`), then continues.
7. The output: the last phase's commit, as ``patch/patch.safetensors`` and
   ``patch/patch_config.json``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.continual import data, state
from llm_recipe.runtime.continual.ledger import Ledger
from llm_recipe.runtime.continual.patch import (
    PatchSet,
    attach,
    freeze_base,
    max_abs_diff,
    patch_config,
    save_patch_dir,
)
from llm_recipe.runtime.continual.run import TRAIN_KEYS as TRAIN_KEYS
from llm_recipe.runtime.continual.run import Run
from llm_recipe.runtime.workspace import atomic_dir

if TYPE_CHECKING:
    from llm_recipe.runtime.stages.continual import ContinualConfig, Phase

INVERTIBILITY_TOLERANCE = 1e-6


# ---------------------------------------------------------------------- the stage


def train(ctx: StageContext, config: ContinualConfig) -> StageResult:
    """Run every phase (resuming where an interrupted run stopped) and write the output."""
    run = prepare(ctx, config)
    phases = config.phases
    ctx.log.start(config.total_steps, f"continual, {len(phases)} phase(s)")
    ctx.log.update(run.progress.step)
    while run.progress.phase_idx < len(phases):
        train_phase(run, phases[run.progress.phase_idx])
    ctx.log.line(f"=== all {len(phases)} phase(s) committed at step {run.progress.step}")
    write_output(run)
    return result(run)


def prepare(ctx: StageContext, config: ContinualConfig) -> Run:
    """Model, data, invertibility check, then a fresh start or the resumed state."""
    from llm_recipe.runtime.distributed import world_size

    if world_size() > 1:
        raise RecipeError(f"stage {ctx.stage.name}: continual runs in one process, and this "
                          f"launch started {world_size()}",
                          hint="run it with one process (launcher local, or processes: 1)")
    device = compute.device(ctx.compute)
    model, tokenizer = ctx.load_model(ctx.input("model"), trainable=False)
    model.to(device)
    model.eval()
    freeze_base(model)
    _check_context(ctx, model, config)
    phase_blocks = [_blocks(ctx, f"phases.{p.index}.data", f"phase {p.index} ({p.data})",
                            tokenizer, config, phase=p) for p in config.phases]
    probe_blocks = [_blocks(ctx, f"probes.{p.index}.data", f"probe {p.name} ({p.data})",
                            tokenizer, config) for p in config.probes]
    shape = patch_config(model, config.rank, config.layers, config.gate_init)
    attachment = attach(model, shape, config.seed)
    run = Run(ctx, config, model, tokenizer, attachment, device, Ledger(ctx.dir / "ledger"),
              phase_blocks, probe_blocks)
    ids, mask = data.collate(phase_blocks[0][:4], run.pad, device)
    diff = max_abs_diff(attachment, ids, mask)
    ctx.log.line(f"[invertibility] max_abs_diff={diff:.3e} ({int(mask.sum())} tokens, base vs "
                 f"base + initial patch on {len(shape.layers)} of {shape.num_blocks} blocks, "
                 f"{sum(p.numel() for p in run.student.parameters()):,} patch parameters)")
    if not diff <= INVERTIBILITY_TOLERANCE:
        raise RecipeError(f"stage {ctx.stage.name}: the initial patch changes the model's "
                          f"output (max |diff| {diff:.3e})",
                          hint="a patch must start as the identity; this is a bug")
    run.diff = diff
    if ctx.resume_from is not None:
        resume(run)
    else:
        start(run)
    return run


def start(run: Run) -> None:
    """A fresh start: empty ledger, phase 0's start entry, checkpoint 0."""
    run.ledger.clear()
    phase = run.config.phases[0]
    metrics = {p.name: run.probe(p.index) for p in run.config.probes}
    if metrics:
        run.ctx.log.metrics(0, {**metrics, "verdict": "start"}, prefix="probe",
                            extra=run.extra(phase))
    run.set_good(run.entry("start", phase, metrics))
    run.optimizer = run.new_optimizer()
    run.checkpoint()


def resume(run: Run) -> None:
    """Continue from ``ctx.resume_from``: ledger cut back, student, good, teacher, optimizer."""
    checkpoint = run.ctx.resume_from
    assert checkpoint is not None
    progress, tensors = state.read(checkpoint)
    run.progress = progress
    run.ledger.truncate(progress.ledger_count)
    run.student.load_tensors(tensors)
    if progress.good:
        run.good_tensors, _ = run.ledger.load(progress.good["name"])
    if progress.teacher:
        run.teacher = _teacher(run, progress.teacher)
    run.optimizer = run.new_optimizer()
    if progress.phase_step > 0:
        state.restore_optimizer(checkpoint, run.optimizer, run.device)
    state.restore_rng(checkpoint)


def _teacher(run: Run, name: str) -> PatchSet:
    tensors, _ = run.ledger.load(name)
    teacher = PatchSet(run.student.config)
    teacher.load_tensors(tensors)
    return teacher.frozen().to(run.device)


def train_phase(run: Run, phase: Phase) -> None:
    """Train ``phase`` from ``progress.phase_step`` to its end, commit it and enter the next."""
    config, progress, ctx = run.config, run.progress, run.ctx
    n_old = data.replay_rows(config.batch_size, config.replay_ratio, phase.index)
    first = progress.step - progress.phase_step + 1
    resumed = (f" (resuming at step {progress.step}, {progress.phase_step} of the phase done)"
               if progress.phase_step else "")
    teacher = progress.teacher or "the base"
    ctx.log.line(
        f"=== Phase {phase.index} {phase.name}{resumed}: steps {first}-{first + phase.steps - 1}"
        f" of {config.total_steps}, {len(run.phase_blocks[phase.index])} blocks of "
        f"{config.max_seq_len} tokens from {phase.data}; batch {config.batch_size} "
        f"({n_old} replayed), kl_weight {config.kl_weight * progress.kl_mult:g} to {teacher}, "
        f"lr {config.lr * progress.lr_mult:g}")
    if run.optimizer is None or progress.phase_step == 0:
        run.optimizer = run.new_optimizer()
    last = False
    while not last:
        run.wrote_entry = False
        progress.step += 1
        progress.phase_step += 1
        last = progress.phase_step == phase.steps
        values = run.step(phase, n_old)
        run.log_row(phase, values, force=last)
        ctx.log.update(progress.step, loss=round(values["loss"], 4))
        if not math.isfinite(values["loss"]):
            ctx.log.line(f"[train] step={progress.step}: the loss is not finite")
        metrics = run.check_probes(phase, last)
        if last:
            commit(run, phase, metrics)
        if last or run.wrote_entry or progress.step % config.save_every == 0:
            run.checkpoint()


def commit(run: Run, phase: Phase, metrics: dict[str, float]) -> None:
    """The phase's commit entry; the next phase's start entry, teacher and reset responses."""
    progress = run.progress
    row = run.entry("commit", phase, metrics)
    following = phase.index + 1
    progress.phase_idx, progress.phase_step = following, 0
    progress.lr_mult = progress.kl_mult = 1.0
    if following < len(run.config.phases):
        progress.teacher = row["name"]
        run.teacher = _teacher(run, row["name"])
        run.set_good(run.entry("start", run.config.phases[following], metrics))


def write_output(run: Run) -> None:
    """The last commit as the stage's patch folder (written whole, atomically)."""
    last = run.config.phases[-1]
    commits = [r for r in run.ledger.rows() if r["type"] == "commit"]
    if not commits or commits[-1]["phase_idx"] != last.index:
        raise RecipeError(f"stage {run.ctx.stage.name}: the ledger has no commit of the last "
                          "phase", hint="run the stage again with --force")
    tensors, _ = run.ledger.load(commits[-1]["name"])
    with atomic_dir(run.ctx.output_path) as tmp:
        save_patch_dir(tmp, tensors, run.student.config, base=run.ctx.input("model").ref,
                       commit=commits[-1]["name"], phases=[p.name for p in run.config.phases],
                       metrics=commits[-1]["metrics"], step=commits[-1]["step"])


def result(run: Run) -> StageResult:
    rows = run.ledger.rows()
    metrics: dict[str, Any] = {
        "steps": run.progress.step, "rollbacks": run.progress.rollbacks,
        "ledger_entries": len(rows), "invertibility_max_abs_diff": run.diff,
    }
    if run.progress.last.get("loss") is not None:
        metrics["loss"] = run.progress.last["loss"]
    commits = [r for r in rows if r["type"] == "commit"]
    for row in commits:
        for name, value in row["metrics"].items():
            metrics[f"{row['phase']}/probe/{name}"] = value
    for name, value in (commits[-1]["metrics"] if commits else {}).items():
        metrics[f"probe/{name}"] = value
    key = f"probe/{run.config.probes[0].name}" if run.config.probes else "loss"
    return StageResult(metrics=metrics, key_metric=key, steps=run.progress.step)


# ---------------------------------------------------------------------- inputs


def _blocks(ctx: StageContext, field_name: str, what: str, tokenizer: Any,
            config: ContinualConfig, phase: Phase | None = None) -> list[list[int]]:
    """A phase's or probe's packed blocks, from the tokenized cache (or, for a streamed
    phase, the blocks it trains on, read from the head of its stream)."""
    from llm_recipe.runtime.data import inputs

    if phase is not None and inputs.is_streaming(ctx, field_name):
        n_old = data.replay_rows(config.batch_size, config.replay_ratio, phase.index)
        count = data.new_blocks(phase.steps, config.grad_accum, config.batch_size, n_old)
        return inputs.first_blocks(ctx, field_name, tokenizer, config.max_seq_len, count)
    tokenized, info = inputs.pretrain_data(ctx, field_name, tokenizer, config.max_seq_len,
                                           packing=True)
    if not info.get("sequences"):
        raise RecipeError(f"stage {ctx.stage.name}: {what} has no text",
                          hint="check the dataset (format: text)")
    return [list(ids) for ids in tokenized["input_ids"]]


def _check_context(ctx: StageContext, model: Any, config: ContinualConfig) -> None:
    limit = (getattr(model.config, "max_position_embeddings", None)
             or getattr(model.config, "n_positions", None))
    if limit and config.max_seq_len > limit:
        raise RecipeError(f"stage {ctx.stage.name}: train.max_seq_len {config.max_seq_len} "
                          f"exceeds the model's context of {limit} tokens",
                          hint=f"set train.max_seq_len to at most {limit}")

