"""The compute section resolved for an estimate: devices, processes, precision, sharding.

Every count in this package depends on what 'auto' means for a stage: how many processes
share the work, whether a GPU is there, the precision mode, the distributed strategy and
its ZeRO stage, offload, activation checkpointing and the attention implementation.
Resolving that once, here, keeps memory, FLOPs and suggestions agreeing on the same setup.
The stage kinds are grouped here too (trained, generating, CPU-only), since every count
branches on them.

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler import world

GIB = 1024**3
TRAIN_KINDS = frozenset({"pretrain", "sft", "reward_model", "dpo", "grpo", "ppo",
                         "continual"})
GENERATE_KINDS = frozenset({"rollout", "eval"})
CPU_KINDS = frozenset({"preferences"})
MIXED_MODES = frozenset({"bf16-mixed", "fp16-mixed"})
DEFAULT_ZERO_STAGE = 2  # accelerate's DeepSpeed default when zero_stage is not set
RESERVE_GIB = 1.0
"""What a GPU holds besides the tensors the estimate counts (its 'total' is what
torch.cuda.max_memory_allocated reports): the CUDA context and the cuBLAS/cuDNN
workspaces, about 0.5-1 GiB on current GPUs, and NCCL's buffers under several processes.
A stage fits when total + RESERVE_GIB is at most the GPU's memory."""


def fits(total_gib: float, gpu_gib: float) -> bool:
    """Whether a per-device peak of ``total_gib`` tensors fits a GPU of ``gpu_gib``."""
    return total_gib + RESERVE_GIB <= gpu_gib


@dataclass(frozen=True)
class Setup:
    """The compute section resolved: what 'auto' means for this stage."""

    devices: int
    processes: int
    gpu: bool
    precision: str  # bf16-true | bf16-mixed | fp16-mixed | fp32
    strategy: str  # single | ddp | fsdp | deepspeed
    shard: int  # 0 nothing, 1 optimizer, 2 + gradients, 3 + weights (ZeRO stages)
    offload: str  # none | optimizer | parameters (only with fsdp/deepspeed)
    checkpointing: bool
    attn: str = "sdpa"  # sdpa | eager | flash_attention_2

    @property
    def weight_bytes(self) -> int:
        """Bytes of a weight as loaded: 2 for bf16-true, 4 (fp32 master) otherwise."""
        return 2 if self.precision == "bf16-true" else 4

    @property
    def value_bytes(self) -> int:
        """Bytes of an activation: 4 in fp32, 2 in bf16-true and under autocast."""
        return 4 if self.precision == "fp32" else 2

    @property
    def mixed(self) -> bool:
        return self.precision in MIXED_MODES

    @property
    def forward_precision(self) -> str:
        """The mode the layers compute and save activations in.

        Under DeepSpeed and FSDP a mixed mode runs the forward on half-precision weights
        (ZeRO's bf16/fp16 engine casts the model, keeping fp32 masters in the optimizer;
        FSDP's MixedPrecision gathers units in param_dtype), so the layers save what
        they save under bf16-true, residual stream included. Single-process and DDP
        mixed modes are autocast over fp32 weights: fp32 residual stream and norms.
        """
        if self.mixed and self.strategy in ("deepspeed", "fsdp"):
            return "bf16-true"  # fp16 values are as wide as bf16 ones
        return self.precision


def resolve_setup(kind: str, compute: dict[str, Any]) -> Setup:
    """Resolve launcher, precision, strategy and checkpointing defaults for an estimate.

    One process per GPU unless the launcher is 'local' (docker: its inner launcher), which
    runs one process; a sharding strategy shards over processes, not over GPUs.
    """
    gpu = int(compute.get("gpus_per_node") or 0) > 0 and kind not in CPU_KINDS
    devices = 1 if kind in CPU_KINDS else world.replicas(compute)
    processes = 1 if kind in CPU_KINDS else world.processes(compute)
    precision = world.precision_mode(compute, gpu=gpu)
    dist = compute.get("distributed") or {}
    strategy = dist.get("strategy") or "auto"
    if strategy == "auto":
        strategy = "ddp" if processes > 1 else "single"
    shard = {"fsdp": 3, "deepspeed": dist.get("zero_stage", DEFAULT_ZERO_STAGE)}.get(strategy, 0)
    offload = (dist.get("offload") or "none") if strategy in ("fsdp", "deepspeed") else "none"
    ckpt = dist.get("activation_checkpointing", "auto")
    checkpointing = gpu if ckpt == "auto" else bool(ckpt)
    if kind == "continual":
        checkpointing = False  # its frozen base runs in eval mode, where HF never checkpoints
    return Setup(devices, processes, gpu, precision, strategy, int(shard or 0), offload,
                 checkpointing, compute.get("attn_implementation") or "sdpa")
