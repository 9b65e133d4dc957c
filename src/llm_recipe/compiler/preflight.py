"""Can a stage run on this machine? Decided before anything runs.

A recipe written for eight GPUs, planned or run on a laptop, used to show every stage as
"would run" and then fail at the first that needed what the machine lacks, sometimes
after earlier stages had trained for minutes, and a rendered multi-process launch failed
once per process with a torch elastic traceback. This pass compares what each stage asks
for with a :class:`Machine` (what is installed and visible here, probed without
importing torch by :mod:`llm_recipe.runtime.preflight`), so ``recipe plan`` and ``recipe
run --dry-run`` say up front which stages cannot run here, ``recipe run`` refuses before
the first stage starts, and a rendered stage script stops once, with one message.

What the machine must have depends on where the stage's processes start: a local,
accelerate or torchrun stage runs here (GPUs and Python packages here); a docker stage's
processes run in its image (GPUs here, packages in the image: only ``docker`` is needed
here); a slurm stage runs on the cluster's nodes (only ``sbatch`` is needed here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_recipe.compiler.plan_types import Plan, StagePlan

PACKAGES = ("accelerate", "bitsandbytes", "deepspeed", "flash_attn", "vllm")
"""Optional packages a stage may need; probed with importlib.util.find_spec."""
PIP_NAMES = {"flash_attn": "flash-attn"}


@dataclass(frozen=True)
class Machine:
    """What this machine offers a stage."""

    gpus: int
    """CUDA GPUs visible to a process started here (CUDA_VISIBLE_DEVICES applied)."""
    packages: frozenset[str] = field(default_factory=frozenset)
    """Installed packages among :data:`PACKAGES`."""
    commands: frozenset[str] = field(default_factory=frozenset)
    """Commands on PATH among docker and sbatch."""


def gpus_needed(stage: StagePlan) -> int:
    """GPUs a node must show the stage: none without GPUs, one for a single process (it
    uses one), ``gpus_per_node`` when the launcher starts a process per GPU. The same
    rule for this early check and for torch's count when the stage starts."""
    gpus = int(stage.compute.get("gpus_per_node") or 0)
    if gpus == 0:
        return 0
    return 1 if int(stage.launcher.get("processes") or 1) == 1 else gpus


def stage_blockers(stage: StagePlan, machine: Machine, *, inside_job: bool = False
                   ) -> list[str]:
    """Why ``stage`` cannot start on ``machine`` (empty: it can).

    ``inside_job``: the machine is a node of the stage's own slurm allocation (the
    rendered sbatch script checks there), so its GPUs count, not ``sbatch``."""
    launcher = stage.launcher.get("name", "local")
    if launcher == "slurm" and not inside_job:
        return [] if "sbatch" in machine.commands else [
            "its slurm launcher needs sbatch, which is not on this machine's PATH"]
    problems: list[str] = []
    if launcher == "docker" and "docker" not in machine.commands:
        problems.append("its docker launcher needs docker, which is not on PATH")
    if gpus_needed(stage) > machine.gpus:
        problems.append(f"it asks for {stage.compute.get('gpus_per_node')} GPU(s) per node "
                        f"and this machine has {machine.gpus}")
    if launcher == "docker":
        return problems  # the packages are the image's
    for package, why, instead in _packages(stage, launcher):
        if package not in machine.packages:
            problems.append(f"{why} needs the {package} package, which is not installed "
                            f"(pip install {PIP_NAMES.get(package, package)}, or {instead})")
    if stage.compute.get("attn_implementation") == "flash_attention_2" and machine.gpus == 0:
        problems.append("flash_attention_2 needs a CUDA GPU")
    return problems


def _packages(stage: StagePlan, launcher: str) -> list[tuple[str, str, str]]:
    """(package, what needs it, the setting that does without) for the stage."""
    config, compute, name = stage.config, stage.compute, stage.name
    wanted: list[tuple[str, str, str]] = []
    if launcher == "accelerate":
        wanted.append(("accelerate", "the accelerate launcher",
                       f"stages.{name}.compute.launcher: torchrun"))
    adapter = config.get("adapter") or {}
    if isinstance(adapter, dict) and adapter.get("type") == "qlora":
        wanted.append(("bitsandbytes", "a QLoRA adapter", f"stages.{name}.adapter.type: lora"))
    if (config.get("train") or {}).get("optimizer") == "adamw_8bit":
        wanted.append(("bitsandbytes", "the adamw_8bit optimizer",
                       f"stages.{name}.train.optimizer: adamw_torch"))
    if ((compute.get("distributed") or {}).get("strategy") == "deepspeed"
            and int(stage.launcher.get("processes") or 1) > 1):
        wanted.append(("deepspeed", "the deepspeed strategy",
                       f"stages.{name}.compute.distributed.strategy: fsdp"))
    if compute.get("attn_implementation") == "flash_attention_2":
        wanted.append(("flash_attn", "flash_attention_2",
                       f"stages.{name}.compute.attn_implementation: sdpa"))
    if (config.get("generation") or {}).get("backend") == "vllm":
        wanted.append(("vllm", "generation backend vllm",
                       f"stages.{name}.generation.backend: transformers"))
    return wanted


def plan_blockers(plan: Plan, machine: Machine, stages: list[str] | None = None
                  ) -> dict[str, list[str]]:
    """{stage: reasons} for the stages (default: every stage that is not fresh) that
    cannot start on ``machine``."""
    names = stages if stages is not None else [
        s.name for s in plan.stages if s.status.get("state") != "fresh"]
    found = {name: stage_blockers(plan.stage(name), machine) for name in names}
    return {name: reasons for name, reasons in found.items() if reasons}


def describe(blockers: dict[str, list[str]]) -> list[str]:
    """One line per stage that cannot run here."""
    return [f"stage {name} cannot run on this machine: {'; '.join(reasons)}"
            for name, reasons in blockers.items()]


def summary(blockers: dict[str, list[str]]) -> list[str]:
    """Stages that share their reasons on one line (the plan's note)."""
    grouped: dict[str, list[str]] = {}
    for name, reasons in blockers.items():
        grouped.setdefault("; ".join(reasons), []).append(name)
    return [f"cannot run on this machine: {', '.join(names)}: {why}"
            for why, names in grouped.items()]


def refusal(blockers: dict[str, list[str]]) -> tuple[str, str]:
    """(message, hint) of ``recipe run``'s refusal, before any stage starts."""
    first = next(iter(blockers))
    message = "\n  ".join(["cannot run this recipe here:", *describe(blockers)])
    if not any("GPU" in reason for reasons in blockers.values() for reason in reasons):
        return message, "install what is missing, or change the setting named beside it"
    return message, ("use a profile for this machine (-p tiny runs on a CPU), "
                     f"--set stages.{first}.compute.gpus_per_node=0 where no GPU is needed, "
                     "or recipe render -o DIR and run it where the GPUs are")
