"""The MLflow backend: runs, nested runs and the model registry, through ``MlflowClient``.

Without ``tracking.uri`` the store is embedded: ``<workspace>/mlflow.db`` (sqlite, with
its model registry) and artifacts under ``<workspace>/mlartifacts/``, from
mlflow-skinny + sqlalchemy + alembic (``pip install 'llm-recipe[mlflow]'``). With a URI
(``http://...``, ``sqlite:///...``, ``databricks``), that store.

The client API is used, never the fluent one (``mlflow.start_run``): no global active
run, no context providers that would add the command line or the environment to a
run's tags, and runs of several stages can be open from one process. A parent run is
tagged ``mlflow.parentRunId`` on its children, which is how the MLflow UI nests them.

An unreachable server must fail fast: unless the user set them, HTTP requests are
retried twice (backoff factor 1) and time out after 20 s (MLflow's defaults retry for
minutes). What is set is the process environment, so launched stages inherit it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_recipe.runtime.tracking.base import Settings, TrackingError, missing

HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
_BATCH = 100
_clients: dict[str, Any] = {}
_experiments: dict[tuple[str, str], str] = {}


def check() -> None:
    try:
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise missing("mlflow", exc.name or "mlflow") from None


def store_uri(settings: Settings) -> str:
    """The tracking URI: the recipe's (``${env:...}`` resolved) or the workspace's sqlite."""
    uri = settings.resolved_uri()
    if uri:
        return uri
    return f"sqlite:///{(settings.workspace / STORE).resolve()}"


def client(settings: Settings) -> Any:
    """An MlflowClient on the settings' store (registry on the same store), one per URI."""
    check()
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = store_uri(settings)
    if uri not in _clients:
        for name in ("mlflow", "alembic", "sqlalchemy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if uri.startswith("sqlite:///") and not settings.uri:
            settings.workspace.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient

        _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return _clients[uri]


def experiment_id(settings: Settings) -> str:
    """The experiment's id, created on first use (artifacts in the workspace when local)."""
    uri = store_uri(settings)
    key = (uri, settings.experiment)
    if key in _experiments:
        return _experiments[key]
    mlflow_client = client(settings)
    found = mlflow_client.get_experiment_by_name(settings.experiment)
    if found is None:
        location = None
        if not settings.uri:
            location = (settings.workspace / ARTIFACTS).resolve().as_uri()
        try:
            _experiments[key] = mlflow_client.create_experiment(settings.experiment,
                                                                artifact_location=location)
        except Exception:  # another process created it first
            found = mlflow_client.get_experiment_by_name(settings.experiment)
            if found is None:
                raise
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {settings.experiment!r} is deleted "
                                "(restore it, or name another tracking.experiment)")
        _experiments[key] = found.experiment_id
    return _experiments[key]


class MlflowRun:
    """One MLflow run, written through the client."""

    def __init__(self, settings: Settings, name: str, parent: str | None,
                 tags: Mapping[str, str]) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        self.client = client(settings)
        all_tags = {**tags, MLFLOW_RUN_NAME: name}
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        run = self.client.create_run(experiment_id(settings), tags=all_tags, run_name=name)
        self.id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], v) for k, v in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.id, params=items[start:start + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.id, metrics=items[start:start + _BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.id, tags=items[start:start + _BATCH])

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.id, str(path), artifact_path=name)
        else:
            self.client.log_artifact(self.id, str(path), artifact_path=name)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.id, status)


def open_parent(settings: Settings, name: str, tags: Mapping[str, str]) -> MlflowRun:
    return MlflowRun(settings, name, None, tags)


def open_run(settings: Settings, name: str, parent: str | None,
             tags: Mapping[str, str]) -> MlflowRun:
    return MlflowRun(settings, name, parent, tags)


def run_exists(settings: Settings, run_id: str) -> bool:
    try:
        client(settings).get_run(run_id)
    except Exception:
        return False
    return True


def register(settings: Settings, *, name: str, source: str, run_id: str | None,
             fingerprint: str, tags: Mapping[str, str], alias: str | None) -> tuple[str, bool]:
    """Register ``source`` as a version of ``name`` once per fingerprint; point ``alias`` at it.

    Returns (version, whether it is new). A version whose ``fingerprint`` tag matches is
    reused, so a cached re-run does not add versions.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(name)
        except MlflowException:  # created by another process meanwhile
            mlflow_client.get_registered_model(name)
    existing = [v for v in mlflow_client.search_model_versions(f"name='{_quote(name)}'")
                if (v.tags or {}).get("fingerprint") == fingerprint]
    if existing:
        version, new = str(max(int(v.version) for v in existing)), False
    else:
        created = mlflow_client.create_model_version(
            name, source=source, run_id=run_id, tags={**tags, "fingerprint": fingerprint})
        version, new = str(created.version), True
    if alias:
        mlflow_client.set_registered_model_alias(name, alias, version)
    return version, new


def _quote(text: str) -> str:
    return text.replace("'", "''")
