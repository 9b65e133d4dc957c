"""A stage's status against the workspace, read from its manifest (no torch, no weights).

The manifest (``<stage dir>/manifest.json``) is written last and atomically by the
runtime, so its presence with ``status: complete`` is the completion marker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FRESH = "fresh"
STALE = "stale"
PARTIAL = "partial"
MISSING = "missing"
BLOCKED = "blocked"


def read_json(path: Path) -> Any:
    """JSON from ``path``, or None when missing or unreadable (a torn file counts as absent)."""
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    data = read_json(stage_dir / "manifest.json")
    return data if isinstance(data, dict) else None


def stage_status(
    stage_dir: Path,
    fingerprint: str,
    config: dict[str, Any],
    cwd: Path,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``{state, reason}``: fresh, partial (resumable from step N), stale (and why) or missing.

    ``inputs`` maps input fields to their fingerprints, to say which input changed.
    """
    directory = stage_dir if stage_dir.is_absolute() else cwd / stage_dir
    manifest = read_manifest(directory)
    complete = manifest is not None and manifest.get("status") == "complete"
    if complete and manifest.get("fingerprint") == fingerprint:
        return {"state": FRESH, "reason": None}
    step = resumable_step(directory, fingerprint)
    if step is not None:
        return {"state": PARTIAL, "reason": f"resumable from step {step}", "step": step}
    if complete:
        return {"state": STALE, "reason": _why(manifest, config, inputs or {})}
    return {"state": MISSING, "reason": None}


def resumable_step(directory: Path, fingerprint: str) -> int | None:
    """The step of the latest complete checkpoint of an interrupted run of this fingerprint.

    ``stage.json`` is written when a run starts and ``checkpoints/latest`` after each
    completed save, so both agreeing means the checkpoint belongs to this config.
    """
    started = read_json(directory / "stage.json")
    latest = read_json(directory / "checkpoints" / "latest")
    if not isinstance(started, dict) or started.get("fingerprint") != fingerprint:
        return None
    if not isinstance(latest, dict) or not isinstance(latest.get("checkpoint"), str):
        return None
    if not (directory / "checkpoints" / latest["checkpoint"]).is_dir():
        return None
    step = latest.get("step")
    return step if isinstance(step, int) else None


def with_blocked(states: dict[str, dict[str, Any]], upstream: dict[str, tuple[str, ...]]) -> None:
    """Mark missing stages whose upstream is not fresh as blocked (in plan order)."""
    for name, state in states.items():
        waiting = [u for u in upstream.get(name, ()) if states[u]["state"] != FRESH]
        if state["state"] == MISSING and waiting:
            state["state"] = BLOCKED
            state["reason"] = f"waits for {', '.join(waiting)}"


def _why(manifest: dict[str, Any], config: dict[str, Any], inputs: dict[str, str]) -> str:
    """Name what changed: config keys first, then inputs, then the kind's version."""
    old = manifest.get("config")
    if isinstance(old, dict):
        changed = sorted(_changed_keys(old, config))
        if changed:
            return "config changed: " + ", ".join(changed[:5]) + ("..." if len(changed) > 5 else "")
    old_inputs = {
        i.get("field"): i.get("fingerprint")
        for i in manifest.get("inputs") or []
        if isinstance(i, dict)
    }
    changed_inputs = [f for f, fp in inputs.items() if old_inputs.get(f) != fp]
    if changed_inputs:
        return "input changed: " + ", ".join(changed_inputs)
    return "compute or kind version changed"


def _changed_keys(old: Any, new: Any, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: set[str] = set()
        for key in set(old) | set(new):
            if key in ("description", "after"):
                continue
            keys |= _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return set() if old == new else {prefix.rstrip(".")}
