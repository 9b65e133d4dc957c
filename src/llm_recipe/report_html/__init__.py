"""``recipe report``: one self-contained HTML page of a recipe's workspace.

The page holds the lineage graph, a table of stages (status, fingerprint, wall time,
key metrics, outputs), a loss curve per training stage, each eval stage's table (base
vs SFT vs DPO) with its gate, and a continual stage's ledger (good / rollback / commit
marks on its loss curve, and the entries as a timeline).

Design choices:

- **Charts: matplotlib, as inline SVG.** A maintained plotting library whose SVG needs
  nothing at view time: no JavaScript, no font or stylesheet to fetch, so the page is
  offline by construction, prints well, and stays small (tens of KB per chart against
  ~4 MB for a page that inlines plotly.js). What it gives up is hover and zoom; a
  training report is read more than explored, and the numbers are in the tables.
  matplotlib is an extra (``pip install 'llm-recipe[report]'``): planning and running
  never need it, and ``recipe report`` names the extra when it is missing.
- **Lineage graph: a pure-Python layered layout** (:mod:`.graph`), drawn as SVG by the
  template: graphviz is not installed everywhere, and a pipeline is a small DAG.
- **Safety**: the template runs with autoescape and StrictUndefined; every recipe or
  workspace string (stage names, phase names, paths, model names) is escaped. The
  only markup inserted unescaped is matplotlib's SVG, whose writer escapes the text it
  holds. A Content-Security-Policy forbids every fetch and every script, so even a
  mistake cannot make the page load anything from a network.

Building the report reads the workspace and writes only the ``-o`` file (through a
temporary beside it, renamed into place). It imports neither torch nor the runtime's
training code.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_recipe import __version__
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.workspace_status import (
    GATE_FAILED,
    StageState,
    gate_text,
    key_metrics,
    short_bytes,
    short_number,
    short_time,
    short_wall,
    workspace_status,
)
from llm_recipe.errors import RecipeError

EXTRA_HINT = "pip install 'llm-recipe[report]'"

CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")


class MissingDependency(RecipeError):
    """The report's plotting library is not installed."""


def require_matplotlib() -> None:
    from llm_recipe.report_html.charts import available

    if not available():
        raise MissingDependency(
            "recipe report draws its charts with matplotlib, which is not installed",
            hint=f"install the report extra: {EXTRA_HINT}")


def build_report(plan: Plan, root: Path, *, generated: datetime | None = None) -> str:
    """The report's HTML for ``plan``'s workspace under ``root``."""
    require_matplotlib()
    from llm_recipe.report_html.charts import render_svg
    from llm_recipe.report_html.collect import eval_tables, training_curves
    from llm_recipe.report_html.graph import lineage_layout

    states = workspace_status(plan, root)
    by_name = {s.name: s for s in states}
    layout = lineage_layout(plan, {s.name: s.state for s in states})
    trainings = []
    for index, stage in enumerate(plan.stages):
        if not by_name[stage.name].trains:
            continue
        training = training_curves(stage, root)
        if training.chart is not None:
            training.svg = render_svg(training.chart, salt=f"{plan.recipe['name']}-{index}")
        trainings.append(training)
    counts: dict[str, int] = {}
    for state in states:
        counts[_label(state)] = counts.get(_label(state), 0) + 1
    when = generated or datetime.now(UTC)
    template = _environment().get_template("report.html.j2")
    return template.render(
        csp=CSP,
        recipe=plan.recipe,
        workspace=plan.workspace,
        version=__version__,
        generated=when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        counts=counts,
        stages=[_row(s) for s in states],
        graph=layout,
        trainings=trainings,
        evals=eval_tables(plan, root, by_name),
        warnings=list(plan.warnings),
    )


def write_report(plan: Plan, root: Path, out: Path) -> int:
    """Write the report to ``out`` atomically; returns its size in bytes."""
    html = build_report(plan, root)
    data = html.encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(data)


def _label(state: StageState) -> str:
    return "gate failed" if state.state == GATE_FAILED else state.state


def _row(state: StageState) -> dict[str, Any]:
    progress = ""
    if state.step is not None:
        progress = (f"step {state.step}/{state.max_steps}"
                    if state.max_steps and state.finished is None else f"{state.step} steps")
    return {
        "name": state.name,
        "kind": state.kind,
        "state": state.state,
        "label": _label(state),
        "reason": state.reason or "",
        "progress": progress,
        "fingerprint": state.fingerprint,
        "wall": short_wall(state.wall_s),
        "finished": short_time(state.finished) if state.finished else "",
        "metrics": [(name, short_number(value)) for name, value in key_metrics(state)],
        "output": state.output["path"],
        "output_type": state.output["type"],
        "size": short_bytes(state.output_bytes),
        "gate": gate_text(state.gate) if state.gate else "",
        "gate_passed": bool(state.gate and state.gate.get("passed")),
    }


def _environment():
    import jinja2

    return jinja2.Environment(
        # Its own folder: llm_recipe/templates/ holds launch scripts, whose lint wants
        # every value quoted for a shell.
        loader=jinja2.PackageLoader("llm_recipe.report_html", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
