"""What the report shows, read from the workspace: curves, ledger, eval tables.

Plain data for the template; nothing here draws or writes. Every file is read
defensively (a torn line, a missing field or a value of the wrong type is skipped),
since a report is often made while a stage is still writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan_types import Plan, StagePlan
from llm_recipe.compiler.status import read_json
from llm_recipe.compiler.workspace_status import StageState, gate_text, read_rows, stage_path
from llm_recipe.report_html.charts import Chart, Mark, Series

LEDGER_INDEX = ("ledger", "index.jsonl")
LEDGER_TYPES = ("start", "good", "rollback", "commit")
SKIP_KEYS = {"step", "time", "phase", "phase_idx", "epoch"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _step(row: dict[str, Any]) -> int | None:
    step = row.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


@dataclass
class LedgerEntry:
    step: int | None
    type: str
    phase: str
    name: str
    metrics: str


@dataclass
class Training:
    """One training stage's curves (``chart`` is None when nothing was logged yet)."""

    stage: str
    kind: str
    chart: Chart | None
    last: dict[str, str] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    svg: str = ""


@dataclass
class EvalTable:
    stage: str
    title: str
    metrics: list[str]
    rows: list[dict[str, Any]]
    """{model, cells: [{text, fraction}]}: fraction (0..1) draws a bar for accuracies."""
    gate: dict[str, Any] | None = None

    @property
    def gate_passed(self) -> bool:
        return bool(self.gate and self.gate.get("passed") is True)

    @property
    def gate_text(self) -> str:
        return gate_text(self.gate) if self.gate else ""


def _loss_key(rows: list[dict[str, Any]]) -> str | None:
    keys = {k for r in rows for k, v in r.items() if _number(v) is not None} - SKIP_KEYS
    if "loss" in keys:
        return "loss"
    losses = sorted(k for k in keys if "loss" in k)  # ppo: policy_loss, value_loss
    if losses:
        return losses[0]
    return "reward" if "reward" in keys else None


def _series(rows: list[dict[str, Any]], key: str, label: str, kind: str) -> Series | None:
    points: dict[int, float] = {}
    for row in rows:
        step, value = _step(row), _number(row.get(key))
        if step is not None and value is not None:
            points[step] = value  # a repeated step: the later row wins
    if not points:
        return None
    steps = sorted(points)
    return Series(label, kind, [float(s) for s in steps], [points[s] for s in steps])


def training_curves(stage: StagePlan, root: Path) -> Training:
    directory = stage_path(root, stage.dir)
    rows = read_rows(directory / "metrics.jsonl")
    train = [r for r in rows if r.get("phase", "train") == "train"]
    evals = [r for r in rows if r.get("phase") == "eval"]
    probes = [r for r in rows if r.get("phase") == "probe"]
    key = _loss_key(train)
    series: list[Series] = []
    if key:
        found = _series(train, key, f"train {key}", "train")
        if found:
            series.append(found)
        found = _series(evals, key, f"eval {key}", "eval")
        if found:
            series.append(found)
    probe_keys = sorted({k for r in probes for k, v in r.items()
                         if _number(v) is not None} - SKIP_KEYS)
    for name in probe_keys:
        found = _series(probes, name, f"probe {name}", "probe")
        if found:
            series.append(found)
    ledger = read_ledger(directory)
    marks = [Mark(float(e.step), e.type) for e in ledger if e.step is not None]
    chart = Chart(series, marks, _phases(train), ylabel=key or "loss") if series else None
    last = {k: _shown(v) for k, v in ((k, _number(v)) for k, v in
                                      (train[-1] if train else {}).items())
            if v is not None and k not in SKIP_KEYS}
    counts = {t: sum(1 for e in ledger if e.type == t) for t in LEDGER_TYPES}
    return Training(stage.name, stage.kind, chart, last, ledger,
                    {t: n for t, n in counts.items() if n})


def _phases(rows: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """Spans of a continual stage's phases (rows name theirs in ``continual_phase``)."""
    spans: list[tuple[float, float, str]] = []
    for row in rows:
        name, step = row.get("continual_phase"), _step(row)
        if not isinstance(name, str) or step is None:
            continue
        if spans and spans[-1][2] == name:
            spans[-1] = (spans[-1][0], float(step), name)
        else:
            start = spans[-1][1] if spans else 0.0
            spans.append((start, float(step), name))
    return spans if len(spans) > 1 or any(s[2] for s in spans) else []


def read_ledger(directory: Path) -> list[LedgerEntry]:
    entries = []
    for row in read_rows(directory.joinpath(*LEDGER_INDEX)):
        kind = row.get("type")
        if kind not in LEDGER_TYPES:
            continue
        metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else {}
        shown = ", ".join(f"{k} {_short(v)}" for k, v in metrics.items()
                          if _number(v) is not None)
        phase = row.get("phase")
        entries.append(LedgerEntry(_step(row), kind, phase if isinstance(phase, str) else "",
                                   str(row.get("name", "")), shown))
    return entries


def _shown(value: float) -> str:
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


PERCENT = {"gsm8k_accuracy", "exact_match", "accuracy", "acc"}


def eval_tables(plan: Plan, root: Path, states: dict[str, StageState]) -> list[EvalTable]:
    tables = []
    for stage in plan.stages:
        if stage.kind != "eval":
            continue
        report = read_json(stage_path(root, stage.output.path))
        state = states.get(stage.name)
        gate = state.gate if state else None
        if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
            if gate:
                tables.append(EvalTable(stage.name, "", [], [], gate))
            continue
        metrics = [m for m in report.get("metrics") or [] if isinstance(m, str)]
        ordered = report.get("table") if isinstance(report.get("table"), list) else []
        names = [r.get("model") for r in ordered if isinstance(r, dict)
                 and isinstance(r.get("model"), str)] or list(report["models"])
        rows = []
        for model in names:
            values = report["models"].get(model)
            if isinstance(values, dict):
                rows.append({"model": model, "cells": [_cell(m, values) for m in metrics]})
        examples = report.get("examples")
        data = report.get("data")
        title = ", ".join(str(x) for x in (
            data, f"{examples} examples" if examples is not None else None) if x is not None)
        tables.append(EvalTable(stage.name, title, metrics, rows, gate))
    return tables


def _cell(metric: str, values: dict[str, Any]) -> dict[str, Any]:
    value = _number(values.get(metric))
    if value is None:
        return {"text": "-", "fraction": None}
    if metric in PERCENT or metric.endswith("accuracy"):
        counts = ""
        correct, total = values.get("correct"), values.get("total")
        if isinstance(correct, int) and isinstance(total, int) and metric == "gsm8k_accuracy":
            counts = f" ({correct}/{total})"
        return {"text": f"{100 * value:.1f}%{counts}", "fraction": min(max(value, 0.0), 1.0)}
    return {"text": _short(value), "fraction": None}
