"""What this machine offers, probed without importing torch; and the check a rendered
stage script runs before it starts any process.

``python -m llm_recipe.runtime.preflight PLAN.json STAGE [--force]`` exits 0 when the
stage can start here (or is fresh, so the launch will only skip it) and 2 with one
message when it cannot: before ``accelerate launch`` or ``torchrun`` (in a rendered
stage script, or on the first node of a slurm job) start eight processes that would
each fail with the same error and a torch elastic traceback.

GPUs are counted from the NVIDIA driver (``/proc/driver/nvidia/gpus``, else ``nvidia-smi
-L``) and narrowed by ``CUDA_VISIBLE_DEVICES`` as CUDA would. The stage's own check when
it starts (``torch.cuda.device_count()``) stays the authority; this is the early word.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from llm_recipe.compiler.preflight import PACKAGES, Machine, stage_blockers

COMMANDS = ("docker", "sbatch")


def driver_gpus() -> int:
    """NVIDIA GPUs the driver knows (0 without a driver)."""
    folder = Path("/proc/driver/nvidia/gpus")
    if folder.is_dir():
        return sum(1 for _ in folder.iterdir())
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))


def visible_gpus(present: int, visible: str | None) -> int:
    """GPUs a process sees given ``CUDA_VISIBLE_DEVICES`` (None: unset, all of them).

    CUDA reads the list up to the first entry that is not a device (``-1`` hides all)."""
    if visible is None:
        return present
    count = 0
    for entry in visible.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        count += 1
    return min(count, present)


def probe() -> Machine:
    """This machine, as :mod:`llm_recipe.compiler.preflight` sees it."""
    return Machine(
        gpus=visible_gpus(driver_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES")),
        packages=frozenset(p for p in PACKAGES if importlib.util.find_spec(p) is not None),
        commands=frozenset(c for c in COMMANDS if shutil.which(c) is not None))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    positional = [a for a in args if not a.startswith("--")]
    if len(positional) != 2:
        print("usage: python -m llm_recipe.runtime.preflight PLAN.json STAGE [--force]",
              file=sys.stderr)
        return 2
    from llm_recipe.compiler.plan_types import read_plan_stage
    from llm_recipe.compiler.status import FRESH, stage_status

    plan_file, name = positional
    try:
        _, stage = read_plan_stage(plan_file, name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "--force" not in args:
        status = stage_status(Path(stage.dir), stage.fingerprint, stage.config, Path.cwd())
        if status["state"] == FRESH:
            return 0  # the launch only skips it
    problems = stage_blockers(stage, probe(), inside_job="SLURM_JOB_ID" in os.environ)
    if problems:
        print(f"error: stage {name} cannot run on this machine: {'; '.join(problems)}\n"
              "  hint: run it where the GPUs are, or render a profile for this machine "
              "(recipe render FILE -p tiny -o DIR)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
