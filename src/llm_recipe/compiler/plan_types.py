"""The Plan: plain data, the only contract between the compiler and the runtime.

:func:`llm_recipe.compiler.plan.build_plan` makes one; the runtime, the renderer and
the reports read it. ``Plan.to_json()`` writes strict JSON and ``Plan.from_dict()``
reads it back exactly; :data:`PLAN_FORMAT` is checked on the way in. This module
imports nothing from the compiler, so reading a plan needs none of the passes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PLAN_FORMAT = 1


@dataclass(frozen=True)
class StageInput:
    field: str
    ref: str
    type: str
    fingerprint: str
    format: str | None = None
    base: str | None = None
    producer: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class StageOutput:
    type: str
    path: str
    format: str | None = None
    base: str | None = None


@dataclass(frozen=True)
class StagePlan:
    name: str
    kind: str
    index: int
    dir: str
    config: dict[str, Any]
    compute: dict[str, Any]
    launcher: dict[str, Any]
    inputs: tuple[StageInput, ...]
    upstream: tuple[str, ...]
    output: StageOutput
    fingerprint: str
    status: dict[str, Any]
    estimate: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    recipe: dict[str, Any]
    workspace: str
    models: dict[str, Any]
    datasets: dict[str, Any]
    tracking: dict[str, Any]
    stages: tuple[StagePlan, ...]
    env: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    plan_format: int = PLAN_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """Strict JSON: a NaN or infinity (refused by validation) fails here, never as ``NaN``.

        ``NaN``/``Infinity`` are not JSON; Python writes them by default and strict
        readers (jq, JavaScript, Go) then refuse the whole plan.
        """
        data = self.to_dict()
        try:
            return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        except ValueError:
            raise ValueError(f"plan value at {_non_finite(data)} is not a finite number") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("plan_format") != PLAN_FORMAT:
            raise ValueError(f"unsupported plan format {data.get('plan_format')!r}")
        stages = tuple(
            StagePlan(
                **{
                    **s,
                    "inputs": tuple(StageInput(**i) for i in s["inputs"]),
                    "upstream": tuple(s["upstream"]),
                    "output": StageOutput(**s["output"]),
                }
            )
            for s in data["stages"]
        )
        return cls(
            **{
                **data,
                "stages": stages,
                "env": tuple(data.get("env", ())),
                "warnings": tuple(data.get("warnings", ())),
            }
        )


def _non_finite(node: Any, path: str = "plan") -> str | None:
    """Where a NaN or infinity sits in plan data (for the internal error that names it)."""
    if isinstance(node, float) and not math.isfinite(node):
        return path
    children = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list | tuple) else ()
    for key, value in children:
        found = _non_finite(value, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found:
            return found
    return None


def read_plan_stage(plan_file: str, name: str) -> tuple[Plan, StagePlan]:
    """A written plan.json and one of its stages, for the processes a launch script starts.

    Raises ValueError, naming the file, when the file or the stage cannot be read."""
    try:
        plan = Plan.from_dict(json.loads(Path(plan_file).read_text("utf-8")))
        return plan, plan.stage(name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read stage {name!r} from {plan_file}: {exc}") from exc
