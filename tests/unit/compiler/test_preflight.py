"""Which stages cannot run on a machine, said before anything runs (compiler/preflight.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.preflight import (
    Machine,
    plan_blockers,
    refusal,
    stage_blockers,
    summary,
)

ROOT = Path(__file__).resolve().parents[3]
EVERYTHING = frozenset({"accelerate", "bitsandbytes", "deepspeed", "flash_attn", "vllm"})
GPU_BOX = Machine(gpus=8, packages=EVERYTHING, commands=frozenset({"docker", "sbatch"}))
LAPTOP = Machine(gpus=0, packages=frozenset({"accelerate"}))


def _stage(write, compute: str, extra: str = "", kind: str = "sft"):
    text = f"""\
recipe: 1
name: pf
models:
  base: {{hub: sshleifer/tiny-gpt2, revision: main}}
datasets:
  math: {{builtin: arithmetic, format: gsm8k, n: 8}}
stages:
  one:
    kind: {kind}
    model: base
    data: math
    compute: {compute}
{extra}"""
    return compile_recipe(write(text)).stage("one")


def test_abel_on_a_laptop_names_every_gpu_stage() -> None:
    plan = compile_recipe(ROOT / "recipes" / "abel.yaml", cwd=ROOT)
    found = plan_blockers(plan, LAPTOP, [s.name for s in plan.stages])
    assert list(found) == ["sft", "rollout", "dpo", "eval"]  # preferences is CPU-only
    assert found["sft"] == ["it asks for 8 GPU(s) per node and this machine has 0"]
    assert summary(found) == [
        "cannot run on this machine: sft, rollout, dpo, eval: it asks for 8 GPU(s) per "
        "node and this machine has 0"]
    message, hint = refusal(found)
    assert message.splitlines()[1].strip().startswith("stage sft cannot run on this machine")
    assert "-p tiny" in hint and "stages.sft.compute.gpus_per_node=0" in hint
    assert plan_blockers(plan, GPU_BOX) == {}


def test_the_tiny_profile_runs_anywhere() -> None:
    plan = compile_recipe(ROOT / "recipes" / "abel.yaml", profiles=["tiny"], cwd=ROOT)
    assert plan_blockers(plan, Machine(gpus=0), [s.name for s in plan.stages]) == {}


def test_one_process_needs_one_gpu_many_need_one_each(write) -> None:
    single = _stage(write, "{gpus_per_node: 4}")
    assert stage_blockers(single, Machine(gpus=1, packages=EVERYTHING)) == []
    many = _stage(write, "{gpus_per_node: 4, launcher: torchrun}")
    assert stage_blockers(many, Machine(gpus=2, packages=EVERYTHING)) == [
        "it asks for 4 GPU(s) per node and this machine has 2"]


@pytest.mark.parametrize(("compute", "extra", "missing", "why"), [
    ("{gpus_per_node: 1}", "    adapter: {type: qlora}\n", "bitsandbytes", "a QLoRA adapter"),
    ("{gpus_per_node: 1}", "    train: {optimizer: adamw_8bit}\n", "bitsandbytes",
     "the adamw_8bit optimizer"),
    ("{gpus_per_node: 1, attn_implementation: flash_attention_2}", "", "flash-attn",
     "flash_attention_2"),
    ("{gpus_per_node: 2, launcher: accelerate, distributed: {strategy: deepspeed, zero_stage: 2}}",
     "",
     "deepspeed", "the deepspeed strategy"),
])
def test_a_missing_package_is_named_with_what_needs_it(write, compute, extra, missing,
                                                      why) -> None:
    stage = _stage(write, compute, extra)
    assert stage_blockers(stage, Machine(gpus=2, packages=EVERYTHING)) == []
    without = Machine(gpus=2, packages=EVERYTHING - {missing.replace("-", "_")})
    [problem] = stage_blockers(stage, without)
    assert problem.startswith(f"{why} needs the {missing.replace('-', '_')} package, which is "
                              f"not installed (pip install {missing}, or stages.one.")


def test_slurm_and_docker_need_their_command_not_the_gpus_here(write) -> None:
    slurm = _stage(write, "{gpus_per_node: 8, launcher: slurm}")
    assert stage_blockers(slurm, Machine(gpus=0, commands=frozenset({"sbatch"}))) == []
    assert stage_blockers(slurm, Machine(gpus=0)) == [
        "its slurm launcher needs sbatch, which is not on this machine's PATH"]
    # inside the job (the sbatch script checks on its first node): the node's GPUs count
    assert stage_blockers(slurm, Machine(gpus=8), inside_job=True) == []
    assert stage_blockers(slurm, Machine(gpus=2), inside_job=True) == [
        "it asks for 8 GPU(s) per node and this machine has 2"]
    docker = _stage(write, "{gpus_per_node: 1, launcher: docker, docker: {image: img}}",
                    "    adapter: {type: qlora}\n")
    # bitsandbytes is the image's business; the GPU is this machine's.
    assert stage_blockers(docker, Machine(gpus=1, commands=frozenset({"docker"}))) == []
    assert stage_blockers(docker, Machine(gpus=0)) == [
        "its docker launcher needs docker, which is not on PATH",
        "it asks for 1 GPU(s) per node and this machine has 0"]
