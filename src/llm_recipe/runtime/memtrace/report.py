"""Traces as text: per stage, the traced components beside the plan's, and the ratio.

GiB per device, or MiB when a stage's peak and total are both under 1 GiB (a tiny
profile would otherwise print a column of 0.00). The plan's memory_gb is rounded to
0.01 GiB, so its MiB figures are coarse and small components' ratios are noisy.

Only formats what :mod:`.stages` measured (no torch), so ``recipe plan --trace`` and its
JSON never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_recipe.runtime.memtrace.stages import ALLOWANCES, StageTrace

ROWS = (
    ("weights", "weights", "weights"),
    ("gradients", "gradients", "gradients"),
    ("optimizer states", "optimizer", "optimizer"),
    ("optimizer step temporaries", "step_temporaries", "optimizer_step"),
    ("activations (working set)", "activation_working_set", "activations"),
    ("  saved for the backward", "activations", None),
    ("  backward temporaries", "backward_temporaries", None),
    ("extra (not traced)", None, "extra"),
)
"""(label, traced key, plan key): the table's rows; None where one side has no figure."""


def _size(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_trace(trace: StageTrace) -> str:
    """One stage: a header line and, when traced, its table and notes."""
    if trace.status != "traced":
        lines = [f"{trace.status} {trace.stage} ({trace.kind}): {trace.reason}"]
        lines += [f"  note: {note}" for note in trace.notes]
        return "\n".join(lines)
    lines = [f"trace {trace.stage} ({trace.kind}): {trace.what}  [{trace.seconds:.1f} s]"]
    plan = trace.plan_gb or {}
    total = trace.traced_gb["peak"] + float(plan.get("extra") or 0.0)
    unit, scale = ("GiB", 1.0) if max(total, plan.get("total") or 0.0) >= 1 else ("MiB", 1024.0)
    width = 30
    lines.append(f"  {unit + ' per device':<{width}}{'traced':>9}{'plan':>9}{'traced/plan':>13}")
    for label, traced_key, plan_key in ROWS:
        traced = trace.traced_gb.get(traced_key) if traced_key else None
        planned = plan.get(plan_key) if plan_key else None
        ratio = trace.ratio.get(plan_key) if plan_key else None
        lines.append(f"  {label:<{width}}{_size(traced, scale):>9}{_size(planned, scale):>9}"
                     f"{_ratio(ratio):>13}")
    label = "peak + plan extra / total" if plan.get("extra") else "peak / total"
    lines.append(f"  {label:<{width}}{_size(total, scale):>9}"
                 f"{_size(plan.get('total'), scale):>9}{_ratio(trace.ratio.get('total')):>13}")
    if trace.measured is not None:
        lines.append(f"  peak reached in the {trace.measured.peak_phase}")
    lines += [f"  note: {note}" for note in trace.notes]
    return "\n".join(lines)


def format_traces(traces: Sequence[StageTrace]) -> str:
    """Every stage, then (once) what a trace cannot see."""
    body = "\n".join(format_trace(t) for t in traces)
    if any(t.status == "traced" for t in traces):
        body += ("\nnot seen by a trace of tensors (add to the peak):\n"
                 + "\n".join(f"  - {a}" for a in ALLOWANCES))
    return body + "\n"
