"""The plan's stage graph as Mermaid or Graphviz DOT text, for docs and reviews."""

from __future__ import annotations

from llm_recipe.compiler.plan_types import Plan


def edges(plan: Plan) -> list[tuple[str, str, str]]:
    """(source, stage, field) for every input edge; sources may be models or datasets."""
    return [(i.ref, stage.name, i.field) for stage in plan.stages for i in stage.inputs]


def render_dag(plan: Plan, style: str) -> str:
    if style == "mermaid":
        return _mermaid(plan)
    if style == "dot":
        return _dot(plan)
    raise ValueError(f"unknown DAG style {style!r}")


def _label(plan: Plan, name: str) -> str:
    if name in plan.models:
        return f"{name}<br/>model"
    if name in plan.datasets:
        return f"{name}<br/>{plan.datasets[name]['format']}"
    stage = plan.stage(name)
    return f"{name}<br/>{stage.kind} → {stage.output.type}"


def _mermaid(plan: Plan) -> str:
    lines = ["flowchart LR"]
    sources = {src for src, _, _ in edges(plan)}
    for name in [*plan.models, *plan.datasets]:
        if name in sources:
            lines.append(f'  {name}[("{_label(plan, name)}")]')
    for stage in plan.stages:
        lines.append(f'  {stage.name}["{_label(plan, stage.name)}"]')
    for src, dst, field in edges(plan):
        lines.append(f"  {src} -->|{field}| {dst}")
    return "\n".join(lines) + "\n"


def _dot(plan: Plan) -> str:
    lines = [f'digraph "{plan.recipe["name"]}" {{', "  rankdir=LR;"]
    sources = {src for src, _, _ in edges(plan)}
    for name in [*plan.models, *plan.datasets]:
        if name in sources:
            label = _label(plan, name).replace("<br/>", "\\n")
            lines.append(f'  "{name}" [shape=cylinder, label="{label}"];')
    for stage in plan.stages:
        label = _label(plan, stage.name).replace("<br/>", "\\n")
        lines.append(f'  "{stage.name}" [shape=box, label="{label}"];')
    for src, dst, field in edges(plan):
        lines.append(f'  "{src}" -> "{dst}" [label="{field}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
