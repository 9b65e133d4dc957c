"""Gates: a metric an eval stage computed must pass before anything after it goes on.

Two places declare them, both checked at plan time (compiler/gate_rules.py):

- on an eval stage, ``gate: {metric: sft/exact_match, min: 0.7}`` (``max:``, or
  ``better_than: base/exact_match``: strictly better, where lower is better for
  perplexity and losses); the metric is ``<model>/<metric>`` of a model the stage
  evaluates and a metric it computes;
- ``tracking.register.gate: {report: EVAL, model: M, metric: m, min: x}``: the same
  check, on the report stage, and the condition for registering the model.

A gate is judged from the eval stage's manifest metrics whenever the stage is complete
(ran now or fresh), so a changed threshold needs no re-evaluation. The result is
written into the stage's manifest as ``gate: {passed, metric, value, threshold, ...}``
(``recipe status`` shows "gate failed"). The stage itself stays complete and cached; the
stages that depend on it do not run, and ``recipe run`` exits with
:data:`EXIT_GATE` (3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.status import read_manifest
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.workspace import write_manifest

EXIT_GATE = 3
LOWER_IS_BETTER = frozenset({"perplexity", "nll", "loss", "eval_loss"})


@dataclass(frozen=True)
class Gate:
    stage: str
    """The eval stage whose metrics are judged."""
    metric: str
    """``<model>/<metric>``, a key of the eval stage's metrics."""
    min: float | None = None
    max: float | None = None
    better_than: str | None = None
    source: str = ""
    """Where the recipe declares it (``stages.<eval>.gate``, ``tracking.register.gate``)."""

    def judge(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``{passed, metric, value, threshold, op, than, source, message}``."""
        value = _number(metrics.get(self.metric))
        checks: list[tuple[str, float | None, bool]] = []
        if self.min is not None:
            checks.append((">=", self.min, value is not None and value >= self.min))
        if self.max is not None:
            checks.append(("<=", self.max, value is not None and value <= self.max))
        if self.better_than is not None:
            other = _number(metrics.get(self.better_than))
            lower = self.metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER
            ok = value is not None and other is not None and (
                value < other if lower else value > other)
            checks.append(("<" if lower else ">", other, ok))
        failing = [c for c in checks if not c[2]]
        op, threshold, _ = (failing or checks)[0]
        shown = "missing" if value is None else f"{value:.4g}"
        than = f" ({self.better_than})" if op in ("<", ">") else ""
        limit = "missing" if threshold is None else f"{threshold:.4g}"
        message = f"{self.metric} = {shown}, needs {op} {limit}{than}"
        return {"passed": not failing, "metric": self.metric, "value": value,
                "threshold": threshold, "op": op, "than": self.better_than if than else None,
                "source": self.source, "message": message}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _qualified(metric: str, model: str | None) -> str:
    return metric if "/" in metric or model is None else f"{model}/{metric}"


def stage_gate(stage: StagePlan) -> Gate | None:
    """The ``gate:`` an eval stage declares."""
    spec = stage.config.get("gate")
    if not isinstance(spec, dict):
        return None
    models = stage.config.get("models") or []
    only = str(models[0]) if len(models) == 1 else None  # one model: "exact_match" is enough
    metric = _qualified(str(spec["metric"]), only)
    better = spec.get("better_than")
    if better is not None and "/" not in str(better):
        better = f"{better}/{metric.split('/', 1)[-1]}"
    return Gate(stage.name, metric, _float(spec.get("min")), _float(spec.get("max")),
                better, f"stages.{stage.name}.gate")


def register_gate(plan: Plan) -> Gate | None:
    """``tracking.register.gate`` as a gate on its report stage."""
    register = plan.tracking.get("register") or {}
    spec = register.get("gate")
    if not isinstance(spec, dict):
        return None
    metric = _qualified(str(spec["metric"]), spec.get("model") or register.get("stage"))
    better = spec.get("better_than")
    if better is not None and "/" not in str(better):  # a model: the same metric of it
        better = f"{better}/{metric.split('/', 1)[-1]}"
    return Gate(str(spec["report"]), metric, _float(spec.get("min")), _float(spec.get("max")),
                better, "tracking.register.gate")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def gates_of(plan: Plan, stage: StagePlan) -> list[Gate]:
    """Every gate judged on ``stage``'s metrics."""
    found = [g for g in (stage_gate(stage), register_gate(plan)) if g is not None]
    return [g for g in found if g.stage == stage.name]


def record(plan: Plan, stage: StagePlan, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``gate`` entry: the first failing check (else the first), and all."""
    checks = [g.judge(metrics) for g in gates_of(plan, stage)]
    if not checks:
        return None
    failing = [c for c in checks if not c["passed"]]
    return {**(failing or checks)[0], "passed": not failing, "checks": checks}


def check(plan: Plan, stage: StagePlan, root: Path, *, write: bool = True
          ) -> dict[str, Any] | None:
    """The gate of a complete stage, judged now; None when it has none or is not complete.

    When the judgement differs from the manifest's (the recipe's threshold changed; a
    gate is not part of the fingerprint), the manifest is rewritten with it (``write``).
    """
    if not gates_of(plan, stage):
        return None
    directory = _stage_dir(root, stage)
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("fingerprint") != stage.fingerprint:
        return None
    result = record(plan, stage, manifest.get("metrics") or {})
    if write and manifest.get("gate") != result:
        write_manifest(directory, {**manifest, "gate": result})
    return result


def _stage_dir(root: Path, stage: StagePlan) -> Path:
    path = Path(stage.dir)
    return path if path.is_absolute() else root / path


class GateFailed(RecipeError):
    """A gate did not pass: its downstream stages did not run (exit code 3)."""

    exit_code = EXIT_GATE


def failure(stage: str, result: dict[str, Any], stopped: list[str],
            unregistered: str | None = None) -> GateFailed:
    after = []
    if stopped:
        after.append(f"not run: {', '.join(stopped)}")
    if unregistered:
        after.append(f"{unregistered} not registered")
    tail = f"; {'; '.join(after)}" if after else ""
    return GateFailed(
        f"gate failed in stage {stage}: {result['message']}{tail}",
        hint=f"{stage} and the stages before it are complete and cached; improve the model "
             f"or change the gate ({result['source']}) and run again")


def refuse_if_gated(plan: Plan, stage: StagePlan, root: Path) -> None:
    """Refuse to run a stage whose upstream gate failed (a rendered script runs it alone).

    Every rank of a multi-process stage judges (and refuses) alike; none writes.
    """
    for name in stage.upstream:
        result = check(plan, plan.stage(name), root, write=False)
        if result is not None and not result["passed"]:
            raise failure(name, result, [stage.name])
