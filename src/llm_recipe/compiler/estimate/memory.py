"""GPU memory per device of a stage: weights, gradients, optimizer state, activations.

This is what decides whether a stage fits, so that a recipe which cannot fit is caught
at review time, not an hour into a queue. It counts the parameters a stage trains
(full, LoRA/QLoRA adapters, continual patches), the activations saved for the
backward, the extras (frozen reference/value models, the KV cache of generation) and,
from :mod:`.states`, the model states as the runtime holds them: the bytes each
parameter costs by precision mode and optimizer, how DDP, ZeRO and FSDP shard or copy
them, what offload moves to the CPU, the layers ZeRO-3/FSDP gather, and the optimizer
step's temporary (the bytes-per-parameter table and its sources are in its docstring).
The numbers are first-order estimates (DeepSpeed's own ZeRO estimators for the model
states; for activations, what the runtime's layers were measured to save), meant to be
right to within some 10-20 %, not to replace a profiler.

'total' is the peak, not the sum of the parts: the optimizer step's temporary
('optimizer_step') exists only once the backward has freed the activations, so the peak
is the model states and extras plus the larger of 'activations' and 'optimizer_step'.

Activations come from :mod:`.activations`: what each op of a decoder layer saves for the
backward, by family, precision mode, attention implementation, checkpointing and what
the stage trains (full, LoRA/QLoRA, patch), as tests/integration/test_activations.py
measures it on the runtime's layers, plus the loss's fp32 log-softmax and the gradients
of the logits at the start of the backward. The model's dropout (GPT-2's) counts except
where the runtime turns it off (DROPOUT_OFF_KINDS); reward_model has a one-score head.

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.architectures import Architecture
from llm_recipe.compiler.estimate.activations import (
    trainable_from_config,
    training_activation_bytes,
)
from llm_recipe.compiler.estimate.setup import CPU_KINDS, GENERATE_KINDS, Setup
from llm_recipe.compiler.estimate.states import model_states

DEFAULT_PROMPT_TOKENS = 512  # assumed prompt length for the KV cache of generation
MEMORY_KEYS = ("weights", "gradients", "optimizer", "optimizer_step", "activations", "extra",
               "total")
# Kinds whose runtime trains with the model's dropout off: trl's DPO (disable_dropout),
# the PPO stage (ppo_rollout.disable_dropout) and continual (the base in eval mode).
DROPOUT_OFF_KINDS = frozenset({"dpo", "ppo", "continual"})


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
            "optimizer_step": 0.0, "activations": float(work),
            "extra": _kv_bytes(kind, config, arch, wb)}


def memory_bytes(kind: str, config: dict[str, Any], arch: Architecture, s: Setup
                 ) -> dict[str, float]:
    """Bytes per device by component (see MEMORY_KEYS), 'total' (the peak) included.

    The model states come from :func:`.states.model_states` (sharding, offload, DDP
    buckets, the optimizer step's temporary); the layers ZeRO-3/FSDP gather and QLoRA's
    dequantised Linear are counted under 'extra'.
    """
    if kind in CPU_KINDS:
        return dict.fromkeys(MEMORY_KEYS, 0.0)
    if kind in GENERATE_KINDS:
        mem = _inference_memory(kind, config, arch, s.weight_bytes)
        mem["total"] = peak_bytes(mem)
        return mem
    params = stage_params(kind, config, arch)
    states = model_states(kind, config, arch, params, s)
    train = config.get("train") or {}
    pairs = kind in ("dpo", "reward_model")
    batch = int(train.get("batch_size", 8)) * (2 if pairs else 1)  # chosen + rejected
    seq = int(train.get("max_seq_len", 512))
    mem = {"weights": states.weights, "gradients": states.gradients,
           "optimizer": states.optimizer, "optimizer_step": states.step,
           "activations": training_activation_bytes(
               arch, batch, seq, precision=s.forward_precision, attn=s.attn,
               checkpointing=s.checkpointing,
               trainable=trainable_from_config(config, params["method"]),
               dropout=kind not in DROPOUT_OFF_KINDS, device="cuda" if s.gpu else "cpu",
               lm_head=kind != "reward_model"),
           "extra": _extra_bytes(kind, config, arch, s, params["method"]) + states.buffers}
    transient = s.strategy in ("single", "ddp", "fsdp") and int(train.get("grad_accum", 1)) == 1
    mem["total"] = peak_bytes(mem, transient_gradients=transient)
    return mem


def peak_bytes(mem: dict[str, float], *, transient_gradients: bool = False) -> float:
    """The most held at once.

    The activations peak at the start of the backward and are freed as it goes, while
    the gradients appear; the optimizer step's temporary comes after. So the peak is the
    states and extras plus the larger of the activations and what the end of the step
    holds. Where the gradients are freed after each step and made again by the backward
    (``transient_gradients``: torch's ``zero_grad(set_to_none=True)`` under plain torch,
    DDP and FSDP, with no accumulation in progress), they belong to that second side;
    DeepSpeed keeps its gradient buffers, and accumulation keeps the previous
    micro-batches' gradients, so there they are held throughout.
    """
    moving = ("activations", "optimizer_step", "total")
    if transient_gradients:
        moving += ("gradients",)
    rest = sum(v for k, v in mem.items() if k not in moving)
    after = mem.get("optimizer_step", 0.0) + (mem.get("gradients", 0.0)
                                              if transient_gradients else 0.0)
    return rest + max(mem.get("activations", 0.0), after)


def _extra_bytes(kind: str, config: dict[str, Any], arch: Architecture, s: Setup,
                 method: str) -> float:
    """Frozen companion models and the KV cache of generation (gathered layers: states)."""
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
    return float(extra)
