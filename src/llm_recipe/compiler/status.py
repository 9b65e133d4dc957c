"""A stage's status against the workspace, read from its manifest (no torch, no weights).

The manifest (``<stage dir>/manifest.json``) is written last and atomically by the
runtime, so its presence with ``status: complete`` is the completion marker. It is not
proof that the outputs are still there: a stage is fresh only when every file its
manifest lists exists with the recorded size (a stat per file, cheap enough for every
plan). The runtime checks the recorded sha256 too, before a downstream stage consumes
an output (:func:`output_problem` with ``hashes=True``).

Everything read from disk is checked for shape, not just for being JSON: a manifest,
``stage.json`` or checkpoint pointer of the wrong shape counts as absent, like a torn one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import file_sha256

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


_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "status": str, "fingerprint": str, "config": dict, "inputs": list, "output": dict,
    "metrics": dict, "key_metric": (str, type(None)), "steps": (int, type(None)),
}
_REQUIRED = ("status", "fingerprint")
CHECKPOINT_NAME = re.compile(r"^checkpoint-[0-9]+$")
"""What a checkpoint pointer may name: a folder beside it, never a path elsewhere."""


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's manifest, or None when missing, torn or of the wrong shape."""
    data = read_json(stage_dir / "manifest.json")
    if not isinstance(data, dict) or any(key not in data for key in _REQUIRED):
        return None
    if any(key in data and not isinstance(data[key], kind)
           for key, kind in _MANIFEST_FIELDS.items()):
        return None
    return data


def read_pointer_data(path: Path) -> dict[str, Any] | None:
    """A checkpoint pointer ``{checkpoint: checkpoint-N, step: N, ...}``, or None."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    name, step = data.get("checkpoint"), data.get("step")
    if not isinstance(name, str) or not CHECKPOINT_NAME.match(name):
        return None
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        return None
    return data


def output_problem(manifest: dict[str, Any], cwd: Path, *, hashes: bool = False) -> str | None:
    """What is wrong with the output a manifest describes, or None when it is intact.

    Sizes only by default (one stat per file); with ``hashes`` every file's sha256 is
    compared as well. Manifests written before file tables were recorded are checked
    for the output's existence only.
    """
    output = manifest.get("output")
    if not isinstance(output, dict) or not isinstance(output.get("path"), str):
        return "the manifest names no output"
    shown = Path(output["path"])
    target = shown if shown.is_absolute() else cwd / shown
    files = output.get("files")
    if not isinstance(files, dict):
        return None if target.exists() else f"{shown} is missing"
    for name, record in files.items():
        path, label = target.parent / name, (shown.parent / name).as_posix()
        if not isinstance(record, dict):
            return f"the manifest's record of {label} is damaged"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{label} is missing"
        if size != record.get("size"):
            return f"{label} has {size:,} bytes; its manifest recorded {record.get('size')}"
        if hashes and file_sha256(path) != record.get("sha256"):
            return f"{label} does not match the sha256 its manifest recorded"
    return None


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
        damaged = output_problem(manifest, cwd)
        if damaged is None:
            return {"state": FRESH, "reason": None}
        return {"state": STALE, "reason": f"output damaged: {damaged}", "damaged": damaged}
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
    latest = read_pointer_data(directory / "checkpoints" / "latest")
    if not isinstance(started, dict) or started.get("fingerprint") != fingerprint:
        return None
    if latest is None or not (directory / "checkpoints" / latest["checkpoint"]).is_dir():
        return None
    return latest.get("step")


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
    recorded = [i for i in manifest.get("inputs") or [] if isinstance(i, dict)]
    old_inputs = {i.get("field"): i.get("fingerprint") for i in recorded}
    # Named as the recipe names them (`sft`), not by field (`models.1`). A field whose
    # name changed is a config change, reported above, so the recorded name is current.
    refs = {i.get("field"): i.get("ref") for i in recorded if isinstance(i.get("ref"), str)}
    changed_inputs = list(dict.fromkeys(  # dpo's policy and reference: one `sft`
        refs.get(f) or f for f, fp in inputs.items() if old_inputs.get(f) != fp))
    if changed_inputs:
        return "input changed: " + ", ".join(changed_inputs)
    return "compute or kind version changed"


def _changed_keys(old: Any, new: Any, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: set[str] = set()
        for key in set(old) | set(new):
            if key in ("description", "after", "push_to_hub", "dataloader_workers"):
                continue  # not fingerprinted: never the reason a stage is stale
            keys |= _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return set() if old == new else {prefix.rstrip(".")}
