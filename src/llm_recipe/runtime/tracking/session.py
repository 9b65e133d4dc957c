"""Tracking for one ``recipe run``: a parent run, a nested run per stage, the registry.

A :class:`Session` belongs to the process that runs the plan (``run_plan``). It opens
the parent run lazily, when the first stage runs (a fully cached re-run opens none),
and hands launched stages its id through :data:`PARENT_ENV`; a stage run in another
process (``python -m llm_recipe.runtime``) reads it and nests its run under it. Only
rank 0 tracks.

Tracking never stops training. The first failure of a store (server down, variable
unset, disk of the store full) is printed to stderr and written to the stage's
train.log, and that store is not called again by this process; metrics.jsonl has
every row regardless. A backend whose package is missing is a setup error
(:class:`TrackingUnavailable`, a RecipeError) raised before any stage runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.status import read_manifest
from llm_recipe.runtime.tracking.base import (
    PARENT_ENV,
    NullTracker,
    Settings,
    Tracker,
    TrackingUnavailable,
    backend,
    settings_for,
)
from llm_recipe.runtime.tracking.values import (
    Redactor,
    git_tags,
    metric_names,
    numeric,
    stage_params,
    stage_tags,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "chat_template.jinja",
                   "chat_template.json")

Warn = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Session:
    def __init__(self, plan: Plan, root: Path, *, parent_id: str | None = None,
                 nest: bool = True, warn: Warn | None = None) -> None:
        self.plan = plan
        self.root = root
        self.workspace = _absolute(root, plan.workspace)
        self.settings = self.settings_of(None)
        self.redact = Redactor(plan)
        self.warn = warn or _stderr
        self.owner = parent_id is None
        """False in a launched stage's process: the parent belongs to ``recipe run``."""
        self.parent_id = parent_id
        self.nest = nest or parent_id is not None
        """False for a stage run alone (no ``recipe run``, no parent id): no parent run."""
        self.parent: Tracker | None = None
        self.failures: dict[tuple[str, str | None, str], str] = {}

    def settings_of(self, stage: StagePlan | None) -> Settings:
        own = stage.config.get("tracking") if stage is not None else None
        return settings_for(self.plan.tracking, own if isinstance(own, dict) else None,
                            recipe=str(self.plan.recipe["name"]), workspace=self.workspace)

    # -- failures -------------------------------------------------------------------

    def failed(self, settings: Settings) -> str | None:
        return self.failures.get(settings.key)

    def fail(self, settings: Settings, exc: BaseException, log: Any = None) -> None:
        """Record that a store failed; say so on stderr (once) and in the stage's log."""
        first = settings.key not in self.failures
        reason = self.redact(f"{type(exc).__name__}: {exc}".splitlines()[0])[:500]
        self.failures.setdefault(settings.key, reason)
        message = (f"warning: tracking failed ({settings.backend} at {settings.where}): "
                   f"{reason}; the run goes on without it, metrics stay in metrics.jsonl")
        if first:
            self.warn(message)
        if log is not None:
            with contextlib.suppress(OSError):
                log.line(message)

    def call(self, settings: Settings, what: Callable[[], Any], log: Any = None) -> Any:
        """``what()``, or None when tracking fails (recorded; never raised)."""
        if self.failed(settings):
            return None
        try:
            return what()
        except TrackingUnavailable:
            raise
        except Exception as exc:
            self.fail(settings, exc, log)
            return None

    # -- the parent run ----------------------------------------------------------------

    def parent_run(self) -> str | None:
        """The parent run's id, opened on first use (None when tracking is off or failed)."""
        settings = self.settings
        if not settings.enabled or self.failed(settings) or not self.nest:
            return None
        if self.parent_id is not None:
            return self.parent_id
        module = backend(settings.backend)
        module.check()
        name = settings.run_name or str(self.plan.recipe["name"])
        tags = self.redact.mapping({"recipe": self.plan.recipe["name"],
                                    "fingerprint": self.plan.recipe.get("fingerprint"),
                                    **settings.tags, **git_tags(self.plan, self.root)})
        parent = self.call(settings, lambda: module.open_parent(settings, name, tags))
        if parent is None:
            return None
        self.parent, self.parent_id = parent, parent.id
        params = {"recipe": self.plan.recipe["name"], "seed": self.plan.recipe.get("seed"),
                  "profiles": ",".join(self.plan.recipe.get("profiles") or []),
                  "stages": ",".join(s.name for s in self.plan.stages)}
        self.call(settings, lambda: parent.log_params(self.redact.mapping(params)))
        return self.parent_id

    @contextlib.contextmanager
    def exported(self) -> Iterator[None]:
        """The parent's id in the environment while a launched stage runs."""
        parent = self.parent_run()
        before = os.environ.get(PARENT_ENV)
        if parent:
            os.environ[PARENT_ENV] = parent
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = before

    def stage_summary(self, stage: str, metrics: dict[str, Any]) -> None:
        """A stage's final metrics on the parent run, as ``<stage>/<metric>``."""
        parent, settings = self.parent, self.settings
        if parent is None:
            return
        values = {f"{stage}/{k}": v for k, v in numeric(metrics).items()}
        self.call(settings, lambda: parent.log_metrics(values))

    def set_parent_tags(self, tags: dict[str, str]) -> None:
        parent = self.parent
        if parent is not None:
            self.call(self.settings, lambda: parent.set_tags(self.redact.mapping(tags)))

    def close(self, status: str) -> None:
        parent, self.parent = self.parent, None
        if parent is not None and self.owner:
            self.call(self.settings, lambda: parent.finish(status))

    # -- stage runs --------------------------------------------------------------------

    def stage_run(self, stage: StagePlan, log: Any) -> StageRun:
        """The nested run of a stage (a null one when tracking is off)."""
        settings = self.settings_of(stage)
        if not settings.enabled:
            return StageRun(self, stage, settings, None, log)
        if self.failed(settings):
            log.line(f"tracking failed earlier in this run ({settings.backend} at "
                     f"{settings.where}: {self.failed(settings)}); this stage is not tracked, "
                     "its metrics stay in metrics.jsonl")
            return StageRun(self, stage, settings, None, log)
        module = backend(settings.backend)
        module.check()
        parent = self.parent_run() if settings.key == self.settings.key else None
        if self.failed(settings):  # opening the parent failed just now
            log.line(f"tracking failed ({settings.backend} at {settings.where}): "
                     f"{self.failed(settings)}; the run goes on without it, metrics stay in "
                     "metrics.jsonl")
            return StageRun(self, stage, settings, None, log)
        tags = self.redact.mapping({**settings.tags, **stage_tags(self.plan, stage, self.root)})
        tracker = self.call(settings, lambda: module.open_run(settings, stage.name, parent, tags),
                            log)
        run = StageRun(self, stage, settings, tracker, log, parent=parent)
        if tracker is not None:
            params = self.redact.mapping(stage_params(self.plan, stage))
            run.call(lambda: tracker.log_params(params))
            log.line(f"tracking: {settings.backend} run {tracker.id} in {settings.experiment}"
                     + (f" (under {parent})" if parent else ""))
        return run

    # -- the model registry ----------------------------------------------------------

    def register(self) -> dict[str, Any] | None:
        """Register ``tracking.register.stage``'s output when it is complete and its gate
        passed; set the alias. None when the recipe registers nothing."""
        from llm_recipe.runtime import gates

        spec = self.plan.tracking.get("register")
        if not isinstance(spec, dict) or not spec.get("name"):
            return None
        name, alias = str(spec["name"]), spec.get("alias")
        stage = self.plan.stage(str(spec["stage"]))
        out = {"name": name, "stage": stage.name, "alias": alias, "version": None,
               "new": False, "reason": None}
        manifest = read_manifest(_absolute(self.root, stage.dir))
        if manifest is None or manifest.get("fingerprint") != stage.fingerprint:
            return {**out, "reason": f"{stage.name} is not complete"}
        gate = gates.register_gate(self.plan)
        result = None
        if gate is not None:
            result = gates.check(self.plan, self.plan.stage(gate.stage), self.root)
            if result is None:
                return {**out, "reason": f"waits for {gate.stage}"}
            if not result["passed"]:
                return {**out, "reason": f"gate failed: {result['message']}"}
        settings = self.settings
        if settings.backend != "mlflow":
            return {**out, "reason": "the model registry needs tracking.backend: mlflow"}
        if self.failed(settings):
            return {**out, "reason": f"tracking failed ({self.failed(settings)})"}
        from llm_recipe.runtime.tracking import mlflow as backend_mlflow

        backend_mlflow.check()
        reference = manifest.get("tracking") if isinstance(manifest.get("tracking"), dict) else {}
        run_id = reference.get("run_id") if reference.get("backend") == "mlflow" else None
        artifact = reference.get("artifact")
        if run_id and not self.call(settings, lambda: backend_mlflow.run_exists(settings, run_id)):
            run_id = None  # logged to another store
        source = (f"runs:/{run_id}/{artifact}" if run_id and artifact
                  else _absolute(self.root, stage.output.path).as_uri())
        tags = {"recipe": str(self.plan.recipe["name"]), "stage": stage.name,
                **git_tags(self.plan, self.root)}
        if result is not None:
            tags.update({"gate_metric": result["metric"], "gate_value": str(result["value"]),
                         "gate_threshold": str(result["threshold"])})
        done = self.call(settings, lambda: backend_mlflow.register(
            settings, name=name, source=source, run_id=run_id, fingerprint=stage.fingerprint,
            tags=self.redact.mapping(tags), alias=alias))
        if done is None:
            return {**out, "reason": f"tracking failed ({self.failed(settings)})"}
        version, new = done
        return {**out, "version": version, "new": new, "source": source}


class StageRun:
    """A stage's run: what StageLog.metrics feeds, and what the executor completes."""

    def __init__(self, session: Session, stage: StagePlan, settings: Settings,
                 tracker: Tracker | None, log: Any, parent: str | None = None) -> None:
        self.session = session
        self.stage = stage
        self.settings = settings
        self.tracker = tracker
        self.log = log
        self.parent = parent
        self.logged: set[str] = set()
        self.artifact: str | None = None

    @property
    def active(self) -> bool:
        return self.tracker is not None and not self.session.failed(self.settings)

    def call(self, what: Callable[[], Any]) -> Any:
        if not self.active:
            return None
        return self.session.call(self.settings, what, self.log)

    def log_row(self, step: int, prefix: str, values: dict[str, Any]) -> None:
        """One metrics.jsonl row (StageLog.metrics calls this)."""
        tracker = self.tracker
        if tracker is None or not self.active:
            return
        metrics = metric_names(prefix, values)
        if metrics:
            self.logged |= set(metrics)
            self.call(lambda: tracker.log_metrics(metrics, step))

    def reference(self) -> dict[str, Any] | None:
        """What the manifest records of this run (None when nothing was tracked)."""
        if self.tracker is None:
            return None
        artifact = self.stage.output.type if self.settings.log_artifacts else None
        return {"backend": self.settings.backend, "experiment": self.settings.experiment,
                "run_id": self.tracker.id, "parent": self.parent,
                "artifact": artifact if self.stage.output.type in ("model", "adapter", "patch")
                else None}

    def complete(self, metrics: dict[str, Any], directory: Path, output: Path) -> None:
        """Final metrics, artifacts (stage.json, manifest.json, the output, its tokenizer,
        the logs), then end the run as FINISHED."""
        self.session.stage_summary(self.stage.name, metrics)
        tracker = self.tracker
        if tracker is None or not self.active:
            return
        final = {k: v for k, v in numeric(metrics).items() if k not in self.logged}
        if final:
            self.call(lambda: tracker.log_metrics(final))
        manifest = read_manifest(directory) or {}
        gate = manifest.get("gate")
        if isinstance(gate, dict):
            self.call(lambda: tracker.set_tags({"gate": "passed" if gate.get("passed")
                                                else "failed"}))
        if self.settings.log_artifacts:
            self.log_artifacts(tracker, directory, output)
        self.call(lambda: tracker.finish("FINISHED"))

    def log_artifacts(self, tracker: Tracker, directory: Path, output: Path) -> None:
        for name in ("stage.json", "manifest.json"):
            if (directory / name).is_file():
                self.call(lambda name=name: tracker.log_artifact(directory / name))
        kind = self.stage.output.type
        if output.is_dir():
            self.call(lambda: tracker.log_artifact(output, kind))
            for name in TOKENIZER_FILES:
                if (output / name).is_file():
                    self.call(lambda name=name: tracker.log_artifact(output / name, "tokenizer"))
        elif output.is_file():
            self.call(lambda: tracker.log_artifact(output))
        for name in ("train.log", "metrics.jsonl", "eval.jsonl"):
            if (directory / name).is_file():
                self.call(lambda name=name: tracker.log_artifact(directory / name, "logs"))

    def finish(self, status: str) -> None:
        """End the run early: FAILED (the stage raised) or KILLED (interrupted)."""
        tracker = self.tracker
        if tracker is not None and self.active:
            self.call(lambda: tracker.finish(status))


def _absolute(root: Path, path: str) -> Path:
    p = Path(path)
    return (p if p.is_absolute() else root / p).resolve()


NULL_TRACKER = NullTracker()
