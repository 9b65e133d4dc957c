"""``recipe clean``: which folders of a recipe's workspace no longer match its plan.

Torch-free and read-only: :func:`clean_candidates` looks at the plan and a listing of
``<workspace root>/<recipe name>/`` and decides; :func:`remove` (the edge) deletes what
it was given. What is looked at, and what is never touched:

- **stale**: a planned stage's folder whose complete ``manifest.json`` records another
  fingerprint than the plan's, or (no complete manifest) whose ``stage.json`` says an
  interrupted run of another config started it. Removed.
- **removed**: a folder directly under the recipe's workspace that is no planned
  stage's folder but looks like a stage folder (it holds ``manifest.json``,
  ``stage.json`` or ``.locks/``): a stage the recipe no longer has, or a matrix copy
  no longer planned. Removed.
- kept: fresh stages; a stage with a complete manifest of the plan's fingerprint
  (even if its output is damaged: ``recipe run`` redoes it); partial checkpoints of the
  current config (``stage.json`` of the plan's fingerprint, no manifest: resumable);
  a folder with a live lock (a run is writing it; the lease is judged by
  :mod:`llm_recipe.runtime.locks`, stdlib only, and never removed here);
  symlinks (never followed, never removed); anything whose real path is outside the
  recipe's workspace; the workspace's own entries (``plan.json``, ``.cache/``,
  ``launch/``, tracking stores ``mlruns/``, ``wandb/``, ``tensorboard/``, dot files)
  and folders that do not look like stage folders.

``.cache/`` is content-keyed and may be shared between stages and recipes: it is
never cleaned.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.status import read_json, read_manifest

STALE = "stale"
REMOVED = "removed"
KEPT = "kept"
RESERVED = frozenset({"plan.json", "launch", "mlruns", "wandb", "tensorboard"})
"""Entries of a recipe's workspace that are not stage folders (dot names are skipped too)."""
STAGE_MARKERS = ("manifest.json", "stage.json", ".locks")


@dataclass
class Candidate:
    """One folder of the workspace and what clean does with it."""

    path: str
    """As shown: relative to the directory the command runs in, when below it."""
    stage: str
    action: str
    """``stale`` or ``removed`` (deleted), or ``kept`` (with the reason)."""
    reason: str
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_candidates(plan: Plan, root: Path, *, stale: bool = True,
                     removed: bool = True) -> list[Candidate]:
    """What to remove from the recipe's workspace, and what is kept for a reason worth saying.

    ``root`` is the directory plan paths are relative to. Folders kept because they
    are fresh, or are not stage folders, are not listed.
    """
    workspace = _under(root, plan.workspace)
    if not workspace.is_dir() or workspace.is_symlink():
        return []
    real_workspace = workspace.resolve()
    planned = {_under(root, stage.dir).resolve(): stage for stage in plan.stages}
    found: list[Candidate] = []
    if stale:
        for stage in plan.stages:
            directory = _under(root, stage.dir)
            if directory.is_symlink():
                found.append(Candidate(stage.dir, stage.name, KEPT,
                                       "a symlink: clean never follows or removes one"))
                continue
            if not directory.is_dir():
                continue
            why = stale_reason(directory, stage.fingerprint)
            if why is not None:
                found.append(_judged(directory, stage.dir, stage.name, STALE, why,
                                     real_workspace))
    if removed:
        for entry in sorted(os.scandir(workspace), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name in RESERVED:
                continue
            path = Path(entry.path)
            if path.resolve() in planned and not entry.is_symlink():
                continue
            shown = f"{plan.workspace}/{entry.name}"
            if entry.is_symlink():
                if any((path / m).exists() for m in STAGE_MARKERS):
                    found.append(Candidate(shown, entry.name, KEPT,
                                           "a symlink: clean never follows or removes one"))
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            if not any(os.path.lexists(path / m) for m in STAGE_MARKERS):
                continue
            found.append(_judged(path, shown, entry.name, REMOVED,
                                 "the recipe has no stage with this folder", real_workspace))
    return found


def stale_reason(directory: Path, fingerprint: str) -> str | None:
    """Why a planned stage's folder holds outputs of another config, or None when it does not."""
    manifest = read_manifest(directory)
    if manifest is not None and manifest.get("status") == "complete":
        recorded = manifest.get("fingerprint")
        if recorded == fingerprint:
            return None
        return f"its outputs are of another config ({str(recorded)[:12]}, plan {fingerprint[:12]})"
    started = read_json(directory / "stage.json")
    run_fp = started.get("fingerprint") if isinstance(started, dict) else None
    if isinstance(run_fp, str) and run_fp != fingerprint:
        return f"an interrupted run of another config ({run_fp[:12]})"
    return None  # partial checkpoints of this config, or nothing written yet


def _judged(directory: Path, shown: str, name: str, action: str, reason: str,
            real_workspace: Path) -> Candidate:
    real = directory.resolve()
    if real == real_workspace or real_workspace not in real.parents:
        return Candidate(shown, name, KEPT, "outside the recipe's workspace")
    holder = _live_holder(directory)
    if holder is not None:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        return Candidate(shown, name, KEPT, f"{reason}, but a run holds its lock ({who})")
    return Candidate(shown, name, action, reason, tree_bytes(directory))


def _live_holder(directory: Path) -> dict[str, Any] | None:
    from llm_recipe.compiler.workspace_status import lock_holder

    return lock_holder(directory)  # None without a .locks folder; never writes


def tree_bytes(directory: Path) -> int:
    """Bytes of the regular files below ``directory`` (symlinks not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(directory):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += stat.st_size
    return total


def remove(candidate: Candidate, root: Path) -> None:
    """Delete a stale or removed folder (the edge: the only write in this module).

    Re-checks that it is a real folder and that no run took its lock since it was judged.
    """
    if candidate.action not in (STALE, REMOVED):
        return
    directory = _under(root, candidate.path)
    if directory.is_symlink() or not directory.is_dir():
        return
    if _live_holder(directory) is not None:
        candidate.action, candidate.reason = KEPT, f"{candidate.reason}, but a run took its lock"
        return
    shutil.rmtree(directory)


def _under(root: Path, path: str) -> Path:
    value = Path(path)
    return value if value.is_absolute() else root / value
