"""What every tracking backend is: settings, the :class:`Tracker` protocol, the registry.

A backend is one module of this package (``mlflow``, ``wandb``, ``tensorboard``) with
two functions, ``open_parent(settings, name, tags) -> Tracker`` (the run of one ``recipe
run``) and ``open_run(settings, name, parent, tags) -> Tracker`` (one stage's run, nested
under ``parent`` when given), and ``check()``, which raises :class:`TrackingUnavailable`
when the backend's package is not installed. Backends import their library inside
those functions only: importing this package costs nothing.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from llm_recipe.errors import RecipeError

PARENT_ENV = "RECIPE_TRACKING_PARENT"
"""The parent run's id, for a stage that runs in another process (a launched stage)."""

BACKENDS = {
    "mlflow": "llm_recipe.runtime.tracking.mlflow",
    "wandb": "llm_recipe.runtime.tracking.wandb",
    "tensorboard": "llm_recipe.runtime.tracking.tensorboard",
}
"""Backend name -> module; ``none`` is the null tracker."""

EXTRAS = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}
"""Backend name -> the llm-recipe extra that installs it."""

STATUSES = ("FINISHED", "FAILED", "KILLED")
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


class TrackingUnavailable(RecipeError):
    """The backend's package is not installed: a setup error, reported before training."""


class TrackingError(Exception):
    """Tracking cannot go on (server down, variable unset): the run goes on without it."""


class Tracker(Protocol):
    """One run of an experiment tracker: a recipe's parent run or a stage's nested run."""

    id: str

    def log_params(self, params: Mapping[str, str]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        """A file or a folder, under the artifact folder ``name`` (None: at the top)."""
        ...

    def finish(self, status: str) -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        ...


class NullTracker:
    """``backend: none``, a rank other than 0, or tracking that failed: does nothing."""

    id = ""

    def log_params(self, params: Mapping[str, str]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


@dataclass(frozen=True)
class Settings:
    """A stage's tracking section (the recipe's, the stage's merged over it)."""

    backend: str
    experiment: str
    uri: str | None
    """As written in the recipe: may hold ``${env:NAME}``; resolve with :meth:`resolved_uri`."""
    run_name: str | None
    tags: dict[str, str]
    log_artifacts: bool
    workspace: Path
    """``<root>/<workspace>/<recipe>``, absolute: the default local store lives here."""
    register: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.backend != "none"

    @property
    def key(self) -> tuple[str, str | None, str]:
        """Runs with the same key can nest: same backend, store and experiment."""
        return (self.backend, self.uri, self.experiment)

    @property
    def where(self) -> str:
        """The store as written (never a resolved secret), for messages."""
        return self.uri or "the workspace"

    def resolved_uri(self) -> str | None:
        """The URI with ``${env:NAME}`` read from the environment (never logged)."""
        if self.uri is None:
            return None

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if not os.environ.get(name):
                raise TrackingError(f"{name} is not set (tracking.uri is {self.uri})")
            return os.environ[name]

        return _ENV_REF.sub(value, self.uri)


def settings_for(tracking: Mapping[str, Any], stage_tracking: Mapping[str, Any] | None,
                 *, recipe: str, workspace: Path) -> Settings:
    """The recipe's tracking section with a stage's merged over it (tags merge key by key)."""
    merged = {**tracking, **(stage_tracking or {})}
    tags = {**(tracking.get("tags") or {}), **((stage_tracking or {}).get("tags") or {})}
    return Settings(
        backend=str(merged.get("backend") or "none"),
        experiment=str(merged.get("experiment") or recipe),
        uri=merged.get("uri"),
        run_name=merged.get("run_name"),
        tags={str(k): _tag_text(v) for k, v in tags.items()},
        log_artifacts=bool(merged.get("log_artifacts", True)),
        workspace=workspace,
        register=dict(tracking.get("register") or {}),
    )


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def backend(name: str) -> ModuleType:
    """The backend module of ``name`` (``mlflow``, ``wandb``, ``tensorboard``)."""
    if name not in BACKENDS:
        raise RecipeError(f"unknown tracking backend {name!r}",
                          expected=f"one of: none, {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def missing(backend_name: str, package: str) -> TrackingUnavailable:
    """The error a backend raises when its package is not installed."""
    extra = EXTRAS[backend_name]
    return TrackingUnavailable(
        f"tracking.backend is {backend_name}, and {package} is not installed",
        hint=f"pip install 'llm-recipe[{extra}]' (or set tracking.backend: none)")
