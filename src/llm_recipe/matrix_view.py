"""Human output of a matrix plan: which stage copy each variant uses, and what is shared.

Read from ``plan.extra["matrix"]`` (compiler/matrix_plan.py), so ``recipe plan`` and
``recipe plan --json`` never disagree. Variants are rows: a matrix has up to 256 of
them and a recipe a handful of stages.
"""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.table import Table

from llm_recipe.compiler.matrix import value_label
from llm_recipe.compiler.plan_types import Plan


def matrix_of(plan: Plan) -> dict[str, Any] | None:
    found = plan.extra.get("matrix") if isinstance(plan.extra, dict) else None
    return found if isinstance(found, dict) else None


def matrix_summary(plan: Plan) -> str | None:
    """One line: how many variants of which axes, how many stages shared."""
    matrix = matrix_of(plan)
    if matrix is None:
        return None
    variants = matrix["variants"]
    axes = "; ".join(f"{a['name']} ({a['path']}): {', '.join(a['values'])}"
                     for a in matrix["axes"])
    copies = matrix["copies"]
    shared = [c for c, info in copies.items() if len(info["variants"]) == len(variants)]
    varied = list(dict.fromkeys(info["stage"] for c, info in copies.items() if c not in shared))
    count = len(copies) - len(shared)
    return "[bold]matrix[/]" + escape(
        f"  {len(variants)} variant{'s' if len(variants) != 1 else ''}"
        + (f" of {axes}" if axes else "")
        + f" · shared: {', '.join(shared) or 'none'}"
        + (f" · varied: {', '.join(varied)} ({count} copies)" if varied else ""))


def matrix_table(plan: Plan) -> Table | None:
    """Variant x stage: ``shared`` (one copy for every variant), ``own`` (this variant's
    alone) or the name of the copy it shares with some variants; and the settings of
    variants whose name does not spell them out."""
    matrix = matrix_of(plan)
    if matrix is None:
        return None
    variants = matrix["variants"]
    copies = matrix["copies"]
    stages = list(variants[0]["stages"]) if variants else []
    named = any(not _spelled(v) for v in variants)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("variant", overflow="fold")
    for stage in stages:
        table.add_column(stage, overflow="fold")
    if named:
        table.add_column("settings", overflow="fold")
    for variant in variants:
        cells = []
        for stage in stages:
            copy = variant["stages"][stage]
            users = copies[copy]["variants"]
            cells.append("[dim]shared[/]" if len(users) == len(variants) else
                         "own" if users == [variant["name"]] else escape(copy))
        settings = [escape(_settings(variant))] if named else []
        table.add_row(escape(variant["name"]), *cells, *settings)
    return table


def _spelled(variant: dict[str, Any]) -> bool:
    """Whether the variant's name is its settings (``lr=1e-5,r=8``), not a given name."""
    return "=" in variant["name"] or not variant["settings"]


def _settings(variant: dict[str, Any]) -> str:
    if not variant["settings"]:
        return "(the recipe as written)"
    return ", ".join(f"{path.removeprefix('stages.')}={_text(value)}"
                     for path, value in variant["settings"].items())


def _text(value: Any) -> str:
    label = value_label(value)
    if label is not None:
        return label
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
