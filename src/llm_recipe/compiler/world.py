"""How many processes a stage starts, how many data-parallel replicas it trains on, and
which precision mode it runs in.

One definition for the launcher section of the plan, the fingerprint (the number of
replicas sets the global batch, and the mode the numbers, so both change the result),
the estimate and the runtime (runtime/compute.py asks :func:`precision_mode`).
"""

from __future__ import annotations

from typing import Any


def inner_launcher(compute: dict[str, Any]) -> str:
    """The launcher that starts the Python processes (docker wraps another one)."""
    name = compute.get("launcher") or "local"
    if name == "docker":
        return (compute.get("docker") or {}).get("launcher") or "local"
    return name


def processes_per_node(compute: dict[str, Any]) -> int:
    """1 for the local launcher; else processes_per_node, or one per GPU, or 1 on CPU."""
    if inner_launcher(compute) == "local":
        return 1
    explicit = compute.get("processes_per_node")
    return int(explicit) if explicit else max(int(compute.get("gpus_per_node") or 0), 1)


def processes(compute: dict[str, Any]) -> int:
    return processes_per_node(compute) * int(compute.get("nodes") or 1)


def replicas(compute: dict[str, Any]) -> int:
    """Data-parallel replicas: the processes, or a local process's GPUs (DataParallel)."""
    if inner_launcher(compute) == "local":
        return max(int(compute.get("gpus_per_node") or 0), 1)
    return processes(compute)


PRECISION_ALIASES = {"bf16": "bf16-true", "fp16": "fp16-mixed"}
"""The short names the schema kept from before the explicit modes, and what they mean."""


def precision_mode(compute: dict[str, Any], *, gpu: bool | None = None) -> str:
    """The mode a stage runs in: bf16-true, bf16-mixed, fp16-mixed or fp32.

    ``auto`` is bf16-true on GPUs and fp32 on CPU; ``bf16`` is bf16-true and ``fp16``
    fp16-mixed. On CPU fp16-mixed runs in fp32 (there is no fp16 autocast there);
    bf16-true and bf16-mixed are honoured, since bf16 works on CPU. ``gpu`` overrides
    the compute's GPU count (kinds that always run on the CPU).
    """
    on_gpu = int(compute.get("gpus_per_node") or 0) > 0 if gpu is None else gpu
    value = compute.get("precision") or "auto"
    if value == "auto":
        return "bf16-true" if on_gpu else "fp32"
    mode = PRECISION_ALIASES.get(value, value)
    return "fp32" if mode == "fp16-mixed" and not on_gpu else mode
