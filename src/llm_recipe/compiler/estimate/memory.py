"""GPU memory per device of a stage: weights, gradients, optimizer state, activations.

This is what decides whether a stage fits, so that a recipe which cannot fit is caught
at review time, not an hour into a queue. It counts the parameters a stage trains
(full, LoRA/QLoRA adapters, continual patches), the bytes each of them costs, how ZeRO
and FSDP shard them over processes and offload moves them to the CPU, the activations
saved for the backward, and the extras (frozen reference/value models, the KV cache of
generation, ZeRO-3 gathered layers). The numbers are first-order estimates (ZeRO
accounting for weights, gradients and optimizer state; Korthikanti et al. for
activations), meant to be right to within some 10-20 %, not to replace a profiler.

Bytes per parameter of full training with AdamW (adamw_torch), by compute.precision:

    mode         weights              gradients  Adam moments  total
    fp32         4                    4          8 (fp32)      16
    bf16-true    2                    2          4 (bf16)       8
    bf16-mixed   4 fp32 + 2 bf16 copy 4          8 (fp32)      18
    fp16-mixed   4 fp32 + 2 fp16 copy 4          8 (fp32)      18

Assumptions: bf16-true is the HF Trainer on bf16-loaded weights without autocast, so
torch's AdamW keeps its moments in the parameters' dtype and there is no fp32 master
copy. The mixed modes are torch autocast (HF Trainer's bf16/fp16 flags, Lightning's
*-mixed): fp32 parameters, fp32 gradients, fp32 moments, and a half-precision copy of
each weight made by autocast in the forward and held for the backward (counted with the
weights). Under DeepSpeed the mixed modes are ZeRO's own (2 half weights + 2 half
gradients + 12 fp32 master and moments = 16, the master copy counted with the optimizer).
Other optimizers scale their state with its dtype (adamw_8bit stays 2 bytes). Adapters
and patches: the frozen base in the load dtype (bf16 for bf16-true, fp32 otherwise;
QLoRA's Linear weights at 4 bits), trainable parameters in fp32 (peft upcasts them).
Activations are counted at 2 bytes per value except in fp32, and depend on
compute.attn_implementation: eager saves the attention scores and probabilities
(Korthikanti's 5*a*s^2 bytes per block), sdpa and flash_attention_2 only q, k, v, the
output and the fp32 softmax statistics (4*a*s bytes per block and sequence).

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.architectures import Architecture
from llm_recipe.compiler.estimate.setup import CPU_KINDS, GENERATE_KINDS, Setup

# Optimizer state per trainable parameter when it is kept in fp32 (beyond the weights).
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8.0, "adamw_8bit": 2.0, "adafactor": 1.0, "sgd": 0.0}
# Optimizers whose state follows the parameters' dtype (the others quantise it).
DTYPE_STATE_OPTIMIZERS = frozenset({"adamw_torch", "adafactor"})
# 4-bit NF4/FP4 weight: 4 bits + an 8-bit absmax per 64 weights (double quant) or fp32 ones.
QLORA_LINEAR_BYTES = {True: 0.516, False: 0.5625}
DEFAULT_PROMPT_TOKENS = 512  # assumed prompt length for the KV cache of generation
MEMORY_KEYS = ("weights", "gradients", "optimizer", "activations", "extra", "total")


def stage_params(kind: str, config: dict[str, Any], arch: Architecture) -> dict[str, Any]:
    """{total, trainable, method}; total includes adapter/patch parameters."""
    n = arch.parameter_count()
    if kind in GENERATE_KINDS:
        return {"total": n, "trainable": 0, "method": "none"}
    if kind == "continual":
        patch = config.get("patch") or {}
        t = arch.patch_parameter_count(int(patch.get("rank", 8)), patch.get("layers", "all"))
        return {"total": n + t, "trainable": t, "method": "patch"}
    adapter = config.get("adapter") or {}
    if adapter.get("type") in ("lora", "qlora"):
        t = arch.lora_parameter_count(int(adapter.get("r", 16)),
                                      adapter.get("target_modules", "all-linear"))
        return {"total": n + t, "trainable": t, "method": adapter["type"]}
    return {"total": n, "trainable": n, "method": "full"}


def block_activation_bytes(arch: Architecture, batch: int, seq: int, attn: str) -> float:
    """Saved activations of one block in 16-bit (Korthikanti et al. 2022).

    eager: s*b*h*(34 + 5*a*s/h), the 5*a*s^2*b being the attention scores, their softmax
    and its dropout mask; sdpa and flash_attention_2 recompute those in the backward and
    save only the fp32 log-sum-exp per head and query (4*a*s*b) besides q, k, v and the
    output (already among the 34).
    """
    h, a = arch.hidden_size, arch.num_heads
    scores = 5 * a * seq * seq * batch if attn == "eager" else 4 * a * seq * batch
    return seq * batch * h * 34 + scores


def training_activation_bytes(arch: Architecture, batch: int, seq: int, checkpointing: bool,
                              attn: str) -> float:
    """All blocks in 16-bit; with activation checkpointing only each block's input
    (2*s*b*h) is kept and one block at a time is recomputed."""
    layer = block_activation_bytes(arch, batch, seq, attn)
    if checkpointing:
        return 2.0 * seq * batch * arch.hidden_size * arch.num_layers + layer
    return layer * arch.num_layers


def _activation_bytes(arch: Architecture, batch: int, seq: int, s: Setup) -> float:
    """Training activations per device, plus the logits and their fp32 copy for the loss."""
    body = training_activation_bytes(arch, batch, seq, s.checkpointing, s.attn)
    body *= s.value_bytes / 2
    return body + batch * seq * arch.vocab_size * (s.value_bytes + 4)


def _kv_bytes(kind: str, config: dict[str, Any], arch: Architecture, wb: int) -> float:
    """KV cache of the sequences decoded at once on one device (prompts x samples each)."""
    gen = config.get("generation") or {}
    rows = int(gen.get("batch_size") or (config.get("train") or {}).get("batch_size") or 8)
    rows *= int({"rollout": config.get("samples_per_variant", 4),
                 "grpo": config.get("num_generations", 4)}.get(kind, 1))
    return arch.kv_cache_bytes(rows, DEFAULT_PROMPT_TOKENS + int(gen.get("max_new_tokens", 256)),
                               wb)


def _inference_memory(kind: str, config: dict[str, Any], arch: Architecture, wb: int
                      ) -> dict[str, float]:
    """Weights, one block's forward working set over the prompts, and the KV cache."""
    rows, seq = int((config.get("generation") or {}).get("batch_size", 8)), DEFAULT_PROMPT_TOKENS
    work = rows * seq * (2 * arch.hidden_size + 2 * arch.intermediate_size
                         + arch.num_heads * seq) * wb + rows * arch.vocab_size * 4
    return {"weights": float(arch.parameter_count() * wb), "gradients": 0.0, "optimizer": 0.0,
            "activations": float(work), "extra": _kv_bytes(kind, config, arch, wb)}


def bytes_per_parameter(config: dict[str, Any], s: Setup) -> dict[str, float]:
    """{weights, gradients, optimizer} bytes per parameter of full training (the table in
    the module docstring)."""
    optimizer = (config.get("train") or {}).get("optimizer") or "adamw_torch"
    state = OPTIMIZER_STATE_BYTES.get(optimizer, 8.0)
    if s.precision == "bf16-true":
        if optimizer in DTYPE_STATE_OPTIMIZERS:
            state /= 2
        return {"weights": 2.0, "gradients": 2.0, "optimizer": state}
    if s.mixed and s.strategy == "deepspeed":
        return {"weights": 2.0, "gradients": 2.0, "optimizer": 4.0 + state}
    if s.mixed:
        return {"weights": 6.0, "gradients": 4.0, "optimizer": state}
    return {"weights": 4.0, "gradients": 4.0, "optimizer": state}


def _state_bytes(config: dict[str, Any], arch: Architecture, params: dict[str, Any], s: Setup
                 ) -> tuple[float, float, float]:
    """Unsharded (weights, gradients, optimizer) bytes of a training stage.

    Full training: :func:`bytes_per_parameter` times the parameters. Adapters and patches:
    the frozen base in its load dtype (plus autocast's half copy in the mixed modes; QLoRA:
    block Linear weights at 4 bits) and the trainable parameters in fp32 with fp32
    gradients and optimizer state.
    """
    n, t = arch.parameter_count(), params["trainable"]
    wb = s.weight_bytes + (2 if s.mixed else 0)
    state = OPTIMIZER_STATE_BYTES.get((config.get("train") or {}).get("optimizer"), 8.0)
    if params["method"] == "full":
        per = bytes_per_parameter(config, s)
        return n * per["weights"], n * per["gradients"], n * per["optimizer"]
    weights = float(n * wb)
    if params["method"] == "qlora":
        linear = arch.linear_parameter_count()
        double = bool((config.get("adapter") or {}).get("double_quant", True))
        weights = linear * QLORA_LINEAR_BYTES[double] + (n - linear) * wb
    return weights + t * 4, t * 4.0, t * state


def memory_bytes(kind: str, config: dict[str, Any], arch: Architecture, s: Setup
                 ) -> dict[str, float]:
    """Bytes per device by component (see MEMORY_KEYS), 'total' included.

    ZeRO stage k shards optimizer state (k >= 1), gradients (k >= 2) and weights (k = 3,
    also FSDP) over the processes; offload moves the optimizer (and, for 'parameters',
    weights and gradients) to CPU memory.
    """
    if kind in CPU_KINDS:
        return dict.fromkeys(MEMORY_KEYS, 0.0)
    if kind in GENERATE_KINDS:
        mem = _inference_memory(kind, config, arch, s.weight_bytes)
        mem["total"] = sum(mem.values())
        return mem
    params = stage_params(kind, config, arch)
    weights, grads, optim = _state_bytes(config, arch, params, s)
    world = max(1, s.processes)
    weights /= world if s.shard >= 3 else 1
    grads /= world if s.shard >= 2 else 1
    optim /= world if s.shard >= 1 else 1
    if s.offload != "none":
        optim = 0.0
    if s.offload == "parameters":
        weights, grads = 0.0, 0.0
    train = config.get("train") or {}
    pairs = kind in ("dpo", "reward_model")
    batch = int(train.get("batch_size", 8)) * (2 if pairs else 1)  # chosen + rejected
    seq = int(train.get("max_seq_len", 512))
    mem = {"weights": weights, "gradients": grads, "optimizer": optim,
           "activations": _activation_bytes(arch, batch, seq, s),
           "extra": _extra_bytes(kind, config, arch, s, params["method"])}
    mem["total"] = sum(mem.values())
    return mem


def _extra_bytes(kind: str, config: dict[str, Any], arch: Architecture, s: Setup,
                 method: str) -> float:
    """Frozen companion models, the KV cache of generation, and ZeRO-3 gathered layers."""
    wb, n = s.weight_bytes, arch.parameter_count()
    sharded_world = max(1, s.processes) if s.shard >= 3 else 1
    separate_ref = method == "full" or bool(config.get("_reference_is_separate_model"))
    models = 0
    if kind == "dpo" or (kind == "grpo" and float(config.get("beta", 0.04)) > 0):
        models += int(separate_ref)
    if kind == "ppo":
        models += int(separate_ref) + 1  # value model
        models += int(bool((config.get("reward") or {}).get("model")))
    extra = models * n * wb / sharded_world
    if kind in ("grpo", "ppo"):
        extra += _kv_bytes(kind, config, arch, wb)
    if s.shard >= 3 and (s.processes > 1 or s.offload == "parameters"):
        extra += 2 * arch.block_parameter_count() * wb  # current + prefetched block
    return float(extra)
