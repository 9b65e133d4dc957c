"""What a stage will cost before it runs: parameters, GPU memory, tokens and FLOPs.

``recipe plan`` prints this so that a recipe which cannot fit is caught at review time,
not an hour into a queue, and says what would fit instead. The numbers are first-order
estimates (ZeRO accounting for weights, gradients and optimizer state; Korthikanti et al.
for activations), meant to be right to within some 10-20 %, not to replace a profiler.

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

import math
from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler import world
from llm_recipe.compiler.architectures import Architecture

GIB = 1024**3
TRAIN_KINDS = frozenset({"pretrain", "sft", "reward_model", "dpo", "grpo", "ppo",
                         "continual"})
GENERATE_KINDS = frozenset({"rollout", "eval"})
CPU_KINDS = frozenset({"preferences"})
ADAPTER_SUGGEST_KINDS = frozenset({"sft", "reward_model", "dpo", "grpo", "ppo"})

# Optimizer state per trainable parameter when it is kept in fp32 (beyond the weights).
OPTIMIZER_STATE_BYTES = {"adamw_torch": 8.0, "adamw_8bit": 2.0, "adafactor": 1.0, "sgd": 0.0}
# Optimizers whose state follows the parameters' dtype (the others quantise it).
DTYPE_STATE_OPTIMIZERS = frozenset({"adamw_torch", "adafactor"})
MIXED_MODES = frozenset({"bf16-mixed", "fp16-mixed"})
# 4-bit NF4/FP4 weight: 4 bits + an 8-bit absmax per 64 weights (double quant) or fp32 ones.
QLORA_LINEAR_BYTES = {True: 0.516, False: 0.5625}
DEFAULT_ZERO_STAGE = 2  # accelerate's DeepSpeed default when zero_stage is not set
DEFAULT_PROMPT_TOKENS = 512  # assumed prompt length for the KV cache of generation
FSDP_SEARCH = (2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
MEMORY_KEYS = ("weights", "gradients", "optimizer", "activations", "extra", "total")


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
    return Setup(devices, processes, gpu, precision, strategy, int(shard or 0), offload,
                 checkpointing, compute.get("attn_implementation") or "sdpa")


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


_NO_TOKENS: dict[str, Any] = {"tokens": None, "tokens_exact": None, "global_batch": None,
                              "steps": None}


def _generated_tokens(kind: str, config: dict[str, Any], examples: int | None) -> int | None:
    """Upper bound of generated tokens: sequences x max_new_tokens."""
    cap = config.get("n_questions") if kind == "rollout" else config.get("limit")
    known = [x for x in (cap, examples) if x]
    if not known:
        return None
    n = min(known)
    if kind == "rollout":
        n *= len(config.get("variants") or ["direct"]) * int(config.get("samples_per_variant", 4))
    else:
        n *= len(config.get("models") or [None])
    return n * int((config.get("generation") or {}).get("max_new_tokens", 256))


def token_counts(kind: str, config: dict[str, Any], devices: int, examples: int | None
                 ) -> dict[str, Any]:
    """{tokens, tokens_exact, global_batch, steps}; None where the data size is unknown.

    Training tokens count every sequence at max_seq_len (dpo: two per example); with
    epochs they are an upper bound (tokens_exact False), with max_steps (continual: the
    phases' steps) they are what the loop will process.
    """
    if kind in GENERATE_KINDS:
        tokens = _generated_tokens(kind, config, examples)
        return {**_NO_TOKENS, "tokens": tokens, "tokens_exact": None if tokens is None else False}
    if kind not in TRAIN_KINDS:
        return dict(_NO_TOKENS)
    train = config.get("train") or {}
    global_batch = int(train.get("batch_size", 8)) * int(train.get("grad_accum", 1)) * devices
    seq = int(train.get("max_seq_len", 512)) * (2 if kind in ("dpo", "reward_model") else 1)
    steps = train.get("max_steps")
    if steps is None and kind == "continual" and config.get("phases"):
        steps = sum(int(ph.get("steps", 0)) for ph in config["phases"])
    out = {**_NO_TOKENS, "global_batch": global_batch}
    epochs = train.get("epochs")
    if steps:
        out.update(tokens=int(steps) * global_batch * seq, tokens_exact=True, steps=int(steps))
    elif epochs and examples:
        out.update(tokens=int(epochs * examples * seq), tokens_exact=False,
                   steps=math.ceil(epochs * examples / global_batch))
    return out


def stage_flops(kind: str, config: dict[str, Any], params: dict[str, Any], n: int,
                tokens: int | None) -> float | None:
    """Model FLOPs: 6N per trained token (full), 4N+2T (adapters, patches), 2N generated.

    Adds 2N per token for the reference forward (dpo, grpo with beta > 0, ppo) and for
    sampling (grpo, ppo). Recomputation by activation checkpointing is not counted.
    """
    if tokens is None or kind in CPU_KINDS:
        return None
    if kind in GENERATE_KINDS:
        return 2.0 * n * tokens
    per_token = 6 * n if params["method"] == "full" else 4 * n + 2 * params["trainable"]
    if kind in ("dpo", "ppo") or (kind == "grpo" and float(config.get("beta", 0.04)) > 0):
        per_token += 2 * n
    if kind in ("grpo", "ppo"):
        per_token += 2 * n
    return float(per_token) * tokens


def _with_dist(compute: dict[str, Any], gpus: int | None = None, **dist: Any) -> dict[str, Any]:
    """A copy of compute with distributed overrides; sharding needs a multi-process launcher."""
    out = {**compute, "distributed": {**(compute.get("distributed") or {}), **dist}}
    if "strategy" in dist and (out.get("launcher") or "local") == "local":
        out["launcher"] = "accelerate"
    if gpus is not None:
        out["nodes"], out["gpus_per_node"] = 1, gpus
    return out


def _smaller_batches(section: dict[str, Any]) -> list[int]:
    batch = int(section.get("batch_size", 8))
    return sorted({b for b in (batch // 2, batch // 4, 1) if 0 < b < batch and not batch % b},
                  reverse=True)


def suggestions(kind: str, config: dict[str, Any], arch: Architecture,
                compute: dict[str, Any], gpu_gb: float) -> list[str]:
    """Concrete alternatives for a stage that does not fit, each with its own total.

    QLoRA, FSDP over the same GPUs and activation checkpointing are reported fit or not;
    the GPU-count and batch-size searches report only the first setting that fits.
    """
    s = resolve_setup(kind, compute)
    out: list[str] = []

    def total(cfg: dict[str, Any], cmp: dict[str, Any]) -> float:
        return memory_bytes(kind, cfg, arch, resolve_setup(kind, cmp))["total"] / GIB

    def say(label: str, gib: float) -> bool:
        out.append(f"{label}: {gib:.1f} GiB/GPU {'fits' if gib <= gpu_gb else 'does not fit'}")
        return gib <= gpu_gb

    def first_fit(options: Any) -> None:
        for label, cfg, cmp in options:
            gib = total(cfg, cmp)
            if gib <= gpu_gb:
                say(label, gib)
                return

    if kind in ADAPTER_SUGGEST_KINDS and stage_params(kind, config, arch)["method"] != "qlora":
        adapter = {"r": 16, "target_modules": "all-linear", **(config.get("adapter") or {}),
                   "type": "qlora"}
        say(f"qlora (r={adapter['r']})", total({**config, "adapter": adapter}, compute))
    if kind not in TRAIN_KINDS:
        gen = config.get("generation") or {}
        first_fit((f"generation.batch_size {b}",
                   {**config, "generation": {**gen, "batch_size": b}}, compute)
                  for b in _smaller_batches(gen))
        return out
    fsdp_fits = s.devices > 1 and s.shard < 3 and say(
        f"fsdp over {s.devices} GPUs", total(config, _with_dist(compute, strategy="fsdp")))
    if not fsdp_fits:
        first_fit((f"fsdp over {n} GPUs", config, _with_dist(compute, n, strategy="fsdp"))
                  for n in FSDP_SEARCH if n > s.devices)
    if not s.checkpointing:
        say("activation_checkpointing: true",
            total(config, _with_dist(compute, activation_checkpointing=True)))
    train = config.get("train") or {}
    b0, accum = int(train.get("batch_size", 8)), int(train.get("grad_accum", 1))
    first_fit((f"batch_size {b}, grad_accum {accum * b0 // b} (same global batch)",
               {**config, "train": {**train, "batch_size": b, "grad_accum": accum * b0 // b}},
               compute) for b in _smaller_batches(train))
    return out


def _notes(kind: str, config: dict[str, Any], arch: Architecture, s: Setup,
           compute: dict[str, Any], params: dict[str, Any]) -> list[str]:
    notes = list(arch.problems())
    dist = compute.get("distributed") or {}
    if kind in TRAIN_KINDS and s.gpu and s.devices > 1 and s.processes == 1:
        notes.append(f"launcher local: one process drives {s.devices} GPUs (no DDP/FSDP); "
                     "use accelerate or torchrun")
    if (dist.get("offload") or "none") != "none" and s.offload == "none":
        notes.append("offload needs strategy fsdp or deepspeed: ignored")
    if s.strategy == "deepspeed" and "zero_stage" not in dist:
        notes.append(f"deepspeed zero_stage not set: assumed {DEFAULT_ZERO_STAGE}")
    if params["method"] == "qlora" and not s.gpu:
        notes.append("qlora needs a CUDA GPU (bitsandbytes)")
    seq = int((config.get("train") or {}).get("max_seq_len", 512))
    eager_heavy = 5 * arch.num_heads * seq > 34 * arch.hidden_size
    if kind in TRAIN_KINDS and s.attn == "eager" and eager_heavy:
        notes.append("eager attention stores the seq x seq attention scores; sdpa (the "
                     "default) does not")
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
    memory_gb {weights, gradients, optimizer, activations, extra, total} (GiB per device)
    | None, gpu_memory_gb, fits (True/False/None), headroom_gb, tokens, tokens_exact,
    global_batch, steps, flops, notes, suggestions. Never raises for an unknown model.
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
        "memory_gb": None, "gpu_memory_gb": gpu_gb, "fits": None, "headroom_gb": None,
        **counted, "flops": None, "notes": [], "suggestions": [],
    }
    if kind in CPU_KINDS:
        out["params"] = {"total": 0, "trainable": 0, "method": "none"}
        out["memory_gb"] = dict.fromkeys(MEMORY_KEYS, 0.0)
        out["notes"] = ["no GPU: runs on the CPU"]
        return out
    if arch is None:
        out["notes"] = ["unknown architecture: set models.<name>.architecture for an estimate"]
        return out
    params = stage_params(kind, config, arch)
    mem = {k: round(v / GIB, 2) for k, v in memory_bytes(kind, config, arch, s).items()}
    out.update(params=params, memory_gb=mem,
               flops=stage_flops(kind, config, params, arch.parameter_count(), out["tokens"]),
               notes=_notes(kind, config, arch, s, compute, params))
    if out["tokens_exact"] is False and kind in TRAIN_KINDS:
        out["notes"].append("tokens: upper bound (every sequence at max_seq_len)")
    if gpu_gb and s.gpu:
        out["fits"] = mem["total"] <= gpu_gb
        out["headroom_gb"] = round(gpu_gb - mem["total"], 2)
        if out["fits"] and out["headroom_gb"] < 0.1 * gpu_gb:
            out["notes"].append("tight: under 10% headroom")
        if not out["fits"]:
            out["suggestions"] = suggestions(kind, config, arch, compute, gpu_gb)
    return out


def format_count(n: int | float) -> str:
    """7241732096 -> '7.24B', 41943040 -> '41.9M', 124439808 -> '124M'."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            text = f"{n / div:.3g}"
            return f"{text if 'e' not in text else f'{n / div:.0f}'}{unit}"
    return str(int(n))


def format_gib(gib: float) -> str:
    """18.234 -> '18.2 GiB'."""
    return f"{gib:.1f} GiB"


def summarise(estimate: dict[str, Any]) -> str:
    """One table cell: '7.24B (41.9M trainable) · 18.2 GiB/GPU ok' or '... > 80 GiB'."""
    params = estimate.get("params")
    if params is None:
        return "unknown architecture"
    if params["method"] == "none" and not params["total"]:
        return "CPU only"
    what = {"none": "inference", "full": "full"}.get(params["method"])
    head = f"{format_count(params['total'])} ({what or format_count(params['trainable'])}"
    head += ")" if what else " trainable)"
    mem = (estimate.get("memory_gb") or {}).get("total")
    if mem is None:
        return head
    on_gpu = (estimate.get("setup") or {}).get("gpu", True)
    cell = f"{head} · {format_gib(mem)}{'/GPU' if on_gpu else ' (CPU)'}"
    if estimate.get("fits") is True:
        return cell + " ok"
    if estimate.get("fits") is False:
        return f"{cell} > {estimate['gpu_memory_gb']:g} GiB"
    return cell
