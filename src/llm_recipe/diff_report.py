"""``recipe diff`` output: rich text for people, Markdown for a pull request, JSON for tools.

Everything shown comes from one :class:`~llm_recipe.compiler.diff.Diff`, so the three
never disagree. Long values (prompt templates) are cut in the text and Markdown; the
JSON has them whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llm_recipe.compiler.diff import Diff, Rerun, StageSummary

WIDTH = 60
"""Characters of a value shown in text and Markdown."""


def value_text(value: Any, width: int = WIDTH) -> str:
    """A value in a few words: strings as written, numbers and lists as JSON, cut at width."""
    if value is None:
        return "(none)"
    if isinstance(value, str) and value.strip() and "\n" not in value and value == value.strip():
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 1] + "…"


def _title(diff: Diff) -> str:
    profiles = diff.b.get("profiles") or []
    said = f"  (profiles: {', '.join(profiles)})" if profiles else ""
    return f"{diff.a.get('file', 'a')} → {diff.b.get('file', 'b')}{said}"


def _headline(diff: Diff, code: Callable[[str], str]) -> str:
    total = len(diff.rerun) + len(diff.unchanged)
    if not diff.rerun:
        return f"no stage re-runs ({total} unchanged)"
    names = ", ".join(code(r.stage) for r in diff.rerun)
    return f"would re-run {len(diff.rerun)} of {total} stages: {names}"


def _why(diff: Diff, rerun: Rerun, code: Callable[[str], str]) -> str:
    """Why a stage re-runs, names formatted by ``code`` (plain or Markdown code spans)."""
    if rerun.new:
        return "new stage"
    now = {(x.stage, x.field): x.new for x in diff.lineage}
    parts = []
    if rerun.own:
        parts.append(f"own config: {', '.join(code(n) for n in rerun.own)}")
    parts += [f"input {code(f)} now {code(str(now.get((rerun.stage, f))))}"
              for f in rerun.lineage]
    if rerun.inputs:
        parts.append(f"input changed: {', '.join(code(n) for n in rerun.inputs)}")
    if rerun.upstream:
        parts.append(f"upstream: {', '.join(code(n) for n in rerun.upstream)}")
    return "; ".join(parts) or rerun.reasons()[0]


def _rows(diff: Diff) -> list[tuple[str, str, Any, Any]]:
    """(where, key, old, new) for every changed value and lineage edge: stages in plan
    order, then models and datasets, then recipe-wide settings."""
    order = [*diff.order, *(s.name for s in diff.removed)]
    stages = [(c.where, c.path, c.old, c.new) for c in diff.changed]
    stages += [(x.stage, f"{x.field} (input)", x.old, x.new) for x in diff.lineage]
    stages.sort(key=lambda row: order.index(row[0]) if row[0] in order else len(order))
    return [*stages,
            *((c.where, c.path or "(entry)", c.old, c.new) for c in diff.entries),
            *(("recipe", c.path, c.old, c.new) for c in diff.settings)]


def _consumes(stage: StageSummary, code: Callable[[str], str]) -> str:
    """``kind; models: base, sft; data: test`` (list fields such as ``models.0`` grouped)."""
    fields: dict[str, list[str]] = {}
    for name, ref in stage.inputs.items():
        head, _, rest = name.rpartition(".")
        fields.setdefault(head if rest.isdigit() else name, []).append(code(ref))
    said = "; ".join(f"{f}: {', '.join(refs)}" for f, refs in fields.items())
    return stage.kind + (f"; {said}" if said else "")


def print_diff(diff: Diff, console: Console) -> None:
    """The diff for a terminal: what re-runs and why, then every changed value."""
    console.print(f"[bold]{escape(_title(diff))}[/]")
    if diff.empty:
        console.print("no differences: both sides compile to the same stages, configs and "
                      "fingerprints")
        return
    console.print(_headline(diff, str))
    if diff.rerun:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("stage", "why it re-runs"):
            table.add_column(column, overflow="fold")
        for rerun in diff.rerun:
            table.add_row(escape(rerun.stage), escape(_why(diff, rerun, str)))
        console.print(table)
    rows = _rows(diff)
    if rows:
        console.print()
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("where", "key", "old", "new"):
            table.add_column(column, overflow="fold")
        for where, key, old, new in rows:
            table.add_row(escape(where), escape(key), escape(value_text(old)),
                          escape(value_text(new)))
        console.print(table)
    if diff.added or diff.removed:
        console.print()
    for stage in diff.added:
        console.print(f"[green]+ added stage[/] {escape(stage.name)} "
                      f"({escape(_consumes(stage, str))})")
    for stage in diff.removed:
        console.print(f"[red]- removed stage[/] {escape(stage.name)} "
                      f"({escape(_consumes(stage, str))})")
    if diff.unchanged:
        console.print(f"unchanged: {escape(', '.join(diff.unchanged))}")


def _code(text: str) -> str:
    """A Markdown code span that survives backticks and sits in a table cell."""
    text = text.replace("|", "\\|").replace("\n", "⏎")
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_diff(diff: Diff) -> str:
    """The diff as a pull-request comment (GitHub-flavoured Markdown)."""
    profiles = diff.b.get("profiles") or []
    said = f" (profiles: {', '.join(_code(p) for p in profiles)})" if profiles else ""
    lines = [f"### Recipe diff: {_code(str(diff.a.get('file', 'a')))} → "
             f"{_code(str(diff.b.get('file', 'b')))}{said}", ""]
    if diff.empty:
        lines.append("No differences: both sides compile to the same stages, configs and "
                     "fingerprints.")
        return "\n".join(lines) + "\n"
    headline = _headline(diff, _code)
    lines += [f"**{headline[0].upper()}{headline[1:]}**", ""]
    if diff.rerun:
        lines += ["| stage | why it re-runs |", "| --- | --- |"]
        lines += [f"| {_code(r.stage)} | {_why(diff, r, _code)} |" for r in diff.rerun]
        lines.append("")
    rows = _rows(diff)
    if rows:
        lines += ["| where | key | old | new |", "| --- | --- | --- | --- |"]
        lines += [f"| {_code(w)} | {_code(k)} | {_code(value_text(o))} | {_code(value_text(n))} |"
                  for w, k, o, n in rows]
        lines.append("")
    lines += [f"- added stage {_code(s.name)} ({_consumes(s, _code)})" for s in diff.added]
    lines += [f"- removed stage {_code(s.name)} ({_consumes(s, _code)})" for s in diff.removed]
    if diff.added or diff.removed:
        lines.append("")
    if diff.unchanged:
        lines += [f"Unchanged: {', '.join(_code(n) for n in diff.unchanged)}", ""]
    return "\n".join(lines)


def json_diff(diff: Diff) -> str:
    """The ``--json`` document (docs/commands.md), strict JSON."""
    return json.dumps(diff.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
