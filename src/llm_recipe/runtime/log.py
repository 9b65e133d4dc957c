"""A stage's log: ``train.log`` lines, ``metrics.jsonl`` rows and live progress.

``train.log`` uses the ``[train] step=... loss=... lr=... tok/s=...`` lines people
already ``tail -f``; ``metrics.jsonl`` has the same numbers as JSON, one row per log
step. A run header marks each invocation, so a resumed or re-run stage is readable.
Progress goes to an optional sink (the CLI's rich progress bar), never to stage code.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


class ProgressSink(Protocol):
    def start(self, stage: str, total: int | None, description: str) -> None: ...
    def update(self, stage: str, completed: int, fields: dict[str, Any]) -> None: ...
    def finish(self, stage: str) -> None: ...


class StageLog:
    def __init__(self, stage_dir: Path, stage: str, progress: ProgressSink | None = None,
                 *, enabled: bool = True) -> None:
        self.dir = stage_dir
        self.stage = stage
        self.progress = progress
        self.enabled = enabled
        """False on ranks other than 0: one process writes the log."""
        self.started = time.monotonic()
        stage_dir.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        with (self.dir / "train.log").open("a", encoding="utf-8") as handle:
            handle.write(text.rstrip("\n") + "\n")

    def header(self, text: str) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        self.line(f"=== {self.stage}: {text} ({now})")

    def metrics(self, step: int, values: dict[str, Any], *, prefix: str = "train") -> None:
        """One log step: a ``[train] step=...`` line and a metrics.jsonl row."""
        if not self.enabled:
            return
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items() if v is not None)
        self.line(f"[{prefix}] step={step} {shown}")
        row = {"step": step, "phase": prefix, "time": round(time.monotonic() - self.started, 3),
               **values}
        with (self.dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

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


def read_metrics(stage_dir: Path) -> list[dict[str, Any]]:
    path = stage_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
