"""What would fit when a stage does not: concrete alternatives, each with its total.

An estimate that only says "does not fit" leaves the user guessing; this module re-runs
the memory count under changed settings (QLoRA, FSDP over the same or more GPUs,
activation checkpointing, smaller per-device batches at the same global batch or smaller
generation batches) and reports the GiB per GPU of each, so the fix is one edit away.

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.architectures import Architecture
from llm_recipe.compiler.estimate.memory import memory_bytes, stage_params
from llm_recipe.compiler.estimate.setup import GIB, TRAIN_KINDS, fits, resolve_setup

ADAPTER_SUGGEST_KINDS = frozenset({"sft", "reward_model", "dpo", "grpo", "ppo"})
FSDP_SEARCH = (2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


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
        ok = fits(gib, gpu_gb)
        out.append(f"{label}: {gib:.1f} GiB/GPU {'fits' if ok else 'does not fit'}")
        return ok

    def first_fit(options: Any) -> None:
        for label, cfg, cmp in options:
            gib = total(cfg, cmp)
            if fits(gib, gpu_gb):
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
