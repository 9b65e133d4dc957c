"""The records a run leaves: ``stage.json``, ``manifest.json`` and the summary rows.

``stage.json`` is the stage as resolved, written when it starts; ``manifest.json`` is
written last and says what the stage produced (output files with their sha256, metrics,
versions, host, git, gate, tracking). :class:`StageOutcome` is one line of the run
summary: built here for a skipped, blocked or registration row, read back from the
manifest for a stage another process ran. The executor decides what runs; this module
only writes and reads what it did.
"""

from __future__ import annotations

import os
import platform
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from llm_recipe import __version__
from llm_recipe.compiler.fingerprint import digest, file_table
from llm_recipe.compiler.kinds import KINDS_BY_NAME
from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.status import read_manifest
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import gates, tracking
from llm_recipe.runtime.context import StageResult
from llm_recipe.runtime.integrity import stage_path

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers")


@dataclass
class StageOutcome:
    """One line of the run summary."""

    name: str
    kind: str
    action: str  # skipped | ran | resumed | would run | would resume | failed | blocked
    # (blocked: an upstream gate failed); a registration row has kind "register" and
    # action registered | not registered
    output: str
    reason: str | None = None
    wall_s: float = 0.0
    metric: tuple[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None
    """The stage's gate judgement (runtime.gates), when it declares one."""
    usage: dict[str, Any] | None = None
    """Peak memory beside its estimate, TFLOP/s and MFU (runtime.usage) of a stage that ran."""
    push: dict[str, Any] | None = None
    """The stage's push to the Hub (runtime.hub_push's record), when it pushed or tried."""


def _registration(done: dict[str, Any]) -> StageOutcome:
    """The summary row of ``tracking.register``."""
    name, version = done["name"], done.get("version")
    if version is None:
        return StageOutcome(name, "register", "not registered", f"models:/{name}",
                            done.get("reason"))
    alias = f", alias {done['alias']}" if done.get("alias") else ""
    what = "new" if done.get("new") else "existing"
    return StageOutcome(name, "register", "registered", f"models:/{name}/{version}",
                        f"{what} version {version} of {done['stage']}{alias}")


def _push_row(stage: StagePlan, result: dict[str, Any] | None, *,
              dry_run: bool = False) -> StageOutcome:
    """The summary row of a stage's ``push_to_hub``."""
    from llm_recipe.runtime import hub_push

    wanted = hub_push.settings(stage) or {}
    target = f"hf://{wanted.get('repo')}" + (f"@{wanted['revision']}"
                                             if wanted.get("revision") else "")
    if dry_run or result is None:
        return StageOutcome(stage.name, "push", "would push", target, "after the stage")
    if result.get("status") == "pushed":
        return StageOutcome(stage.name, "push", "pushed", target,
                            f"commit {str(result.get('commit') or '')[:12]}")
    return StageOutcome(stage.name, "push", "push failed", target, str(result.get("error")))


def _stage_json(stage: StagePlan) -> dict[str, Any]:
    """What the seeds call sft_config.json: the stage as resolved, written when it starts."""
    return {"name": stage.name, "kind": stage.kind, "fingerprint": stage.fingerprint,
            "config": stage.config, "compute": stage.compute,
            "inputs": [i.__dict__ for i in stage.inputs], "output": stage.output.__dict__}


def _manifest(plan: Plan, stage: StagePlan, root: Path, result: StageResult, started: float,
              wall: float, resume_from: Path | None,
              tracked: dict[str, Any] | None = None,
              used: dict[str, Any] | None = None) -> dict[str, Any]:
    output = stage_path(root, stage.output.path)
    if not output.exists():
        raise RecipeError(f"stage {stage.name} finished without writing {stage.output.path}")
    files = file_table(output)
    return {
        "status": "complete",
        "run_id": uuid.uuid4().hex,
        "stage": stage.name,
        "kind": stage.kind,
        "kind_version": KINDS_BY_NAME[stage.kind].version,
        "fingerprint": stage.fingerprint,
        "recipe": plan.recipe["name"],
        "config": stage.config,
        "seed": stage.config.get("seed"),
        "inputs": [{"field": i.field, "ref": i.ref, "type": i.type,
                    "fingerprint": i.fingerprint, "path": i.path} for i in stage.inputs],
        "output": {"type": stage.output.type, "path": stage.output.path,
                   "sha256": digest(files), "files": files},
        "metrics": result.metrics,
        "key_metric": result.key_metric,
        "steps": result.steps,
        **({"early_stopping": result.early_stopping} if result.early_stopping else {}),
        "resumed_from": _resumed_from(resume_from, stage_path(root, stage.dir), root),
        "timings": {"started": _iso(started), "finished": _iso(started + wall),
                    "wall_s": round(wall, 3)},
        "usage": used,
        "versions": _versions(),
        "host": {"name": socket.gethostname(), "pid": os.getpid(),
                 "python": platform.python_version()},
        "git": tracking.git_record(plan, root),
        "gate": gates.record(plan, stage, result.metrics),
        "tracking": tracked,
    }


def _resumed_from(checkpoint: Path | None, directory: Path, root: Path) -> str | None:
    """The checkpoint a run resumed from: its name in the stage's own checkpoints, else
    (``train.resume_from`` another run's) its path from the working directory."""
    if checkpoint is None:
        return None
    if checkpoint.parent == directory / "checkpoints":
        return checkpoint.name
    try:
        return checkpoint.relative_to(root).as_posix()
    except ValueError:
        return str(checkpoint)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"llm-recipe": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def run_id(stage: StagePlan, root: Path) -> str | None:
    """The id of the run that wrote the stage's manifest (None when there is none)."""
    manifest = read_manifest(stage_path(root, stage.dir))
    value = manifest.get("run_id") if manifest else None
    return value if isinstance(value, str) else None


def outcome_from_manifest(stage: StagePlan, root: Path, before: str | None,
                          wall: float) -> StageOutcome:
    """The outcome of a stage another process ran, read back from its manifest.

    ``before`` is the manifest's run id before the process started: the same id means
    the runtime found the stage fresh and skipped it.
    """
    outcome = _outcome(stage, "skipped", None, root)
    manifest = read_manifest(stage_path(root, stage.dir)) or {}
    if manifest.get("run_id") == before:
        outcome.reason = "fresh"
        return outcome
    outcome.action = "resumed" if manifest.get("resumed_from") else "ran"
    outcome.wall_s = wall
    outcome.usage = manifest.get("usage") if isinstance(manifest.get("usage"), dict) else None
    from llm_recipe.runtime import hub_push

    outcome.push = hub_push.record(stage, root) if hub_push.settings(stage) else None
    return outcome


def _outcome(stage: StagePlan, action: str, reason: str | None, root: Path) -> StageOutcome:
    metrics: dict[str, Any] = {}
    metric = None
    if action == "skipped":
        manifest = read_manifest(stage_path(root, stage.dir)) or {}
        metrics = manifest.get("metrics") or {}
        key = manifest.get("key_metric")
        metric = (key, metrics.get(key)) if key else None
        return StageOutcome(stage.name, stage.kind, action, stage.output.path, reason, 0.0,
                            metric, metrics)
    return StageOutcome(stage.name, stage.kind, action, stage.output.path, reason)
