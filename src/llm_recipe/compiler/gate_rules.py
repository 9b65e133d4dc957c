"""Plan-time rules for gates and model registration (the runtime is runtime/gates.py).

- an eval stage's ``gate.metric`` (and ``better_than``) is ``<model>/<metric>`` of a
  model the stage evaluates and a metric it computes (a bare metric when it evaluates
  one model); ``better_than`` may also name just a model (the same metric);
- ``tracking.register.gate`` names a metric its report stage computes, for a model it
  evaluates (``model``, else the registered stage);
- registering a model needs ``tracking.backend: mlflow`` (the model registry).

Checked after the schema has vouched for the fields, with every other error.
"""

from __future__ import annotations

import difflib
from typing import Any

from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError, RecipePath

DEFAULT_METRICS = ("gsm8k_accuracy",)
"""An eval stage's metrics when it names none (the schema's default)."""


def gate_errors(data: dict[str, Any], where: SourceMap) -> list[RecipeError]:
    stages = mapping_at(data, "stages")
    errors: list[RecipeError] = []
    for name, stage in stages.items():
        if isinstance(stage, dict) and isinstance(stage.get("gate"), dict):
            gate, at = stage["gate"], ("stages", name, "gate")
            models = [str(m) for m in stage.get("models") or []]
            only = models[0] if len(models) == 1 else None
            errors += _metric_errors(name, stage, gate["metric"], only, (*at, "metric"), where)
            if "better_than" in gate:
                errors += _better_errors(name, stage, gate["metric"], only,
                                         gate["better_than"], (*at, "better_than"), where)
    tracking = mapping_at(data, "tracking")
    register = tracking.get("register")
    if not isinstance(register, dict):
        return errors
    backend = tracking.get("backend", "none")
    if backend != "mlflow":
        errors.append(where.error(
            ("tracking", "register"),
            f"registering a model needs the MLflow model registry; tracking.backend is {backend}",
            expected="tracking.backend: mlflow",
            hint="set tracking.backend: mlflow (without tracking.uri the registry is a "
                 "sqlite file in the workspace)"))
    gate = register.get("gate")
    report = stages.get(gate.get("report")) if isinstance(gate, dict) else None
    if isinstance(report, dict) and report.get("kind") == "eval":
        at = ("tracking", "register", "gate")
        model = gate.get("model") or register.get("stage")
        errors += _metric_errors(gate["report"], report, gate["metric"], model,
                                 (*at, "model" if "model" in gate else "metric"), where)
        if "better_than" in gate:
            errors += _better_errors(gate["report"], report, gate["metric"], model,
                                     gate["better_than"], (*at, "better_than"), where)
    return errors


def _split(metric: str, model: str | None) -> tuple[str | None, str]:
    if "/" in metric:
        head, tail = metric.split("/", 1)
        return head, tail
    return model, metric


def _metric_errors(name: str, stage: dict[str, Any], metric: str, model: str | None,
                   at: RecipePath, where: SourceMap) -> list[RecipeError]:
    """``metric`` (qualified, or bare with ``model``) must be computed by eval ``name``."""
    models = [str(m) for m in stage.get("models") or []]
    computed = [str(m) for m in stage.get("metrics") or DEFAULT_METRICS]
    owner, bare = _split(str(metric), model)
    examples = ", ".join(f"{m}/{computed[0]}" for m in models[:3])
    if owner is None:
        return [where.error(at, f"which model's {bare}? stage {name} evaluates "
                                f"{len(models)} models", expected=f"<model>/<metric>, e.g. "
                                f"{examples}")]
    errors = []
    if owner not in models:
        close = difflib.get_close_matches(owner, models, n=1)
        errors.append(where.error(
            at, f"stage {name} does not evaluate '{owner}'",
            expected=f"one of its models: {', '.join(models)}",
            hint=f"did you mean '{close[0]}'?" if close else None))
    if bare not in computed:
        errors.append(where.error(
            at, f"stage {name} does not compute {bare}",
            expected=f"one of its metrics: {', '.join(computed)}",
            hint=f"add {bare} to stages.{name}.metrics, or gate on one it computes"))
    return errors


def _better_errors(name: str, stage: dict[str, Any], metric: str, model: str | None,
                   better: str, at: RecipePath, where: SourceMap) -> list[RecipeError]:
    """``better_than``: ``<model>/<metric>``, or a model (the gate's own metric)."""
    _, bare = _split(str(metric), model)
    other = better if "/" in better else f"{better}/{bare}"
    errors = _metric_errors(name, stage, other, None, at, where)
    _, other_bare = _split(other, None)
    if not errors and other_bare != bare:
        errors.append(where.error(at, f"compares {bare} with {other_bare}",
                                  expected=f"the same metric: <model>/{bare}"))
    return errors
