"""The TensorBoard backend: event files a ``tensorboard --logdir`` shows.

``torch.utils.tensorboard`` (needs the ``tensorboard`` package: ``pip install
'llm-recipe[tensorboard]'``), else ``tensorboardX``. The log folder is ``tracking.uri``
when given (a path), else ``<workspace>/tensorboard``; a recipe run is a folder
``<recipe>-<time>-<id>`` in it (the parent id) and every stage a subfolder, so
TensorBoard lists the stages of a run side by side. Params and tags are a text summary
(``params``, ``tags``); artifacts are not copied (they stay in the workspace).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_recipe.runtime.tracking.base import NullTracker, Settings, missing


def writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise missing("tensorboard", "tensorboard (or tensorboardX)") from None
    return SummaryWriter


def check() -> None:
    writer_class()


def log_root(settings: Settings) -> Path:
    uri = settings.resolved_uri()
    if uri:
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        return path if path.is_absolute() else Path.cwd() / path
    return settings.workspace / "tensorboard"


class TensorboardParent(NullTracker):
    """The folder of one recipe run; it logs nothing itself."""

    def __init__(self, settings: Settings, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.id = f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


class TensorboardRun:
    def __init__(self, settings: Settings, name: str, parent: str | None,
                 tags: Mapping[str, str]) -> None:
        folder = log_root(settings) / (parent or f"{name}-{uuid.uuid4().hex[:6]}") / name
        self.dir = folder
        self.id = str(folder)
        self.writer = writer_class()(log_dir=str(folder))
        self.set_tags(tags)

    def log_params(self, params: Mapping[str, str]) -> None:
        self.writer.add_text("params", _table(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step or 0)
        self.writer.flush()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            self.writer.add_text("tags", _table(tags))

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        pass

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()


def _table(values: Mapping[str, str]) -> str:
    rows = "\n".join(f"| {k} | {str(v).replace('|', '/')} |" for k, v in sorted(values.items()))
    return f"| key | value |\n| --- | --- |\n{rows}"


def open_parent(settings: Settings, name: str, tags: Mapping[str, str]) -> TensorboardParent:
    check()
    return TensorboardParent(settings, name)


def open_run(settings: Settings, name: str, parent: str | None,
             tags: Mapping[str, str]) -> TensorboardRun:
    return TensorboardRun(settings, name, parent, tags)
