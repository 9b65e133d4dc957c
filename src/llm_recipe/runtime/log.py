"""A stage's log: ``train.log`` lines, ``metrics.jsonl`` rows and live progress.

``train.log`` uses the ``[train] step=... loss=... lr=... tok/s=...`` lines people
already ``tail -f``; ``metrics.jsonl`` has the same numbers as JSON, one row per log
step. A run header marks each invocation, so a resumed or re-run stage is readable.
Progress goes to an optional sink (the CLI's rich progress bar), never to stage code.

Both files are appended to, and never through a symbolic link: a link planted in the
workspace must not make the runtime write into a file outside it.
"""

from __future__ import annotations

import errno
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.workspace import atomic_write_text


class ProgressSink(Protocol):
    def start(self, stage: str, total: int | None, description: str) -> None: ...
    def update(self, stage: str, completed: int, fields: dict[str, Any]) -> None: ...
    def finish(self, stage: str) -> None: ...


class MetricSink(Protocol):
    def log_row(self, step: int, prefix: str, values: dict[str, Any]) -> None: ...


class RateSink(Protocol):
    def values(self, tokens_per_s: float) -> dict[str, float]: ...


class StageLog:
    def __init__(self, stage_dir: Path, stage: str, progress: ProgressSink | None = None,
                 *, enabled: bool = True) -> None:
        self.dir = stage_dir
        self.stage = stage
        self.progress = progress
        self.enabled = enabled
        """False on ranks other than 0: one process writes the log."""
        self.started = time.monotonic()
        self.tracker: MetricSink | None = None
        """The stage's tracking run (runtime.tracking): fed every row written here."""
        self.throughput: RateSink | None = None
        """Adds tflop/s and mfu to train rows with tok/s (runtime.usage.Throughput)."""
        stage_dir.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        append_text(self.dir / "train.log", text.rstrip("\n") + "\n")

    def header(self, text: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.line(f"=== {self.stage}: {text} ({now})")

    def metrics(self, step: int, values: dict[str, Any], *, prefix: str = "train",
                extra: dict[str, Any] | None = None) -> None:
        """One log step: a ``[train] step=...`` line and a metrics.jsonl row.

        ``extra`` goes into the row only (the line keeps its fixed form).
        """
        if not self.enabled:
            return
        if prefix == "train" and self.throughput is not None:
            values, extra = self._with_throughput(values, extra or {})
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items() if v is not None)
        self.line(f"[{prefix}] step={step} {shown}")
        row = {"step": step, "phase": prefix, "time": round(time.monotonic() - self.started, 3),
               **(extra or {}), **values}
        append_text(self.dir / "metrics.jsonl", json.dumps(row, sort_keys=True) + "\n")
        if self.tracker is not None:  # never raises: a failing tracker is switched off
            self.tracker.log_row(step, prefix, values)

    def _with_throughput(self, values: dict[str, Any], extra: dict[str, Any]
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
        """tflop/s and mfu beside tok/s: in the line, or in the row only where tok/s is
        there (a kind whose line has a fixed form)."""
        assert self.throughput is not None
        for part in (values, extra):
            rate = part.get("tok/s")
            if isinstance(rate, int | float):
                derived = {**part, **self.throughput.values(float(rate))}
                return (derived, extra) if part is values else (values, derived)
        return values, extra

    def start(self, total: int | None, description: str) -> None:
        if self.progress:
            self.progress.start(self.stage, total, description)

    def update(self, completed: int, **fields: Any) -> None:
        if self.progress:
            self.progress.update(self.stage, completed, fields)

    def finish(self) -> None:
        if self.progress:
            self.progress.finish(self.stage)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` to ``path``, refusing to follow a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RecipeError(f"{path} is a symbolic link; the runtime does not write logs "
                              "through links", hint="remove the link and run again") from None
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(text)


def read_metrics(stage_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a line torn by a kill mid-write is skipped."""
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def truncate_metrics(stage_dir: Path, step: int) -> None:
    """Keep the rows up to ``step``: a resumed run logs the later steps again."""
    path = stage_dir / "metrics.jsonl"
    if path.is_symlink() or not path.exists():
        return
    kept = [row for row in read_metrics(stage_dir)
            if not isinstance(row.get("step"), int) or row["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
