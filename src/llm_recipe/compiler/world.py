"""How many processes a stage starts and how many data-parallel replicas it trains on.

One definition for the launcher section of the plan, the fingerprint (the number of
replicas sets the global batch, so it changes the result) and the estimate.
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
