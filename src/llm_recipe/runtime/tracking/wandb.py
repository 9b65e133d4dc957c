"""The Weights & Biases backend (``pip install 'llm-recipe[wandb]'``).

A recipe run is a W&B *group* (``tracking.experiment`` is the project): the parent is
the group's name, passed to launched stages like an MLflow parent run id, and every
stage is one run in it (``job_type``: the stage kind). Params go to the run's config,
tags to its tags as ``key=value``, artifacts as W&B artifacts. Files go under
``<workspace>/wandb/``. ``WANDB_MODE=offline`` works as usual (``wandb sync`` later);
without a login W&B refuses to start online, which the run reports as a tracking
failure and goes on. Code saving, console capture and system metrics are off.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_recipe.runtime.tracking.base import NullTracker, Settings, missing

_ARTIFACT_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def check() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise missing("wandb", "wandb") from None


class WandbGroup(NullTracker):
    """The parent of a recipe run: a group name; it logs nothing itself."""

    def __init__(self, name: str) -> None:
        self.id = f"{name}-{uuid.uuid4().hex[:8]}"


class WandbRun:
    def __init__(self, settings: Settings, name: str, parent: str | None,
                 tags: Mapping[str, str]) -> None:
        check()
        import wandb

        folder = settings.workspace / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        options = wandb.Settings(console="off", save_code=False, disable_code=True,
                                 x_disable_stats=True, silent=True)
        self.run: Any = wandb.init(
            project=settings.experiment, name=name, group=parent,
            job_type=tags.get("kind"), tags=[f"{k}={v}"[:64] for k, v in tags.items()],
            dir=str(settings.workspace), settings=options, reinit="create_new")
        self.id: str = self.run.id
        self.last_step = 0

    def log_params(self, params: Mapping[str, str]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            self.run.summary.update(dict(metrics))
            return
        self.last_step = max(self.last_step, step)  # W&B drops steps that go back
        self.run.log(dict(metrics), step=self.last_step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.run.tags = (*self.run.tags, *(f"{k}={v}"[:64] for k, v in tags.items()))

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        import wandb

        label = _ARTIFACT_NAME.sub("-", f"{self.run.name}-{name or path.name}")
        artifact = wandb.Artifact(label, type=name or "file")
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def open_parent(settings: Settings, name: str, tags: Mapping[str, str]) -> WandbGroup:
    check()
    return WandbGroup(name)


def open_run(settings: Settings, name: str, parent: str | None,
             tags: Mapping[str, str]) -> WandbRun:
    return WandbRun(settings, name, parent, tags)
