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
MISSING = "missing"


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((stage_dir / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stage_status(
    stage_dir: Path, fingerprint: str, config: dict[str, Any], cwd: Path
) -> dict[str, Any]:
    """``{state, reason}``: fresh (outputs valid), stale (and why) or missing."""
    directory = stage_dir if stage_dir.is_absolute() else cwd / stage_dir
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("status") != "complete":
        return {"state": MISSING, "reason": None}
    if manifest.get("fingerprint") == fingerprint:
        return {"state": FRESH, "reason": None}
    return {"state": STALE, "reason": _why(manifest, config)}


def _why(manifest: dict[str, Any], config: dict[str, Any]) -> str:
    """Name what changed: config keys first, then inputs."""
    old = manifest.get("config")
    if isinstance(old, dict):
        changed = sorted(_changed_keys(old, config))
        if changed:
            return "config changed: " + ", ".join(changed[:5]) + ("..." if len(changed) > 5 else "")
    return "an input changed"


def _changed_keys(old: Any, new: Any, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: set[str] = set()
        for key in set(old) | set(new):
            if key in ("description", "after"):
                continue
            keys |= _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return set() if old == new else {prefix.rstrip(".")}
