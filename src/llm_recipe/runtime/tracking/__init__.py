"""Experiment tracking: MLflow (the embedded default store), W&B, TensorBoard, or none.

``run_plan`` opens a :class:`Session` for the run (one parent run) and makes it
:func:`active`; ``execute_stage`` asks :func:`stage_run` for the stage's nested run and
hands it to the stage's :class:`~llm_recipe.runtime.log.StageLog`, whose ``metrics()``
(the one place metrics.jsonl rows are written) feeds it. A stage run by
``python -m llm_recipe.runtime`` in another process finds no active session and opens
its own, nested under the parent named by ``RECIPE_TRACKING_PARENT`` when set.

Modules: ``base`` (settings, the :class:`Tracker` protocol, the null tracker, the
backend registry), ``values`` (params, metric names, tags, git, redaction),
``session`` (parent/nested runs, failures, the model registry), and one per backend:
``mlflow``, ``wandb``, ``tensorboard``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.runtime.tracking.base import (
    BACKENDS,
    PARENT_ENV,
    NullTracker,
    Settings,
    Tracker,
    TrackingError,
    TrackingUnavailable,
    backend,
    settings_for,
)
from llm_recipe.runtime.tracking.session import Session, StageRun
from llm_recipe.runtime.tracking.values import git_info, recipe_file

__all__ = [
    "BACKENDS", "PARENT_ENV", "NullTracker", "Session", "Settings", "StageRun", "Tracker",
    "TrackingError", "TrackingUnavailable", "active", "backend", "check", "git_record",
    "settings_for", "stage_run",
]

_active: Session | None = None


@contextlib.contextmanager
def active(session: Session) -> Iterator[Session]:
    """Make ``session`` the one stages of this process report to."""
    global _active
    before, _active = _active, session
    try:
        yield session
    finally:
        _active = before


def stage_run(plan: Plan, stage: StagePlan, root: Path, log: Any, *, main: bool) -> StageRun:
    """The stage's run: in the active session, else (a launched stage) in one of its own
    under ``RECIPE_TRACKING_PARENT``. Ranks other than 0 get a run that does nothing."""
    session = _active
    if session is None or session.plan.recipe.get("fingerprint") != plan.recipe.get(
            "fingerprint"):
        session = Session(plan, root, parent_id=os.environ.get(PARENT_ENV) or None, nest=False)
    if not main:
        return StageRun(session, stage, session.settings_of(stage), None, log)
    return session.stage_run(stage, log)


def check(plan: Plan, stage: StagePlan, root: Path) -> None:
    """Raise :class:`TrackingUnavailable` now if the stage's backend is not installed
    (before the stage takes its lock and starts, not after)."""
    settings = settings_for(plan.tracking, stage.config.get("tracking"),
                            recipe=str(plan.recipe["name"]), workspace=root)
    if settings.enabled:
        backend(settings.backend).check()


def git_record(plan: Plan, root: Path) -> dict[str, Any] | None:
    """The manifest's ``git`` entry: the recipe file's commit and whether the tree is dirty."""
    return git_info(recipe_file(plan, root))
