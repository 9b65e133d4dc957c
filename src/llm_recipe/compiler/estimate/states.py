"""Model states per device: weights, gradients and optimizer state, as the runtime runs them.

Model states decide most of whether a full fine-tune fits, and they depend less on the
model than on the machinery around it: the precision mode, the optimizer, DDP's buckets,
ZeRO's or FSDP's sharding and offload, 4-bit quantisation. This module counts them the
way those libraries allocate them, per process, on the GPU and (offload) in CPU memory.

Bytes per parameter of full training with AdamW (adamw_torch), unsharded:

    runtime                       weights        gradients         optimizer          total
    fp32                          4              4                 8 (fp32 moments)   16
    bf16-true                     2              2                 4 (bf16 moments)    8
    bf16-mixed, fp16-mixed        4 + 2 copy     4                 8                  18
    FSDP, mixed modes             4              4                 8                  16
    DeepSpeed ZeRO-1/2, 0 mixed   2              2 + 4 fp32        4 master + 8       20
    DeepSpeed ZeRO-3              2              4 fp32            4 master + 8       18

(DeepSpeed rows: 16-bit modes; fp32 keeps 4-byte weights and gradients. Sharding over
the processes comes on top, as described below.)

bf16-true is the HF Trainer on bf16-loaded weights without autocast: torch's AdamW keeps
its moments in the parameters' dtype, and there is no fp32 master copy. The mixed modes
are torch autocast: fp32 parameters, gradients and moments, plus the half-precision copy
of each weight that autocast makes in the forward and autograd holds for the backward
(counted with the weights). Under FSDP the mixed modes are FSDP's MixedPrecision
(accelerate sets param_dtype=reduce_dtype=bf16/fp16): the fp32 shards are cast while
they are all-gathered, so the half copies are the gathered units, counted as buffers.

DeepSpeed (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", SC20; mixed precision Adam is their K = 12) is counted to agree
exactly with DeepSpeed's own estimators, per GPU, Ψ parameters over N processes:

- ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs``:
  2Ψ + 18Ψ/N (18 = 2 16-bit gradients + 4 fp32 gradients + 4 fp32 master + 8 moments),
  2Ψ with the optimizer offloaded (the reduced gradient partitions go to the CPU);
- ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs``:
  4L + 18Ψ/N (18 = 2 16-bit parameters + 16; it has no 16-bit gradient term), 4L + 2Ψ/N
  with the optimizer offloaded, 4L with the parameters offloaded too; L is the largest
  layer (:meth:`Architecture.largest_layer_parameter_count`) and 4L its gathered 16-bit
  parameters and gradient, counted under 'extra'.

DeepSpeed offers no stage-1 function (the zero2 one stands for both), but stage 1 does
not partition the 16-bit gradients: without overlap_comm (DeepSpeed's default below
stage 3, which accelerate's generated config keeps) ``stage_1_and_2.py`` reduces
``param.grad`` only at the accumulation boundary, after the backward has produced all of
them: the paper's P_os, (2 + 2)Ψ + KΨ/N. Stage 1 is
therefore the zero2 figure plus 2Ψ(1 - 1/N), or plus 2Ψ with the optimizer offloaded
(whose zero2 figure keeps no gradients on the GPU). ZeRO's optimizer always steps an fp32
master partition (``single_partition_of_fp32_groups``, ``fp32_partitioned_groups_flat``),
so at stages 1-3 bf16-true costs what the mixed modes cost (the weights stay in their 16-bit
dtype, 4 bytes in fp32); stage 0 is ZeRO's accounting only in the mixed modes
(FP16_Optimizer, bf16 too), else a plain optimizer. Offload: 'optimizer' moves the
fp32 gradients, master and moments to the CPU, 'parameters' also the 16-bit weights
(ZeRO-3 only). The CPU figure is per process; DeepSpeed's ``cpu_mem`` is per node and
multiplied by its additional_buffer_factor (1.5).

FSDP (accelerate's FSDP1 config from launchers.py: FULL_SHARD, transformer-layer
auto-wrap, BACKWARD_PRE prefetch) shards every state: mixed modes 16Ψ/N, two bytes per
parameter fewer than ZeRO-3's 18Ψ/N, since FSDP keeps no 16-bit parameter partition. Its
buffers differ from ZeRO-3's 4L: the units are gathered in the compute dtype (c bytes),
the root unit (embeddings, final norm, an untied head: R parameters) stays gathered from
the forward to the backward and its unsharded gradient lives through the whole backward,
while a block (B) is computed, its gradient reduced and the next block prefetched:
c(R + 2B) of parameters and, training the full model, c(R + B) of gradients. FSDP's one
offload (fsdp_offload_params, for either offload value) moves parameters, gradients and
the optimizer step to the CPU together.

DDP (the HF Trainer keeps ``gradient_as_bucket_view=False``) allocates its all-reduce
buckets beside the gradients when it wraps the model: a second gradient-sized copy on
every process, held for the whole run (counted as a buffer, under 'extra').

Adapters and patches: the frozen base in its load dtype (plus autocast's copy in the
mixed modes), trainable parameters in fp32 with fp32 gradients and optimizer state (peft
upcasts them), except QLoRA's under trl's trainers (sft, dpo, grpo), which cast a
quantised model's trainable parameters to bf16 (so bf16 gradients and AdamW moments);
PPO's own loop keeps them fp32. QLoRA stores each block Linear as bitsandbytes NF4:
packed 4-bit weights (uint8, two per byte) and an absmax per 64-weight block, fp32 (4/64
bytes per weight) or, with double quantisation, 8-bit with an fp32 absmax per 256 blocks
(1/64 + 4/(64*256)). peft's ``prepare_model_for_kbit_training`` casts every other
parameter (embeddings, norms, lm_head, biases) to fp32; the mixed modes add autocast's
half copy of the head; each 4-bit Linear is dequantised to the compute dtype when used
(one at a time, a buffer).

Optimizer state per parameter stepped: AdamW 8 bytes (half under bf16-true), bitsandbytes
8-bit AdamW 2 uint8 moments plus an fp32 absmax per 256 (tensors under 4096 elements keep
32-bit states; ignored), paged variants the same bytes in CUDA unified memory (counted on
the GPU, though the driver may page them out to CPU memory rather than fail), Adafactor
about 1, SGD none. The step itself: torch's AdamW runs foreach on CUDA, and
``_multi_tensor_adam`` allocates ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)``,
one temporary the size of the parameters it steps, in their dtype ('optimizer_step');
it exists only after the backward has freed the activations, so the peak takes the larger
of the two. bitsandbytes' fused kernels, Adafactor and SGD step in place (no temporary).

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler.architectures import Architecture
from llm_recipe.compiler.estimate.setup import Setup

# Optimizer state per trainable parameter when it is kept in fp32 (beyond the weights).
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8.0,
    "adamw_8bit": 2.0 + 2 * 4 / 256,
    "paged_adamw_32bit": 8.0,
    "paged_adamw_8bit": 2.0 + 2 * 4 / 256,
    "adafactor": 1.0,
    "sgd": 0.0,
}
# Optimizers whose state follows the parameters' dtype (the others fix theirs).
DTYPE_STATE_OPTIMIZERS = frozenset({"adamw_torch", "adafactor"})
# bitsandbytes' paged optimizers: states in CUDA unified memory, pageable to the CPU.
PAGED_OPTIMIZERS = frozenset({"paged_adamw_32bit", "paged_adamw_8bit"})
# Optimizers whose step (torch foreach) holds one temporary the size of the parameters.
FOREACH_OPTIMIZERS = frozenset({"adamw_torch"})
# bitsandbytes NF4/FP4: 4-bit weights + an absmax per 64 weights, 8-bit with an fp32
# absmax per 256 blocks (double quant) or fp32; per-tensor code books are ignored.
NF4_BLOCK, NESTED_BLOCK = 64, 256
QLORA_LINEAR_BYTES = {True: 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * NESTED_BLOCK),
                      False: 0.5 + 4 / NF4_BLOCK}
FP32 = 4  # bytes of an fp32 value: master weights, adapters, ZeRO's gradient partitions
# Stage kinds the runtime trains with trl's trainers (the others: its own loops).
TRL_KINDS = frozenset({"sft", "dpo", "grpo", "reward_model"})


@dataclass(frozen=True)
class ModelStates:
    """Bytes of one process's model states.

    weights, gradients, optimizer: held on its GPU for the whole step; buffers: gathered
    on the GPU while a layer is computed (ZeRO-3 layers, FSDP units, QLoRA's dequantised
    Linear), counted under 'extra'; step: the optimizer step's temporary on the GPU; cpu:
    what offload keeps in CPU memory instead.
    """

    weights: float
    gradients: float
    optimizer: float
    buffers: float = 0.0
    step: float = 0.0
    cpu: float = 0.0


def optimizer_name(config: dict[str, Any]) -> str:
    """train.optimizer, adamw_torch when unset (the HF Trainer's default)."""
    return (config.get("train") or {}).get("optimizer") or "adamw_torch"


def state_bytes(optimizer: str, param_bytes: int) -> float:
    """Optimizer state per parameter stepped, for parameters ``param_bytes`` wide."""
    state = OPTIMIZER_STATE_BYTES.get(optimizer, 8.0)
    return state / 2 if optimizer in DTYPE_STATE_OPTIMIZERS and param_bytes == 2 else state


def zero_accounting(s: Setup) -> bool:
    """DeepSpeed wraps the optimizer in ZeRO's (fp32 master partition): stages 1-3, and
    stage 0 in the mixed modes (DeepSpeed's FP16_Optimizer, for bf16 too)."""
    return s.strategy == "deepspeed" and (s.shard >= 1 or s.mixed)


def _zero_model_bytes(s: Setup) -> int:
    """Bytes of a weight under DeepSpeed: it casts the module to 16-bit in the mixed modes."""
    return 4 if s.precision == "fp32" else 2


def bytes_per_parameter(config: dict[str, Any], s: Setup) -> dict[str, float]:
    """{weights, gradients, optimizer} bytes per parameter of full training, unsharded
    (the table in the module docstring)."""
    optimizer = optimizer_name(config)
    if zero_accounting(s):
        mb = _zero_model_bytes(s)
        grads = FP32 + (0 if s.shard >= 3 else mb)
        return {"weights": float(mb), "gradients": float(grads),
                "optimizer": FP32 + state_bytes(optimizer, FP32)}
    pb = s.weight_bytes
    copy = 2 if s.mixed and s.strategy != "fsdp" else 0
    return {"weights": float(pb + copy), "gradients": float(pb),
            "optimizer": state_bytes(optimizer, pb)}


def adapter_bytes(kind: str, method: str) -> int:
    """Bytes of a trainable adapter or patch parameter: fp32 (peft upcasts LoRA), except
    QLoRA under trl's trainers (sft, dpo, grpo, reward_model), which cast a quantised
    model's trainable parameters to bf16 as the QLoRA paper does; PPO's own loop keeps
    peft's fp32."""
    return 2 if method == "qlora" and kind in TRL_KINDS else FP32


def _frozen_bytes(config: dict[str, Any], arch: Architecture, method: str, weight_bytes: int,
                  s: Setup, *, autocast_copy: bool) -> float:
    """The frozen base of an adapter or patch, ``weight_bytes`` a weight as loaded.

    QLoRA: 4-bit block Linears, everything else fp32 (prepare_model_for_kbit_training),
    plus autocast's half copy of the head in the mixed modes.
    """
    n = arch.parameter_count()
    if method != "qlora":
        return float(n * weight_bytes + autocast_copy_bytes(arch, s, autocast_copy))
    linear = arch.linear_parameter_count()
    double = bool((config.get("adapter") or {}).get("double_quant", True))
    head = arch.vocab_size * arch.hidden_size if autocast_copy and s.mixed else 0
    return linear * QLORA_LINEAR_BYTES[double] + (n - linear) * FP32 + 2 * head


def autocast_copy_bytes(arch: Architecture, s: Setup, applies: bool = True) -> float:
    """The half-precision copies autocast makes of the weights a forward multiplies by
    (every Linear and the head; not embeddings or norms) and holds for the backward:
    2 bytes each in the mixed modes (FSDP gathers half weights itself: ``applies``)."""
    return 2.0 * arch.matmul_parameter_count() if s.mixed and applies else 0.0


def _qlora_buffer(arch: Architecture, method: str, s: Setup) -> float:
    """The 4-bit Linear being computed, dequantised to the compute dtype."""
    if method != "qlora":
        return 0.0
    return float(arch.largest_linear_parameter_count() * s.value_bytes)


def model_states(kind: str, config: dict[str, Any], arch: Architecture,
                 params: dict[str, Any], s: Setup) -> ModelStates:
    """One process's model states for a training stage (``params`` from stage_params)."""
    if zero_accounting(s):
        return _zero_states(config, arch, params, s)
    weights, grads, optim, stepped = _unsharded(kind, config, arch, params, s)
    t, method = params["trainable"], params["method"]
    step = t * stepped if optimizer_name(config) in FOREACH_OPTIMIZERS else 0.0
    if s.strategy == "fsdp":
        return _fsdp_states(arch, method, s, weights, grads, optim, step)
    # DDP's all-reduce buckets (gradient_as_bucket_view=False): a gradient-sized copy,
    # allocated when DDP wraps the model and held for the whole run
    buckets = grads if s.strategy == "ddp" and s.processes > 1 else 0.0
    return ModelStates(weights, grads, optim, _qlora_buffer(arch, method, s) + buckets,
                       float(step))


def _unsharded(kind: str, config: dict[str, Any], arch: Architecture, params: dict[str, Any],
               s: Setup) -> tuple[float, float, float, int]:
    """(weights, gradients, optimizer, bytes of a stepped parameter) of one full replica:
    full training by :func:`bytes_per_parameter`; adapters and patches the frozen base
    (autocast's copies too, unless FSDP gathers the half weights itself) and the trainable
    parameters in :func:`adapter_bytes`."""
    n, t, method = arch.parameter_count(), params["trainable"], params["method"]
    if method == "full":
        per = bytes_per_parameter(config, s)
        weights = n * s.weight_bytes + autocast_copy_bytes(arch, s, s.strategy != "fsdp")
        return weights, n * per["gradients"], n * per["optimizer"], s.weight_bytes
    ab = adapter_bytes(kind, method)
    frozen = _frozen_bytes(config, arch, method, s.weight_bytes, s,
                           autocast_copy=s.strategy != "fsdp")
    return frozen + t * ab, float(t * ab), t * state_bytes(optimizer_name(config), ab), ab


def _zero_states(config: dict[str, Any], arch: Architecture, params: dict[str, Any],
                 s: Setup) -> ModelStates:
    """DeepSpeed ZeRO: equal to DeepSpeed's estimators at stages 2 and 3 (module docstring).

    The engine casts the whole module to the 16-bit dtype in the mixed modes, adapters
    included, so trainable parameters are ZeRO's 16-bit ones whatever their kind."""
    t, method, world = params["trainable"], params["method"], max(1, s.processes)
    optimizer = optimizer_name(config)
    mb = _zero_model_bytes(s)
    frozen = 0.0 if method == "full" else _frozen_bytes(config, arch, method, mb, s,
                                                        autocast_copy=False)
    shards = world if s.shard >= 1 else 1
    weights = (frozen + t * mb) / (world if s.shard >= 3 else 1)
    # 16-bit gradients: whole at stages 0-1, a partition at 2, none in DeepSpeed's ZeRO-3
    half_grads = {0: t * mb, 1: t * mb, 2: t * mb / world}.get(s.shard, 0.0)
    fp32_side = t * FP32 / shards  # fp32 gradient partition
    optim = t * (FP32 + state_bytes(optimizer, FP32)) / shards  # master + moments
    cpu = 0.0
    if s.offload != "none":
        cpu += fp32_side + optim
        fp32_side = optim = 0.0
        if s.shard == 2:
            half_grads = 0.0  # reduced partitions are copied straight to the CPU
        if s.offload == "parameters" and s.shard >= 3:
            cpu, weights = cpu + weights, 0.0
    buffers = 2.0 * mb * arch.largest_layer_parameter_count() if s.shard >= 3 else 0.0
    stepped_here = optimizer in FOREACH_OPTIMIZERS and s.offload == "none"
    step = t * FP32 / shards if stepped_here else 0.0  # steps the fp32 master partition
    return ModelStates(float(weights), half_grads + fp32_side, float(optim),
                       buffers + _qlora_buffer(arch, method, s), float(step), float(cpu))


def _fsdp_states(arch: Architecture, method: str, s: Setup, weights: float, grads: float,
                 optim: float, step: float) -> ModelStates:
    """FSDP FULL_SHARD: every state sharded over the processes, units gathered while
    computed; offload (fsdp_offload_params) moves the states and the step to the CPU."""
    world = max(1, s.processes)
    weights, grads, optim, step = weights / world, grads / world, optim / world, step / world
    buffers = _qlora_buffer(arch, method, s)
    if world > 1 or s.offload != "none":
        root, block = arch.root_parameter_count(), arch.block_parameter_count()
        units = root + 2 * block + (root + block if method == "full" else 0)
        buffers += float(s.value_bytes * units)
    if s.offload != "none":
        return ModelStates(0.0, 0.0, 0.0, buffers, 0.0, weights + grads + optim)
    return ModelStates(weights, grads, optim, buffers, step)
