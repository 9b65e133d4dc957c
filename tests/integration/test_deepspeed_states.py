"""Model states under ZeRO and FSDP against DeepSpeed's own estimator functions.

``estimate_zero2_model_states_mem_needs`` and ``estimate_zero3_model_states_mem_needs``
return (cpu_mem per node, gpu_mem per GPU) for mixed-precision training. The estimate's
weights + gradients + optimizer (+ ZeRO-3's gathered largest layer, under 'extra') must
equal the GPU figure for stages 2 and 3, with and without offload, over world sizes and
models (a tied 124M, a 7B with a small vocabulary, large-vocabulary ones); stage 1 is the
zero2 figure plus the 16-bit gradients stage 1 does not partition. FSDP is compared to
ZeRO-3: 16 bytes per parameter against 18, and its own gathered units against 4L.

DeepSpeed imports torch, so this lives with the integration tests; the dev extra installs
it (DS_BUILD_OPS=0: the estimator functions need no compiled ops).
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_recipe.compiler.architectures import KNOWN, Architecture
from llm_recipe.compiler.estimate import memory_bytes, model_states, resolve_setup, stage_params

pytestmark = pytest.mark.integration

MODELS = ["gpt2", "llama-2-7b", "llama-3-8b", "qwen2-0.5b"]
WORLDS = [(1, 1), (1, 2), (1, 4), (1, 8), (4, 8)]  # (nodes, GPUs per node)
MIXED = ["bf16-mixed", "fp16-mixed"]
CFG = {"train": {"batch_size": 1, "max_seq_len": 128, "optimizer": "adamw_torch"}}


@pytest.fixture(scope="module")
def ds() -> Any:
    """DeepSpeed's two estimator functions (DS_BUILD_OPS=0 builds are enough)."""
    from deepspeed.runtime.zero import stage3 as zero3
    from deepspeed.runtime.zero import stage_1_and_2 as zero2

    return zero2.estimate_zero2_model_states_mem_needs, zero3.estimate_zero3_model_states_mem_needs


def compute(nodes: int, gpus: int, precision: str, strategy: str, stage: int | None = None,
            offload: str = "none") -> dict[str, Any]:
    dist: dict[str, Any] = {"strategy": strategy, "offload": offload,
                            "activation_checkpointing": True}
    if stage is not None:
        dist["zero_stage"] = stage
    return {"launcher": "accelerate", "nodes": nodes, "gpus_per_node": gpus,
            "precision": precision, "distributed": dist}


def states_on_gpu(arch: Architecture, cmp: dict[str, Any]) -> tuple[float, float]:
    """(weights + gradients + optimizer + extra, offloaded CPU bytes per process) of a full
    sft stage; 'extra' holds only the gathered layers here (no companion model, no cache)."""
    s = resolve_setup("sft", cmp)
    mem = memory_bytes("sft", CFG, arch, s)
    cpu = model_states("sft", CFG, arch, stage_params("sft", CFG, arch), s).cpu
    return mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["extra"], cpu


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize(("nodes", "gpus"), WORLDS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("offload", ["none", "optimizer"])
def test_zero2_and_zero1_match_deepspeeds_zero2_function(ds, name, nodes, gpus, precision,
                                                         offload) -> None:
    zero2, _ = ds
    arch = KNOWN[name]
    p, world = arch.parameter_count(), nodes * gpus
    cpu_mem, gpu_mem = zero2(p, num_gpus_per_node=gpus, num_nodes=nodes,
                             cpu_offload=offload != "none")
    gpu, cpu = states_on_gpu(arch, compute(nodes, gpus, precision, "deepspeed", 2, offload))
    assert gpu == pytest.approx(gpu_mem, abs=2)
    # DeepSpeed's CPU figure is per node, times its additional_buffer_factor 1.5, and at
    # least 4 bytes per parameter per GPU (each process loading the model): per process
    # it is our offloaded states whenever that floor does not bind.
    if offload != "none" and nodes == 1 and world <= 4:
        assert cpu * gpus * 1.5 == pytest.approx(cpu_mem, abs=2)
    # stage 1 keeps the 16-bit gradients whole (the paper's P_os): DeepSpeed's zero2
    # function has them partitioned (or, offloaded, not on the GPU at all)
    one, _ = states_on_gpu(arch, compute(nodes, gpus, precision, "deepspeed", 1, offload))
    unpartitioned = 2 * p if offload != "none" else 2 * p - 2 * p / world
    assert one == pytest.approx(gpu_mem + unpartitioned, abs=2)


@pytest.mark.parametrize("precision", MIXED)
@pytest.mark.parametrize(("nodes", "gpus"), WORLDS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("offload", ["none", "optimizer", "parameters"])
def test_zero3_matches_deepspeeds_zero3_function(ds, name, nodes, gpus, precision,
                                                 offload) -> None:
    _, zero3 = ds
    arch = KNOWN[name]
    p, largest = arch.parameter_count(), arch.largest_layer_parameter_count()
    cpu_mem, gpu_mem, largest_mem = zero3(
        p, largest, num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload != "none",
        cpu_offload_params=offload == "parameters", zero_init=True)
    gpu, cpu = states_on_gpu(arch, compute(nodes, gpus, precision, "deepspeed", 3, offload))
    assert gpu == pytest.approx(gpu_mem, abs=2)
    mem = memory_bytes("sft", CFG, arch, resolve_setup(
        "sft", compute(nodes, gpus, precision, "deepspeed", 3, offload)))
    assert mem["extra"] == largest_mem  # 4 x largest layer: its 16-bit weights and gradient
    if offload != "none":  # accelerate sets zero3_init_flag at stage 3: zero_init=True
        assert cpu * gpus * 1.5 == pytest.approx(cpu_mem, rel=1e-9)


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 2), (1, 8), (4, 8)])
@pytest.mark.parametrize("name", MODELS)
def test_fsdp_mixed_against_zero3(ds, name, nodes, gpus) -> None:
    """FSDP (mixed) shards fp32 weights, fp32 gradients and the moments: 16 bytes per
    parameter over N, where ZeRO-3 counts 18 (it also keeps a 16-bit weight partition).
    Its gathered buffers are its units, not the largest layer: the root unit (embeddings,
    final norm, untied head) with its gradient, and a block computed beside the next one."""
    _, zero3 = ds
    arch = KNOWN[name]
    p, world = arch.parameter_count(), nodes * gpus
    _, zero3_gpu, largest_mem = zero3(p, arch.largest_layer_parameter_count(),
                                      num_gpus_per_node=gpus, num_nodes=nodes,
                                      cpu_offload=False, cpu_offload_params=False)
    mem = memory_bytes("sft", CFG, arch, resolve_setup(
        "sft", compute(nodes, gpus, "bf16-mixed", "fsdp")))
    fsdp_states = mem["weights"] + mem["gradients"] + mem["optimizer"]
    assert fsdp_states == pytest.approx(16 * p / world)
    assert zero3_gpu - largest_mem == pytest.approx(18 * p / world, abs=1)
    assert fsdp_states == pytest.approx((zero3_gpu - largest_mem) * 16 / 18, abs=1)
    root, block = arch.root_parameter_count(), arch.block_parameter_count()
    assert mem["extra"] == 2 * (root + 2 * block) + 2 * (root + block)
    assert mem["extra"] > largest_mem  # the root unit holds at least the embedding
