"""Live output of ``recipe run``: a progress bar per stage and the final summary table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.status import read_json
from llm_recipe.runtime.executor import StageOutcome

PLAIN_EVERY_S = 10.0
"""Seconds between plain progress lines of a stage that updates per batch."""


class RichProgress:
    """A ProgressSink drawing one bar per stage: step / total, loss, tokens/s, ETA.

    When the console is not a terminal (nohup, CI, ``2> run.log``) a live bar draws
    nothing until it stops, so updates are plain lines instead:
    ``sft: step 20/100 · loss 1.234 · tok_s 5120``. A training row (it has a loss) is a
    line at every log step, as ``train.log`` has it; progress that updates per batch
    (eval, rollout generation) is a line at most every :data:`PLAIN_EVERY_S` seconds and
    at the end, so a log file is not thousands of lines of an eval.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.plain = not console.is_terminal
        self.totals: dict[str, int | None] = {}
        self.printed: dict[str, float] = {}
        """When each stage's last plain line was printed (time.monotonic)."""
        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}

    def start(self, stage: str, total: int | None, description: str) -> None:
        if self.plain:
            self.totals[stage] = total
            self._line(f"{stage}: {description}" + (f", {total} steps" if total else ""))
            return
        if not self.tasks:
            self.progress.start()
        self.tasks[stage] = self.progress.add_task(description, total=total, stage=stage,
                                                   info=description)

    def update(self, stage: str, completed: int, fields: dict[str, Any]) -> None:
        info = " · ".join(f"{k} {_short(v)}" for k, v in fields.items() if v is not None)
        if self.plain:
            if stage in self.totals and info and self._due(stage, completed, fields):
                total = self.totals[stage]  # (a bare update, without fields, only resumes)
                self._line(f"{stage}: step {completed}{f'/{total}' if total else ''} · {info}")
            return
        if stage in self.tasks:
            self.progress.update(self.tasks[stage], completed=completed, info=info)

    def _due(self, stage: str, completed: int, fields: dict[str, Any]) -> bool:
        now = time.monotonic()
        last = self.printed.get(stage)
        due = ("loss" in fields or last is None or completed == self.totals.get(stage)
               or now - last >= PLAIN_EVERY_S)
        if due:
            self.printed[stage] = now
        return due

    def finish(self, stage: str) -> None:
        if stage in self.tasks:
            task = self.progress.tasks[self.tasks[stage]]
            if task.total is not None:
                self.progress.update(self.tasks[stage], completed=task.total)

    def close(self) -> None:
        if self.tasks:
            self.progress.stop()

    def _line(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


DRY_RUN = ("would", "cannot")
"""How a dry run's rows begin: ``would run``, ``would resume``, ``cannot run here``."""
NOT_RUN = (*DRY_RUN, "blocked", "failed")
"""Summary actions of a stage that did not run to the end."""
STYLE = {"ran": "green", "resumed": "green", "skipped": "dim", "failed": "red",
         "cannot run here": "red"}


def summary_table(outcomes: list[StageOutcome]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("stage", "kind", "status", "wall", "memory est/peak", "key metric",
                   "output"):
        table.add_column(column)
    for o in outcomes:
        metric = ""
        if o.metric and o.metric[1] is not None:
            metric = f"{o.metric[0]} {_short(o.metric[1])}"
        status = f"[{STYLE.get(o.action, 'yellow')}]{o.action}[/]"
        if o.reason and o.action != "skipped":
            status += f" ({o.reason})"
        wall = "-" if o.action.startswith(("skipped", *DRY_RUN)) else f"{o.wall_s:.1f}s"
        table.add_row(o.name, o.kind, status, wall, _memory_cell(o.usage), metric, o.output)
    return table


def _memory_cell(usage: dict[str, Any] | None) -> str:
    """'0.81/1.20 GiB' (the plan's estimate per device / the measured peak), 'cpu' marked:
    on the CPU the peak is the process's resident set, Python and libraries included."""
    memory = (usage or {}).get("memory") or {}
    peak = memory.get("peak_gb")
    if not isinstance(peak, int | float):
        return "-"
    estimate = memory.get("estimate_gb")
    cell = f"{estimate:.2f}/{peak:.2f} GiB" if isinstance(estimate, int | float) else (
        f"-/{peak:.2f} GiB")
    return cell + (" (RSS)" if memory.get("device") == "cpu" else "")


def comparison_tables(outcomes: list[StageOutcome], root: Path) -> list[Table]:
    """One table per eval stage of the run: each model's metrics side by side.

    This is the table the seeds end with (base vs SFT vs SFT + DPO accuracy), read
    from the stage's report.json, so a skipped (fresh) eval shows it too.
    """
    tables = []
    for outcome in outcomes:
        if outcome.kind != "eval" or outcome.action.startswith(DRY_RUN):
            continue
        report = read_json(root / outcome.output)
        if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
            continue
        metrics = [m for m in report.get("metrics") or [] if isinstance(m, str)]
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column(f"{outcome.name}: {report.get('data')}, "
                         f"{report.get('examples')} examples")
        for metric in metrics:
            table.add_column(metric, justify="right")
        # The stage's order (base, SFT, DPO), which report.json's "table" keeps.
        rows = report.get("table") if isinstance(report.get("table"), list) else []
        order = [r.get("model") for r in rows if isinstance(r, dict)] or list(report["models"])
        for model in order:
            values = report["models"].get(model)
            if isinstance(values, dict):
                table.add_row(model, *(_metric_cell(metric, values) for metric in metrics))
        tables.append(table)
    return tables


def _metric_cell(metric: str, values: dict[str, Any]) -> str:
    value = values.get(metric)
    if not isinstance(value, int | float):
        return "-"
    if metric in ("gsm8k_accuracy", "exact_match"):
        counts = ""
        if metric == "gsm8k_accuracy" and isinstance(values.get("total"), int):
            counts = f" ({values.get('correct')}/{values['total']})"
        return f"{100 * value:.1f}%{counts}"
    return _short(float(value))


def variant_table(plan: Plan, outcomes: list[StageOutcome], root: Path) -> Table | None:
    """A matrix run's last word: one row per variant, its stages' key metrics side by side.

    Columns are what differs between variants: the final ``loss`` (and ``eval_loss``)
    of each training stage with a copy per variant, and every eval stage's metrics per
    model, models named by stage (``sft``, not ``sft@lr=1e-5``) so the columns line up.
    Read from the outcomes and each eval's report.json, so skipped (fresh) stages count.
    """
    matrix = plan.extra.get("matrix") if isinstance(plan.extra, dict) else None
    if not isinstance(matrix, dict):
        return None
    copies = matrix["copies"]
    variants = matrix["variants"]
    by_name = {o.name: o for o in outcomes if o.kind not in ("push", "register")}
    columns: dict[str, dict[str, str]] = {}  # column -> variant -> cell
    for stage in (variants[0]["stages"] if variants else {}):
        for variant in variants:
            outcome = by_name.get(variant["stages"][stage])
            if outcome is None or outcome.action.startswith(NOT_RUN):
                continue
            if outcome.kind == "eval":
                _report_cells(columns, stage, variant["name"], root / outcome.output, copies)
            elif len({v["stages"][stage] for v in variants}) > 1:
                for key in ("loss", "eval_loss"):
                    if isinstance(outcome.metrics.get(key), int | float):
                        columns.setdefault(f"{stage} {key}", {})[variant["name"]] = _short(
                            float(outcome.metrics[key]))
    if not columns:
        return None
    table = Table(box=None, header_style="bold", pad_edge=False,
                  title=f"matrix: {len(variants)} variants", title_justify="left")
    table.add_column("variant")
    for column in columns:
        table.add_column(column, justify="right")
    for variant in variants:
        table.add_row(variant["name"], *(columns[c].get(variant["name"], "-") for c in columns))
    return table


def _report_cells(columns: dict[str, dict[str, str]], stage: str, variant: str, path: Path,
                  copies: dict[str, Any]) -> None:
    report = read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        return
    metrics = [m for m in report.get("metrics") or [] if isinstance(m, str)]
    for model, values in report["models"].items():
        if not isinstance(values, dict):
            continue
        shown = copies.get(model, {}).get("stage", model)
        for metric in metrics:
            columns.setdefault(f"{stage}: {shown} {metric}", {})[variant] = _metric_cell(
                metric, values)
