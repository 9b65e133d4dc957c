"""Estimates as text: parameter counts, GiB, and the one-cell summary of a stage.

Counts nothing itself; it formats what :func:`estimate_stage` returned for the plan table
(``recipe plan``, report.py), so that every view words sizes and fit the same way.

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from typing import Any


def format_count(n: int | float) -> str:
    """7241732096 -> '7.24B', 41943040 -> '41.9M', 124439808 -> '124M'."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            text = f"{n / div:.3g}"
            return f"{text if 'e' not in text else f'{n / div:.0f}'}{unit}"
    return str(int(n))


def format_gib(gib: float) -> str:
    """18.234 -> '18.2 GiB'."""
    return f"{gib:.1f} GiB"


def summarise(estimate: dict[str, Any]) -> str:
    """One table cell: '7.24B (41.9M trainable) · 18.2 GiB/GPU ok' or '... > 80 GiB'."""
    params = estimate.get("params")
    if params is None:
        return "unknown architecture"
    if params["method"] == "none" and not params["total"]:
        return "CPU only"
    what = {"none": "inference", "full": "full"}.get(params["method"])
    head = f"{format_count(params['total'])} ({what or format_count(params['trainable'])}"
    head += ")" if what else " trainable)"
    mem = (estimate.get("memory_gb") or {}).get("total")
    if mem is None:
        return head
    on_gpu = (estimate.get("setup") or {}).get("gpu", True)
    cell = f"{head} · {format_gib(mem)}{'/GPU' if on_gpu else ' (CPU)'}"
    if estimate.get("fits") is True:
        return cell + " ok"
    if estimate.get("fits") is False:
        return f"{cell} > {estimate['gpu_memory_gb']:g} GiB"
    return cell
