"""What the workspace holds for each stage of a plan: ``recipe status``, ``logs``, ``report``.

Strictly read-only and torch-free. Everything comes from files the runtime writes:

- the plan's own status (:mod:`llm_recipe.compiler.status`: fresh, stale and why,
  partial and from which step, missing, blocked), computed when the recipe compiles;
- the stage lock (:mod:`llm_recipe.runtime.locks`, stdlib only): a live lease means a
  run is writing the stage now, and its record says who (pid, host, since when).
  :meth:`StageLock.holder` only judges leases, it never removes or writes one;
- ``manifest.json``: metrics, key metric, wall time, and the ``gate`` an eval stage
  records when the recipe declares one (``{passed, metric, value, threshold, message}``,
  as ``recipe run`` last judged it);
- ``stage.json`` (the fingerprint a run started with) and the tail of ``metrics.jsonl``
  (the last logged step of a running or interrupted stage).

Nothing here creates a folder or a file, takes a lock, or removes a dead lease: looking
at a workspace must not change it (a test compares the tree before and after).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from llm_recipe.compiler.kinds import KINDS_BY_NAME
from llm_recipe.compiler.plan_types import Plan, StagePlan
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.status import FRESH, read_json, read_manifest

RUNNING = "running"
GATE_FAILED = "gate_failed"

TAIL_BYTES = 64 * 1024
"""How much of metrics.jsonl ``status`` reads: its last rows, however long the run."""


@dataclass
class StageState:
    """One stage as the workspace has it (``recipe status --json`` prints these)."""

    name: str
    kind: str
    state: str
    """fresh, stale, partial, missing, blocked (the plan's), running or gate_failed."""
    reason: str | None
    dir: str
    fingerprint: str
    output: dict[str, Any]
    upstream: list[str]
    trains: bool
    holder: dict[str, Any] | None = None
    """The live lock holder's record: pid, host, started (running stages)."""
    step: int | None = None
    """The last step logged (running or interrupted), else the manifest's steps."""
    max_steps: int | None = None
    wall_s: float | None = None
    started: str | None = None
    finished: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    """The manifest's metrics when complete; else the last logged row's numbers."""
    key_metric: str | None = None
    gate: dict[str, Any] | None = None
    output_bytes: int | None = None
    """The output's size as its manifest recorded it (complete stages)."""
    log: str | None = None
    """The stage's train.log (plan-relative path), when it exists."""
    other_run: str | None = None
    """The fingerprint a running or interrupted run started with, when not the plan's."""

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def stage_path(root: Path, plan_path: str) -> Path:
    path = Path(plan_path)
    return path if path.is_absolute() else root / path


def lock_holder(stage_dir: Path) -> dict[str, Any] | None:
    """The live holder of the stage's lock (pid, host, started, lease), or None.

    Read-only: leases are judged (a dead one is left where it is) and no lock folder is
    created. The locks module is stdlib only, so this stays torch-free.
    """
    from llm_recipe.runtime.locks import LOCK_DIR, StageLock

    if not (stage_dir / LOCK_DIR).is_dir():
        return None
    try:
        return StageLock(stage_dir).holder()
    except OSError:
        return None


def workspace_status(plan: Plan, root: Path) -> list[StageState]:
    """Every stage of the plan, in plan order, as the workspace under ``root`` has it."""
    return [stage_state(stage, root) for stage in plan.stages]


def stage_state(stage: StagePlan, root: Path) -> StageState:
    directory = stage_path(root, stage.dir)
    status = stage.status
    kind = KINDS_BY_NAME.get(stage.kind)
    max_steps = _max_steps(stage.config)
    state = StageState(
        name=stage.name, kind=stage.kind, state=status["state"], reason=status.get("reason"),
        dir=stage.dir, fingerprint=stage.fingerprint,
        output={"type": stage.output.type, "path": stage.output.path},
        upstream=list(stage.upstream), trains=bool(kind and kind.trains),
        max_steps=max_steps if _is_int(max_steps) and max_steps > 0 else None,
        step=status.get("step") if _is_int(status.get("step")) else None,
    )
    log = directory / "train.log"
    if log.is_file():
        state.log = (Path(stage.dir) / "train.log").as_posix()
    manifest = read_manifest(directory)
    holder = lock_holder(directory)
    if holder is not None:
        _running(state, directory, holder)
    elif manifest is not None and manifest.get("status") == "complete":
        _complete(state, manifest)
        if state.state == FRESH and isinstance(state.gate, dict) \
                and state.gate.get("passed") is False:
            state.state = GATE_FAILED
            state.reason = gate_text(state.gate)
    if state.state not in (FRESH, GATE_FAILED, RUNNING) and holder is None:
        started = read_json(directory / "stage.json")
        run_fp = started.get("fingerprint") if isinstance(started, dict) else None
        last = last_row(directory / "metrics.jsonl")
        if isinstance(run_fp, str) and run_fp == stage.fingerprint and last is not None:
            # An interrupted run of this config: what it had logged before it stopped.
            state.metrics = _numbers(last)
            if _is_int(last.get("step")):
                state.step = last["step"]
        if isinstance(run_fp, str) and run_fp == stage.fingerprint and last_run_failed(log):
            state.reason = "; ".join(filter(None, [state.reason,
                                                   "its last run failed (see train.log)"]))
    return state


def last_run_failed(log: Path, limit: int = TAIL_BYTES) -> bool:
    """Whether the log's last run ended in a traceback (the runtime writes it there)."""
    try:
        with open(log, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            text = handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return False
    last_run = text.rsplit("\n=== ", 1)[-1]
    return "Traceback (most recent call last)" in last_run and " complete in " not in last_run


def _max_steps(config: dict[str, Any]) -> int | None:
    """The steps a run takes: ``train.max_steps``, or a continual stage's phases summed."""
    train = config.get("train")
    if isinstance(train, dict) and _is_int(train.get("max_steps")):
        return train["max_steps"]
    phases = config.get("phases")
    if isinstance(phases, list) and phases:
        steps = [p.get("steps") for p in phases if isinstance(p, dict)]
        if steps and all(_is_int(s) for s in steps):
            return sum(steps)
    return None


def _running(state: StageState, directory: Path, holder: dict[str, Any]) -> None:
    state.state = RUNNING
    state.holder = {k: holder.get(k) for k in ("pid", "host", "started", "lease")}
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    since = holder.get("started")
    state.reason = f"{who} since {short_time(since, today=True)}" if isinstance(since, str) else who
    started = read_json(directory / "stage.json")
    run_fp = started.get("fingerprint") if isinstance(started, dict) else None
    if isinstance(run_fp, str) and run_fp != state.fingerprint:
        state.other_run = run_fp
        state.reason += f"; a run of another config ({run_fp[:12]})"
    state.started = since if isinstance(since, str) else None
    when = _parse_time(since)
    if when is not None:
        state.wall_s = round(max(0.0, time.time() - when), 1)
    last = last_row(directory / "metrics.jsonl")
    if last is not None and (state.other_run is None):
        state.metrics = _numbers(last)
        if _is_int(last.get("step")):
            state.step = last["step"]


def _complete(state: StageState, manifest: dict[str, Any]) -> None:
    timings = mapping_at(manifest, "timings")
    wall = timings.get("wall_s")
    state.wall_s = float(wall) if isinstance(wall, int | float) else None
    state.started = timings.get("started") if isinstance(timings.get("started"), str) else None
    state.finished = (timings.get("finished") if isinstance(timings.get("finished"), str)
                      else None)
    state.metrics = dict(manifest.get("metrics") or {})
    key = manifest.get("key_metric")
    state.key_metric = key if isinstance(key, str) else None
    if _is_int(manifest.get("steps")):
        state.step = manifest["steps"]
    gate = manifest.get("gate")
    state.gate = gate if isinstance(gate, dict) else None
    output = manifest.get("output")
    files = output.get("files") if isinstance(output, dict) else None
    if isinstance(files, dict):
        sizes = [r.get("size") for r in files.values() if isinstance(r, dict)]
        state.output_bytes = sum(s for s in sizes if _is_int(s))


def gate_text(gate: dict[str, Any]) -> str:
    """What a gate record says: its ``message`` (``sft/exact_match = 0.41, needs >= 0.45``),
    else ``sft/exact_match 0.41, threshold 0.45``."""
    if isinstance(gate.get("message"), str) and gate["message"]:
        return gate["message"]
    value, threshold = gate.get("value"), gate.get("threshold")
    text = str(gate.get("metric") or "metric")
    if value is not None:
        text += f" {short_number(value)}"
    if threshold is not None:
        text += f", threshold {short_number(threshold)}"
    return text


def last_row(path: Path, limit: int = TAIL_BYTES) -> dict[str, Any] | None:
    """The last training row of a metrics.jsonl (a row of phase ``train``, else any row),
    read from the file's last ``limit`` bytes; None when there is none."""
    rows = tail_rows(path, limit)
    trained = [r for r in rows if r.get("phase", "train") == "train"]
    return (trained or rows or [None])[-1]


def tail_rows(path: Path, limit: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The complete JSON rows in the last ``limit`` bytes of a jsonl file."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - limit))
            data = handle.read(limit)
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > limit:
        lines = lines[1:]  # the first may be cut
    return [row for row in (_json_line(line) for line in lines) if row is not None]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a jsonl file; a line torn by a kill mid-write is skipped."""
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return []
    return [row for row in (_json_line(line) for line in text.splitlines()) if row is not None]


def _json_line(line: bytes | str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    skip = {"step", "time", "phase"}
    return {k: v for k, v in row.items()
            if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def short_time(text: Any, *, today: bool = False) -> str:
    """An ISO time as local ``YYYY-MM-DD HH:MM:SS`` (as written when it does not parse);
    with ``today``, a time of today as ``HH:MM:SS``."""
    when = _parse_time(text)
    if when is None:
        return str(text)
    local = datetime.fromtimestamp(when)
    if today and local.date() == datetime.now().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def short_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def short_bytes(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def short_wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def key_metrics(state: StageState, limit: int = 3) -> list[tuple[str, Any]]:
    """The metrics worth a glance: the key metric first, then others, at most ``limit``."""
    metrics = {k: v for k, v in state.metrics.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    order = []
    if state.key_metric in metrics:
        order.append(state.key_metric)
    preferred = ("loss", "eval_loss", "rewards/margins", "rewards/accuracies", "reward")
    order += [k for k in preferred if k in metrics and k not in order]
    order += [k for k in metrics if k not in order and k not in ("steps", "grad_norm", "lr")]
    return [(k, metrics[k]) for k in order[:limit]]


def _finite(node: Any) -> Any:
    """JSON-safe: NaN and infinities (a diverged loss) become None."""
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    return node
