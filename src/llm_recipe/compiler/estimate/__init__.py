"""What a stage will cost before it runs: parameters, GPU memory, tokens and FLOPs.

``recipe plan`` prints this so that a recipe which cannot fit is caught at review time,
not an hour into a queue, and says what would fit instead. What it counts, what it
assumes and how it was checked against measurements is docs/estimates.md.

This module assembles one stage's estimate (:func:`estimate_stage`) and its notes from:

    setup        the compute section resolved (devices, precision, strategy, ZeRO stage)
    memory       GPU memory per device: model states, activations, extras and the peak
    layers       what each op of a decoder layer saves for the backward, as measured on
                 the runtime's layers, by family, precision, attention and adapter
    activations  a training step's activations: layers, head and loss, checkpointing
    states       weights, gradients and optimizer state as DDP/ZeRO/FSDP/QLoRA hold them,
                 offload, the optimizer step's temporary (the bytes-per-parameter table)
    flops        tokens, steps and model FLOPs (with attention) per stage and token
    hardware     peak TFLOP/s of known GPUs, for MFU
    suggest      what would fit when a stage does not
    summary      formatting of counts, GiB and the plan-table cell

Stdlib only: this package must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.architectures import Architecture
from llm_recipe.compiler.estimate.activations import (
    Trainable,
    head_activation_bytes,
    layer_activation_bytes,
    loss_transient_bytes,
    trainable_from_config,
    training_activation_bytes,
)
from llm_recipe.compiler.estimate.flops import (
    attention_flops,
    flops_per_token,
    stage_flops,
    token_counts,
)
from llm_recipe.compiler.estimate.memory import (
    DEFAULT_PROMPT_TOKENS,
    MEMORY_KEYS,
    memory_bytes,
    peak_bytes,
    stage_params,
)
from llm_recipe.compiler.estimate.setup import (
    CPU_KINDS,
    DEFAULT_ZERO_STAGE,
    GENERATE_KINDS,
    GIB,
    MIXED_MODES,
    RESERVE_GIB,
    TRAIN_KINDS,
    Setup,
    fits,
    resolve_setup,
)
from llm_recipe.compiler.estimate.states import (
    DTYPE_STATE_OPTIMIZERS,
    OPTIMIZER_STATE_BYTES,
    PAGED_OPTIMIZERS,
    QLORA_LINEAR_BYTES,
    ModelStates,
    bytes_per_parameter,
    model_states,
)
from llm_recipe.compiler.estimate.suggest import (
    ADAPTER_SUGGEST_KINDS,
    FSDP_SEARCH,
    suggestions,
)
from llm_recipe.compiler.estimate.summary import format_count, format_gib, summarise

__all__ = [
    "ADAPTER_SUGGEST_KINDS",
    "CPU_KINDS",
    "DEFAULT_PROMPT_TOKENS",
    "DEFAULT_ZERO_STAGE",
    "DTYPE_STATE_OPTIMIZERS",
    "FSDP_SEARCH",
    "GENERATE_KINDS",
    "GIB",
    "MEMORY_KEYS",
    "MIXED_MODES",
    "OPTIMIZER_STATE_BYTES",
    "PAGED_OPTIMIZERS",
    "QLORA_LINEAR_BYTES",
    "RESERVE_GIB",
    "TRAIN_KINDS",
    "ModelStates",
    "Setup",
    "Trainable",
    "attention_flops",
    "bytes_per_parameter",
    "estimate_stage",
    "fits",
    "flops_per_token",
    "format_count",
    "format_gib",
    "head_activation_bytes",
    "layer_activation_bytes",
    "loss_transient_bytes",
    "memory_bytes",
    "model_states",
    "peak_bytes",
    "resolve_setup",
    "stage_flops",
    "stage_params",
    "suggestions",
    "summarise",
    "token_counts",
    "trainable_from_config",
    "training_activation_bytes",
]


def _notes(kind: str, config: dict[str, Any], arch: Architecture, s: Setup,
           compute: dict[str, Any], params: dict[str, Any]) -> list[str]:
    notes = list(arch.problems())
    dist = compute.get("distributed") or {}
    if kind in TRAIN_KINDS and s.gpu and s.devices > 1 and s.processes == 1:
        notes.append(f"launcher local: one process drives {s.devices} GPUs (no DDP/FSDP); "
                     "use accelerate or torchrun")
    if (dist.get("offload") or "none") != "none" and s.offload == "none":
        notes.append("offload needs strategy fsdp or deepspeed: ignored")
    if kind == "continual" and dist.get("activation_checkpointing") is True:
        notes.append("continual does not checkpoint activations (its frozen base runs in "
                     "eval mode): activation_checkpointing ignored")
    if s.strategy == "deepspeed" and "zero_stage" not in dist:
        notes.append(f"deepspeed zero_stage not set: assumed {DEFAULT_ZERO_STAGE}")
    if s.strategy == "deepspeed" and s.offload == "parameters" and s.shard < 3:
        notes.append("deepspeed offloads parameters only at zero_stage 3: counted as "
                     "offload optimizer")
    if s.strategy == "fsdp" and s.offload == "optimizer":
        notes.append("fsdp offloads parameters, gradients and the optimizer together: "
                     "offload optimizer counted as parameters")
    optimizer = (config.get("train") or {}).get("optimizer")
    if kind in TRAIN_KINDS and optimizer in PAGED_OPTIMIZERS:
        notes.append(f"{optimizer}: optimizer states counted on the GPU; being paged, they "
                     "can spill to CPU memory (slower) instead of running out")
    if params["method"] == "qlora" and not s.gpu:
        notes.append("qlora needs a CUDA GPU (bitsandbytes)")
    if kind in TRAIN_KINDS and s.attn == "eager":
        train = config.get("train") or {}
        seq, batch = int(train.get("max_seq_len", 512)), int(train.get("batch_size", 8))
        layer = {attn: layer_activation_bytes(arch, batch, seq, precision=s.forward_precision,
                                              attn=attn) for attn in ("eager", "sdpa")}
        if layer["eager"] > 1.25 * layer["sdpa"]:
            notes.append(f"eager attention stores the seq x seq attention scores: "
                         f"{layer['eager'] / layer['sdpa']:.1f}x the activations per layer "
                         "of sdpa (the default)")
    if s.attn == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            notes.append("attn_implementation flash_attention_2: the flash_attn package is "
                         "not installed here")
        if not s.gpu:
            notes.append("attn_implementation flash_attention_2 needs a CUDA GPU")
    if kind in GENERATE_KINDS or kind in ("grpo", "ppo"):
        notes.append(f"KV cache assumes prompts of up to {DEFAULT_PROMPT_TOKENS} tokens")
    if kind == "ppo":
        notes.append("ppo: the value model's gradients and optimizer state are not counted")
    return notes


def estimate_stage(kind: str, config: dict[str, Any], arch: Architecture | None,
                   compute: dict[str, Any], *, examples: int | None = None) -> dict[str, Any]:
    """The resource estimate of one stage, as a JSON-serialisable dict.

    Keys: kind, params {total, trainable, method} | None, devices, processes,
    setup {gpu, precision, strategy, zero_stage, offload, activation_checkpointing},
    memory_gb {weights, gradients, optimizer, optimizer_step, activations, extra, total}
    (GiB per device; total is the peak) | None, cpu_memory_gb (model states offloaded to
    CPU memory, GiB per process) | None, gpu_memory_gb, fits (True/False/None),
    headroom_gb, tokens, tokens_exact,
    global_batch, steps, flops, flops_per_token, notes, suggestions. Never raises for an
    unknown model.
    """
    s = resolve_setup(kind, compute)
    gpu_gb = (compute.get("gpu") or {}).get("memory_gb")
    counted = token_counts(kind, config, s.devices, examples)
    out: dict[str, Any] = {
        "kind": kind, "params": None, "devices": s.devices, "processes": s.processes,
        "setup": {"gpu": s.gpu, "precision": s.precision, "attn_implementation": s.attn,
                  "strategy": s.strategy,
                  "zero_stage": s.shard, "offload": s.offload,
                  "activation_checkpointing": s.checkpointing},
        "memory_gb": None, "cpu_memory_gb": None, "gpu_memory_gb": gpu_gb, "fits": None,
        "headroom_gb": None,
        **counted, "flops": None, "flops_per_token": None, "notes": [], "suggestions": [],
    }
    if kind in CPU_KINDS:
        out["params"] = {"total": 0, "trainable": 0, "method": "none"}
        out["memory_gb"] = dict.fromkeys(MEMORY_KEYS, 0.0)
        out["cpu_memory_gb"] = 0.0
        out["notes"] = ["no GPU: runs on the CPU"]
        return out
    if arch is None:
        out["notes"] = ["unknown architecture: set models.<name>.architecture for an estimate"]
        return out
    params = stage_params(kind, config, arch)
    mem = {k: round(v / GIB, 2) for k, v in memory_bytes(kind, config, arch, s).items()}
    offloaded = model_states(kind, config, arch, params, s).cpu if kind in TRAIN_KINDS else 0.0
    out.update(params=params, memory_gb=mem, cpu_memory_gb=round(offloaded / GIB, 2),
               flops=stage_flops(kind, config, arch, params, out["tokens"]),
               flops_per_token=flops_per_token(kind, config, arch, params),
               notes=_notes(kind, config, arch, s, compute, params))
    if out["tokens_exact"] is False and kind in TRAIN_KINDS:
        out["notes"].append("tokens: upper bound (every sequence at max_seq_len)")
    if gpu_gb and s.gpu:
        out["fits"] = fits(mem["total"], gpu_gb)
        out["headroom_gb"] = round(gpu_gb - mem["total"] - RESERVE_GIB, 2)
        if out["fits"] and out["headroom_gb"] < 0.1 * gpu_gb:
            out["notes"].append("tight: under 10% headroom")
        if not out["fits"]:
            out["suggestions"] = suggestions(kind, config, arch, compute, gpu_gb)
    return out
