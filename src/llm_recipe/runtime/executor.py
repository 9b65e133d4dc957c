"""Execute a Plan: pick the stages in scope, skip fresh ones, run or resume the rest.

Status is re-read from disk before each stage, so a stage sees the outputs its upstream
wrote moments ago. Before a stage consumes an upstream output that this run did not
write, the output's files are checked against the sha256 its manifest recorded; a
damaged one is named and its producer runs again first. A failing gate stops the stages
after it. One stage (its lock, resume or clean start, ``stage.json``, the kind's
``run()``, ``manifest.json``) is :mod:`llm_recipe.runtime.stage_execution`; what those
files and the summary rows hold is :mod:`llm_recipe.runtime.records`.

torch is only imported by the stage modules, so a run where everything is fresh never
pays for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.status import FRESH, PARTIAL, stage_status
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import gates, hub_push, tracking
from llm_recipe.runtime.integrity import damaged_inputs, stage_path
from llm_recipe.runtime.log import ProgressSink
from llm_recipe.runtime.records import (
    StageOutcome,
    _outcome,
    _push_row,
    _registration,
    outcome_from_manifest,
    run_id,
)
from llm_recipe.runtime.stage_execution import StageFailed, check_devices, execute_stage
from llm_recipe.runtime.stage_execution import _run_module as _run_module  # tests import it
from llm_recipe.runtime.workspace import clear_manifest

__all__ = [
    "Launch",
    "RunOptions",
    "StageFailed",
    "StageOutcome",
    "check_devices",
    "current_status",
    "execute_stage",
    "outcome_from_manifest",
    "run_id",
    "run_plan",
    "select",
]


@dataclass(frozen=True)
class RunOptions:
    only: str | None = None
    start: str | None = None
    force: frozenset[str] = frozenset()
    force_all: bool = False
    dry_run: bool = False
    cannot_run: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Stages this machine cannot run, with why (compiler/preflight.py): a dry run says
    so instead of "would run"; a real run is refused before it starts."""


def select(plan: Plan, options: RunOptions) -> list[StagePlan]:
    """The stages in scope, in plan order: all, ``--only`` one, or ``--from`` one onwards.

    In a matrix, a stage's name also stands for all its copies (``--only sft`` selects
    ``sft@default``, ``sft@ablation0``...; ``--force sft`` forces each)."""
    names = [s.name for s in plan.stages]
    for flag, value in (("--only", options.only), ("--from", options.start),
                        *(("--force", f) for f in options.force)):
        if value is not None and not copies(names, value):
            raise RecipeError(f"{flag} {value}: no such stage",
                              expected=f"one of: {', '.join(names)}")
    if options.only:
        return [plan.stage(name) for name in copies(names, options.only)]
    if options.start:
        downstream = set(copies(names, options.start))
        for stage in plan.stages:
            if downstream & set(stage.upstream):
                downstream.add(stage.name)
        return [s for s in plan.stages if s.name in downstream]
    return list(plan.stages)


def copies(names: list[str], name: str) -> list[str]:
    """``name`` itself, or the matrix copies ``name@VARIANT`` of a stage planned per variant."""
    return [name] if name in names else [n for n in names if n.split("@")[0] == name]


def is_forced(stage: StagePlan, options: RunOptions) -> bool:
    """Whether ``--force-all`` or a ``--force NAME`` (the stage or all its copies) names it."""
    return options.force_all or stage.name in options.force or (
        "@" in stage.name and stage.name.split("@")[0] in options.force)


def current_status(stage: StagePlan, root: Path) -> dict[str, Any]:
    """The stage's status now (the plan's was computed before earlier stages ran)."""
    return stage_status(Path(stage.dir), stage.fingerprint, stage.config, root,
                        {i.field: i.fingerprint for i in stage.inputs})


Launch = Callable[[StagePlan, bool], StageOutcome]
"""Runs a stage whose launcher is not local (the rendered launch script), forced or not
(the runtime inside the script takes that decision), and reports what the runtime did."""


def run_plan(plan: Plan, root: Path, options: RunOptions = RunOptions(),
             progress: ProgressSink | None = None, launch: Launch | None = None
             ) -> list[StageOutcome]:
    """Run the stages in scope; stop at the first failure (raised after recording it).

    Local stages run in this process; the others go through ``launch``. The run is one
    parent run of the recipe's tracker (each stage a nested run). A failing gate stops
    the stages after it and raises :class:`gates.GateFailed` (its ``outcomes`` are the
    summary) once everything else has run.
    """
    session = tracking.Session(plan, root)
    with tracking.active(session):
        try:
            outcomes = _run_stages(plan, root, options, progress, launch, session)
        except KeyboardInterrupt:
            session.close("KILLED")
            raise
        except gates.GateFailed:
            session.set_parent_tags({"gate": "failed"})
            session.close("FINISHED")
            raise
        except BaseException:
            session.close("FAILED")
            raise
        session.close("FINISHED")
    return outcomes


def _run_stages(plan: Plan, root: Path, options: RunOptions, progress: ProgressSink | None,
                launch: Launch | None, session: tracking.Session) -> list[StageOutcome]:
    outcomes: list[StageOutcome] = []
    done: set[str] = set()
    trusted: set[str] = set()
    failed_gates: dict[str, dict[str, Any]] = {}
    judged: dict[str, dict[str, Any] | None] = {}
    stopped: list[str] = []

    def gate_of(name: str) -> dict[str, Any] | None:
        if name not in judged:
            judged[name] = gates.check(plan, plan.stage(name), root)
            if judged[name] is not None and not judged[name]["passed"]:
                failed_gates[name] = judged[name]
        return judged[name]

    def blocked_by(stage: StagePlan) -> str | None:
        for name in stage.upstream:
            if name in stopped or name in failed_gates:
                return name
            gate_of(name)
            if name in failed_gates:
                return name
        return None

    def run_one(stage: StagePlan, forced: bool, why: str | None = None) -> StageOutcome:
        for name, problem in damaged_inputs(plan, stage, root, trusted):
            # The producer's checkpoints are intact; without a manifest it resumes from
            # its last one and writes its output again.
            clear_manifest(stage_path(root, plan.stage(name).dir))
            run_one(plan.stage(name), False, f"output damaged: {problem}")
        if stage.launcher["name"] != "local":
            if launch is None:
                raise RecipeError(f"stage {stage.name} uses the {stage.launcher['name']} "
                                  "launcher; run it with recipe run or its rendered script")
            with session.exported():
                outcome = launch(stage, forced)
        else:
            outcome = execute_stage(plan, stage, root, progress=progress, fresh_start=forced,
                                    why=why, inputs_verified=True)
        outcome.reason = outcome.reason or why
        outcomes.append(outcome)
        trusted.add(stage.name)
        if hub_push.settings(stage) is not None:
            outcomes.append(_push_row(stage, outcome.push or hub_push.record(stage, root)))
        return outcome

    for stage in select(plan, options):
        blocker = blocked_by(stage)
        if blocker is not None:
            why = "gate failed" if blocker in failed_gates else "blocked"
            outcomes.append(_outcome(stage, "blocked", f"{why} in {blocker}", root))
            stopped.append(stage.name)
            continue
        forced = is_forced(stage, options)
        status = current_status(stage, root)
        if status["state"] == FRESH and not forced:
            skipped = _outcome(stage, "skipped", "fresh", root)
            outcomes.append(skipped)
            done.add(stage.name)
            _note_gate(skipped, gate_of(stage.name))
            if hub_push.pending(stage, root):  # complete, but not (yet) on the Hub
                outcomes.append(_push_row(stage, None if options.dry_run else
                                          hub_push.push(plan, stage, root),
                                          dry_run=options.dry_run))
            continue
        _check_upstream(plan, stage, root, done)
        resuming = status["state"] == PARTIAL and not forced
        if options.dry_run:
            action = "would resume" if resuming else "would run"
            reason = status.get("reason") or status["state"]
            if stage.name in options.cannot_run:
                action, reason = "cannot run here", "; ".join(options.cannot_run[stage.name])
            outcomes.append(_outcome(stage, action, reason, root))
            if hub_push.settings(stage) is not None:
                outcomes.append(_push_row(stage, None, dry_run=True))
            done.add(stage.name)
            continue
        if status.get("damaged"):
            clear_manifest(stage_path(root, stage.dir))  # resume from its final checkpoint
        ran = run_one(stage, forced, status.get("damaged") and status["reason"])
        done.add(stage.name)
        judged.pop(stage.name, None)
        _note_gate(ran, gate_of(stage.name))
    if not options.dry_run:
        registered = session.register()
        if registered is not None:
            outcomes.append(_registration(registered))
    if failed_gates:
        name, result = next(iter(failed_gates.items()))
        register = plan.tracking.get("register") or {}
        gated = gates.register_gate(plan)
        unregistered = register.get("name") if gated and gated.stage in failed_gates else None
        error = gates.failure(name, result, stopped, unregistered)
        error.outcomes = outcomes  # the summary of what did run
        raise error
    return outcomes


def _note_gate(outcome: StageOutcome, result: dict[str, Any] | None) -> None:
    if result is not None:
        verdict = "passed" if result["passed"] else "failed"
        outcome.reason = f"gate {verdict}: {result['message']}"
        outcome.gate = result


def _check_upstream(plan: Plan, stage: StagePlan, root: Path, done: set[str]) -> None:
    for name in stage.upstream:
        if name in done:
            continue
        state = current_status(plan.stage(name), root)["state"]
        if state != FRESH:
            raise RecipeError(
                f"stage {stage.name} needs {name}, which is {state}",
                hint=f"run without --only, or with --from {name}")

