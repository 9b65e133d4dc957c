"""Execute one stage of a Plan under its lock: resume or start clean, run, record.

Take the stage lock, decide between resume (an interrupted run of the same fingerprint
left a checkpoint that is still intact) and a clean start, write ``stage.json``, call
the kind's ``run()``, then write ``manifest.json`` last. Under a multi-process launcher
every rank runs this, rank 0 alone writing to the workspace. What those files hold is
:mod:`llm_recipe.runtime.records`.

It exists apart from :mod:`llm_recipe.runtime.executor`, which decides *which* stages
run (scope, fresh ones skipped, damaged inputs re-made, gates between stages) and calls
:func:`execute_stage` for each; ``python -m llm_recipe.runtime`` (a launch script's one
stage) calls it directly. torch is only imported by the stage modules and
:func:`check_devices`, when a stage really runs.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from pathlib import Path
from typing import Any

from llm_recipe.compiler.kinds import KINDS_BY_NAME
from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import gates, hub_push, tracking
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.integrity import (
    clean_start,
    disk_full,
    explicit_resume,
    forget_after,
    remove_output,
    resume_point,
    stage_path,
    sweep_temporaries,
    verify_inputs,
)
from llm_recipe.runtime.locks import StageLock
from llm_recipe.runtime.log import ProgressSink, StageLog
from llm_recipe.runtime.records import StageOutcome, _manifest, _stage_json
from llm_recipe.runtime.workspace import atomic_write_json, clear_manifest, write_manifest


class StageFailed(Exception):
    """A stage raised: the traceback is in its train.log; the CLI exits 1."""

    def __init__(self, stage: str, log: Path, cause: BaseException,
                 message: str | None = None) -> None:
        super().__init__(message or f"stage {stage} failed: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.log = log
        self.cause = cause


def execute_stage(plan: Plan, stage: StagePlan, root: Path, *,
                  progress: ProgressSink | None = None, fresh_start: bool = False,
                  why: str | None = None, inputs_verified: bool = False) -> StageOutcome:
    """Run one stage under its lock; write stage.json first and manifest.json last.

    Under a multi-process launcher every rank runs the training, rank 0 alone writes
    to the workspace, and the ranks take the resume decision together (rank 0's).
    ``why`` is written into the log's run header (e.g. the damage that made it re-run).
    """
    from llm_recipe.runtime import distributed, usage
    from llm_recipe.runtime.stages import stage_module

    _quiet_libraries()  # before accelerate or DeepSpeed are imported
    module = stage_module(stage.kind)
    directory = stage_path(root, stage.dir)
    main = distributed.is_main()
    check_devices(stage)
    if not inputs_verified:
        verify_inputs(plan, stage, root)
    gates.refuse_if_gated(plan, stage, root)
    if main:
        tracking.check(plan, stage, root)  # a missing package: refused before the stage starts
    distributed.start(gpu=int(stage.compute.get("gpus_per_node") or 0) > 0)
    lock = StageLock(directory)
    if main:
        lock.acquire()
    try:
        notes: list[str] = []
        if main:
            sweep_temporaries(directory)
        found = None if fresh_start else resume_point(directory, stage, notes)
        if found is None:  # train.resume_from: latest (settings changed) or another run's
            found = explicit_resume(directory, stage, root, notes, forced=fresh_start)
        resume_name = distributed.agree(str(found) if found else None)
        resume_from = Path(str(resume_name)) if resume_name else None
        own = resume_from is not None and resume_from.parent == directory / "checkpoints"
        if main:
            if own:
                forget_after(directory, resume_from)
            else:  # from step 0, or from another run's checkpoint: a history of its own
                clean_start(directory)
            clear_manifest(directory)
            remove_output(stage_path(root, stage.output.path), directory)
            atomic_write_json(directory / "stage.json", _stage_json(stage))
        distributed.barrier()
        log = StageLog(directory, stage.name, progress if main else None, enabled=main)
        action = ("starting" if resume_from is None else f"resuming from {resume_from.name}"
                  if own else f"resuming from {_shown(resume_from, root)} (train.resume_from)")
        log.header(f"{action} ({why})" if why else action)
        for note in notes:
            log.line(note)
        ctx = StageContext(plan, stage, root, log, resume_from=resume_from)
        run = tracking.stage_run(plan, stage, root, log, main=main)
        log.tracker = run
        started = time.time()
        log.throughput = usage.Throughput.for_stage(stage)
        peak = usage.PeakMemory(stage)
        try:
            result = _run_module(module, ctx, stage, directory, log, main)
        except BaseException as exc:
            run.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        wall = time.time() - started
        used = usage.stage_usage(stage, peak, log.throughput)  # every rank: a collective
        log.line(usage.describe(used))
        distributed.barrier()
        if main and lock.lost.is_set():
            run.finish("FAILED")
            raise RecipeError(
                f"stage {stage.name}: this run's lock lapsed while it ran (its heartbeat "
                "stopped for longer than the lease), so another run may have written the "
                "stage; not marking it complete", hint="run it again")
        pushed = None
        if main:
            write_manifest(directory, _manifest(plan, stage, root, result, started, wall,
                                                resume_from, run.reference(), used))
            run.complete(result.metrics, directory, stage_path(root, stage.output.path))
            log.line(f"=== {stage.name}: complete in {wall:.1f}s")
            if hub_push.settings(stage) is not None:  # complete first: a failed push costs nothing
                pushed = hub_push.push(plan, stage, root, log)
    finally:
        lock.release()
    metric = (result.key_metric, result.metrics.get(result.key_metric)) if (
        result.key_metric) else None
    reason = None
    if result.early_stopping and result.early_stopping.get("stopped"):
        reason = f"stopped early at step {result.early_stopping['stopped_early_at']}"
    return StageOutcome(stage.name, stage.kind, "resumed" if resume_from else "ran",
                        stage.output.path, reason, wall, metric, result.metrics, usage=used,
                        push=pushed)


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _run_module(module: Any, ctx: StageContext, stage: StagePlan, directory: Path,
                log: StageLog, main: bool) -> StageResult:
    """The kind's run(); kinds that do not train run on rank 0 only."""
    if not main and not KINDS_BY_NAME[stage.kind].trains:
        return StageResult()
    try:
        result = module.run(ctx)
    except RecipeError:
        raise
    except Exception as exc:
        full = disk_full(exc, directory)
        with contextlib.suppress(OSError):  # the disk that is full holds the log too
            log.line(traceback.format_exc())
        raise StageFailed(stage.name, directory / "train.log", exc,
                          f"stage {stage.name} failed: {full}" if full else None) from exc
    # Only a stage that ended fills its bar: one stopped by Ctrl-C or an error keeps the
    # step it reached.
    log.finish()
    return result


def check_devices(stage: StagePlan) -> None:
    """Refuse before starting processes when the stage's GPUs are not on this machine."""
    from llm_recipe.compiler.preflight import gpus_needed

    needed = gpus_needed(stage)
    if needed == 0:
        return
    import torch

    if torch.cuda.device_count() < needed:
        raise RecipeError(
            f"stage {stage.name} asks for {stage.compute.get('gpus_per_node')} GPU(s) per "
            f"node, and this machine has {torch.cuda.device_count()}",
            hint="run a CPU profile (-p tiny) or --set compute.gpus_per_node=0")


def _quiet_libraries() -> None:
    from llm_recipe.runtime.quiet import quiet_libraries

    quiet_libraries()
