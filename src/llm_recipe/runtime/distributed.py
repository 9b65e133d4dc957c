"""Running one stage in several processes (torchrun, accelerate): who does what.

Every rank trains; only rank 0 touches the workspace (lock, stage.json, outputs,
manifest, logs). The ranks must agree on resume-or-restart before rank 0 cleans
anything, so the process group is started early (the HF Trainer and accelerate reuse
it) and barriers separate the phases. This is torch.distributed, not a runtime of ours.
"""

from __future__ import annotations

import os
from datetime import timedelta


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def die_with_launcher() -> None:
    """A worker started by torchrun (or accelerate, which runs torchrun's agent) ends when
    its agent ends.

    The elastic agent starts each worker in a session of its own, so a ``kill -9`` of
    ``recipe run`` and the agent (an OOM kill, a scheduler's kill of the job's process
    group) left the workers training as orphans: holding the stage's lock, racing the
    next run. Linux's parent-death signal ends them instead; the next run then resumes
    from the last complete checkpoint. A no-op outside an elastic launch or off Linux.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or os.uname().sysname != "Linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the agent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def start(gpu: bool) -> None:
    """Join the process group the launcher set up (MASTER_ADDR, RANK, WORLD_SIZE...)."""
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if gpu and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def barrier() -> None:
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def agree(value: object) -> object:
    """Rank 0's value of ``value`` on every rank (so all ranks take the same decision)."""
    if world_size() <= 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def maximum(value: int) -> int:
    """The largest ``value`` over the ranks (every rank must call it)."""
    if world_size() <= 1:
        return value
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    found: list[object] = [None] * world_size()
    dist.all_gather_object(found, value)
    return max(int(v) for v in found if isinstance(v, int))
