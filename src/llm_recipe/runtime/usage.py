"""What a stage used: peak memory, achieved TFLOP/s and model FLOPs utilisation (MFU).

The plan estimates each stage's memory per device and its model FLOPs per token
(``compiler.estimate``); this module measures the same two things while the stage runs,
so every manifest holds estimate and measurement side by side and the run summary can
show where the estimate was wrong:

- **peak memory**: on a GPU ``torch.cuda.max_memory_allocated`` (what the estimate
  models: tensors, not the CUDA context or the allocator's cache, which is recorded
  beside it as ``max_memory_reserved``), reset when the stage starts; on the CPU the
  process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` so an
  earlier stage in the same process does not count). Under several processes, the
  largest rank's.
- **throughput**: each ``[train]`` row with ``tok/s`` gains ``tflop/s`` (tokens per
  second times the plan's ``flops_per_token``) and, on a GPU in
  ``compiler.estimate.hardware``'s table, ``mfu`` (achieved over the peak of all the
  stage's GPUs). The manifest keeps their mean over the run.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_recipe.compiler.estimate.hardware import peak_tflops
from llm_recipe.compiler.plan import StagePlan
from llm_recipe.runtime import distributed

GIB = 1024**3
RATE_KEYS = ("tok/s", "tflop/s", "mfu")
"""Row values that depend on wall time: a resumed run cannot reproduce them exactly."""


def _on_gpu(stage: StagePlan) -> bool:
    if int(stage.compute.get("gpus_per_node") or 0) == 0:
        return False
    import torch

    return torch.cuda.is_available()


@dataclass
class Throughput:
    """Turns a row's tokens per second into TFLOP/s and MFU, and keeps their mean."""

    flops_per_token: float
    peak_tflops: float | None
    """The peak of all the stage's GPUs together; None on the CPU or an unknown GPU."""
    device: str
    rows: list[tuple[float, float | None]] = field(default_factory=list)

    @classmethod
    def for_stage(cls, stage: StagePlan) -> Throughput | None:
        """None where the plan has no FLOPs per token for the stage (untrained kinds)."""
        per_token = (stage.estimate or {}).get("flops_per_token")
        if not per_token:
            return None
        device, peak = "cpu", None
        if _on_gpu(stage):
            import torch

            device = torch.cuda.get_device_name()
            precision = ((stage.estimate or {}).get("setup") or {}).get("precision", "bf16-true")
            one = peak_tflops(device, precision)
            peak = one * distributed.world_size() if one else None
        return cls(float(per_token), peak, device)

    def values(self, tokens_per_s: float) -> dict[str, float]:
        """{'tflop/s': ..., 'mfu': ...} for one logged row (mfu only on a known GPU)."""
        tflops = tokens_per_s * self.flops_per_token / 1e12
        mfu = tflops / self.peak_tflops if self.peak_tflops else None
        self.rows.append((tflops, mfu))
        out = {"tflop/s": round(tflops, 4)}
        if mfu is not None:
            out["mfu"] = round(mfu, 4)
        return out

    def record(self) -> dict[str, Any]:
        """Mean TFLOP/s and MFU over the rows logged (the first row, which includes
        start-up, is left out when there are others)."""
        rows = self.rows[1:] or self.rows
        out: dict[str, Any] = {"device": self.device, "flops_per_token": self.flops_per_token,
                               "tflops_per_s": None, "mfu": None,
                               "peak_tflops": self.peak_tflops}
        if rows:
            out["tflops_per_s"] = round(sum(r[0] for r in rows) / len(rows), 4)
            mfus = [r[1] for r in rows if r[1] is not None]
            out["mfu"] = round(sum(mfus) / len(mfus), 4) if mfus else None
        return out


class PeakMemory:
    """The stage's peak memory: started before the stage runs, read after it."""

    def __init__(self, stage: StagePlan) -> None:
        self.gpu = _on_gpu(stage)
        if self.gpu:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()

    def record(self, estimate_gb: float | None) -> dict[str, Any]:
        """{device, measure, peak_gb, estimate_gb, ratio}: the largest rank's peak."""
        if self.gpu:
            import torch

            peak = distributed.maximum(torch.cuda.max_memory_allocated())
            reserved = distributed.maximum(torch.cuda.max_memory_reserved())
            out: dict[str, Any] = {"device": "cuda", "measure": "max_memory_allocated",
                                   "peak_gb": round(peak / GIB, 3),
                                   "reserved_gb": round(reserved / GIB, 3)}
        else:
            peak = distributed.maximum(peak_rss_bytes())
            out = {"device": "cpu", "measure": "peak RSS", "peak_gb": round(peak / GIB, 3)}
        out["estimate_gb"] = estimate_gb
        out["ratio"] = round(estimate_gb / out["peak_gb"], 3) if (
            estimate_gb and out["peak_gb"]) else None
        return out


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux >= 4.0); elsewhere the lifetime peak stays."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """Peak resident set of this process since start or the last reset."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if os.uname().sysname == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def stage_usage(stage: StagePlan, peak: PeakMemory, throughput: Throughput | None
                ) -> dict[str, Any]:
    """The manifest's ``usage``: {memory, compute}; every rank must call it."""
    estimate = ((stage.estimate or {}).get("memory_gb") or {}).get("total")
    return {"memory": peak.record(estimate),
            "compute": throughput.record() if throughput is not None else None}


def describe(used: dict[str, Any]) -> str:
    """One train.log line: 'peak memory 1.23 GiB (peak RSS; estimate 0.80 GiB) ...'."""
    memory = used["memory"]
    text = f"peak memory {memory['peak_gb']:.2f} GiB ({memory['measure']}"
    if memory.get("estimate_gb") is not None:
        text += f"; estimate {memory['estimate_gb']:.2f} GiB"
    text += ")"
    compute = used.get("compute") or {}
    if compute.get("tflops_per_s") is not None:
        text += f", {compute['tflops_per_s']:.3g} TFLOP/s"
        if compute.get("mfu") is not None:
            text += f", MFU {100 * compute['mfu']:.1f}% of {compute['device']}"
    return text


class TokenRate:
    """Tokens per second between two log rows, for the loops the runtime writes itself
    (PPO, continual); the HF trainers' rows get theirs from ``num_input_tokens_seen``."""

    def __init__(self) -> None:
        self.tokens = 0
        self.since = time.monotonic()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> int:
        """The rate since the last take (or creation), and start counting again."""
        now = time.monotonic()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.tokens, self.since = 0, now
        return round(rate)
