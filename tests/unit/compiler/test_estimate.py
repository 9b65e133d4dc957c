"""Resource estimates: memory per GPU, sharding, tokens, FLOPs, suggestions (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_recipe.compiler.architectures import KNOWN, lookup
from llm_recipe.compiler.estimate import (
    GIB,
    MEMORY_KEYS,
    RESERVE_GIB,
    estimate_stage,
    format_count,
    summarise,
    training_activation_bytes,
)

MISTRAL = KNOWN["mistral-7b"]
LLAMA7 = KNOWN["llama-2-7b"]


def compute(gpus: int = 1, memory_gb: float | None = 80, launcher: str = "accelerate",
            nodes: int = 1, precision: str = "auto", **dist: Any) -> dict[str, Any]:
    """A compute section with the schema's defaults filled."""
    out: dict[str, Any] = {
        "launcher": launcher, "nodes": nodes, "gpus_per_node": gpus, "precision": precision,
        "distributed": {"strategy": "auto", "offload": "none",
                        "activation_checkpointing": "auto", **dist},
    }
    if memory_gb is not None:
        out["gpu"] = {"type": "H100", "memory_gb": memory_gb}
    return out


def train(**over: Any) -> dict[str, Any]:
    return {"batch_size": 8, "grad_accum": 1, "max_seq_len": 512, "epochs": 3,
            "optimizer": "adamw_torch", **over}


def lora(kind: str = "lora", **over: Any) -> dict[str, Any]:
    return {"type": kind, "r": 16, "alpha": 32, "target_modules": "all-linear",
            "double_quant": True, **over}


def test_qlora_mistral_fits_one_80gb_gpu() -> None:
    est = estimate_stage("sft", {"train": train(), "adapter": lora("qlora")}, MISTRAL, compute())
    assert est["params"] == {"total": 7_241_732_096 + 41_943_040, "trainable": 41_943_040,
                             "method": "qlora"}
    assert est["fits"] is True
    assert est["memory_gb"]["weights"] < 5  # 4-bit linears + fp32 embeddings and head
    # headroom leaves RESERVE_GIB for the CUDA context and workspaces beside the tensors
    assert est["headroom_gb"] == pytest.approx(80 - est["memory_gb"]["total"] - RESERVE_GIB,
                                               abs=0.01)
    assert est["suggestions"] == []
    assert summarise(est).startswith("7.28B (41.9M trainable) · ")
    assert summarise(est).endswith(" GiB/GPU ok")


def test_full_7b_on_24gb_does_not_fit_and_suggests() -> None:
    est = estimate_stage("sft", {"train": train()}, LLAMA7, compute(memory_gb=24))
    assert est["params"]["method"] == "full"
    mem = est["memory_gb"]
    # auto on a GPU is bf16-true: 2 (weights) + 2 (grads) + 4 (two bf16 Adam moments)
    n = LLAMA7.parameter_count()
    assert est["setup"]["precision"] == "bf16-true"
    assert mem["weights"] == pytest.approx(2 * n / GIB, abs=0.01)
    assert mem["gradients"] == pytest.approx(2 * n / GIB, abs=0.01)
    assert mem["optimizer"] == pytest.approx(4 * n / GIB, abs=0.01)
    assert est["fits"] is False and est["headroom_gb"] < 0
    text = "\n".join(est["suggestions"])
    assert any(s.startswith("qlora") and s.endswith("fits") for s in est["suggestions"])
    assert "fsdp over" in text and "GiB/GPU fits" in text
    assert summarise(est).endswith("> 24 GiB")


def test_suggestions_include_checkpointing_when_off() -> None:
    est = estimate_stage("sft", {"train": train(batch_size=16, max_seq_len=2048)}, LLAMA7,
                         compute(memory_gb=24, activation_checkpointing=False))
    assert est["setup"]["activation_checkpointing"] is False
    assert any(s.startswith("activation_checkpointing: true") for s in est["suggestions"])


def test_fsdp_divides_states_by_world_size() -> None:
    cfg = {"train": train()}
    one = estimate_stage("sft", cfg, LLAMA7, compute(gpus=1))["memory_gb"]
    ddp = estimate_stage("sft", cfg, LLAMA7, compute(gpus=8, strategy="ddp"))["memory_gb"]
    fsdp = estimate_stage("sft", cfg, LLAMA7, compute(gpus=8, strategy="fsdp"))["memory_gb"]
    for key in ("weights", "gradients", "optimizer", "optimizer_step"):
        assert fsdp[key] == pytest.approx(one[key] / 8, abs=0.01)
    assert fsdp["activations"] == one["activations"]
    # DDP keeps its all-reduce buckets beside the gradients (gradient_as_bucket_view=False)
    assert ddp["extra"] - one["extra"] == pytest.approx(one["gradients"], abs=0.01)
    assert (ddp["weights"], ddp["gradients"], ddp["optimizer"]) == (
        one["weights"], one["gradients"], one["optimizer"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages(stage: int) -> None:
    """ZeRO shards the fp32 side (gradient partition, master, moments) from stage 1, the
    16-bit gradients from stage 2 and the weights at stage 3. Its optimizer steps an fp32
    master partition whatever the mode, so bf16-true (the GPU default) costs that too."""
    n, world = LLAMA7.parameter_count(), 4
    ds = estimate_stage("sft", {"train": train()}, LLAMA7,
                        compute(gpus=world, strategy="deepspeed", zero_stage=stage))["memory_gb"]
    weights = 2 * n / (world if stage == 3 else 1)
    grads = {1: 2 * n, 2: 2 * n / world, 3: 0}[stage] + 4 * n / world
    assert ds["weights"] == pytest.approx(weights / GIB, abs=0.01)
    assert ds["gradients"] == pytest.approx(grads / GIB, abs=0.01)
    assert ds["optimizer"] == pytest.approx(12 * n / world / GIB, abs=0.01)
    assert ds["optimizer_step"] == pytest.approx(4 * n / world / GIB, abs=0.01)


def test_offload() -> None:
    cfg = {"train": train()}
    n = LLAMA7.parameter_count()
    for offload in ("optimizer", "parameters"):  # FSDP has one offload: all states
        est = estimate_stage("sft", cfg, LLAMA7, compute(gpus=2, strategy="fsdp",
                                                         offload=offload))
        mem = est["memory_gb"]
        assert mem["weights"] == mem["gradients"] == mem["optimizer"] == 0
        assert mem["optimizer_step"] == 0  # the step runs on the CPU
        assert est["cpu_memory_gb"] == pytest.approx(8 * n / 2 / GIB, abs=0.01)
        assert mem["extra"] > 0  # the gathered units are still on the GPU
        noted = any(x.startswith("fsdp offloads") for x in est["notes"])
        assert noted is (offload == "optimizer")
    opt = estimate_stage("sft", cfg, LLAMA7, compute(gpus=2, strategy="deepspeed", zero_stage=2,
                                                     offload="optimizer"))
    assert opt["memory_gb"]["optimizer"] == opt["memory_gb"]["gradients"] == 0
    assert opt["memory_gb"]["weights"] > 0
    assert opt["cpu_memory_gb"] == pytest.approx(16 * n / 2 / GIB, abs=0.01)
    params = estimate_stage("sft", cfg, LLAMA7, compute(gpus=2, strategy="deepspeed",
                                                        zero_stage=3, offload="parameters"))
    assert params["memory_gb"]["weights"] == params["memory_gb"]["gradients"] == 0
    assert params["memory_gb"]["optimizer"] == 0
    ignored = estimate_stage("sft", cfg, LLAMA7, compute(gpus=2, offload="optimizer"))
    assert ignored["memory_gb"]["optimizer"] > 0 and ignored["cpu_memory_gb"] == 0
    assert any("offload" in n for n in ignored["notes"])


def test_local_launcher_runs_one_process() -> None:
    est = estimate_stage("sft", {"train": train()}, LLAMA7,
                         compute(gpus=8, launcher="local", strategy="fsdp"))
    assert est["devices"] == 8 and est["processes"] == 1
    assert any("launcher local" in n for n in est["notes"])


def test_seed_abel_dpo_on_8_gpus() -> None:
    arch = lookup({"hub": "GAIR/Abel-7B-002", "dtype": "bfloat16"}, Path())
    assert arch is MISTRAL
    config = {"train": train(batch_size=2, grad_accum=2, epochs=1), "adapter": lora(),
              "beta": 0.1, "_reference_is_separate_model": False}
    est = estimate_stage("dpo", config, arch, compute(gpus=8, precision="bf16"), examples=4000)
    assert est["devices"] == 8 and est["processes"] == 8
    assert est["global_batch"] == 32
    assert est["params"]["method"] == "lora"
    # the reference is the policy with its adapter off: extra is only DDP's buckets
    assert est["memory_gb"]["extra"] == est["memory_gb"]["gradients"]
    assert est["fits"] is True
    assert est["tokens"] == 4000 * 2 * 512 and est["tokens_exact"] is False
    assert est["steps"] == 125
    separate = estimate_stage("dpo", {**config, "_reference_is_separate_model": True}, arch,
                              compute(gpus=8, precision="bf16"))
    assert separate["memory_gb"]["extra"] - est["memory_gb"]["extra"] == pytest.approx(
        2 * MISTRAL.parameter_count() / GIB, abs=0.01)


def test_dpo_doubles_activations_and_full_dpo_needs_reference() -> None:
    sft = estimate_stage("sft", {"train": train()}, MISTRAL, compute())["memory_gb"]
    dpo = estimate_stage("dpo", {"train": train()}, MISTRAL, compute())["memory_gb"]
    assert dpo["activations"] == pytest.approx(2 * sft["activations"], rel=0.01)
    assert dpo["extra"] == pytest.approx(sft["weights"], abs=0.01)


def test_ppo_counts_companion_models() -> None:
    base = {"train": train(), "adapter": lora(), "generation": {"max_new_tokens": 256,
                                                                "batch_size": 8}}
    with_rm = estimate_stage("ppo", {**base, "reward": {"model": "rm"}}, MISTRAL, compute())
    with_fn = estimate_stage("ppo", {**base, "reward": {"functions": [{}]}}, MISTRAL, compute())
    weights = 2 * MISTRAL.parameter_count() / GIB
    assert with_rm["memory_gb"]["extra"] - with_fn["memory_gb"]["extra"] == pytest.approx(
        weights, abs=0.02)


def test_generation_kv_cache() -> None:
    config = {"generation": {"max_new_tokens": 256, "batch_size": 8}, "n_questions": 100,
              "variants": ["direct", "reflective"], "samples_per_variant": 4}
    est = estimate_stage("rollout", config, MISTRAL, compute())
    rows, length = 8 * 4, 512 + 256
    kv = 2 * 32 * 8 * 128 * length * rows * 2
    assert est["memory_gb"]["extra"] == pytest.approx(kv / GIB, abs=0.01)
    assert est["params"]["method"] == "none" and est["memory_gb"]["optimizer"] == 0
    assert est["tokens"] == 100 * 2 * 4 * 256
    # a generated token: 2 x (Linear weights + head) + 4 L h x (prompt + half the new ones)
    m = MISTRAL.linear_parameter_count() + MISTRAL.vocab_size * MISTRAL.hidden_size
    per_token = 2 * m + 4 * 32 * 4096 * (512 + 128)
    assert est["flops_per_token"] == pytest.approx(per_token)
    assert est["flops"] == pytest.approx(per_token * est["tokens"])


def test_preferences_need_no_gpu() -> None:
    est = estimate_stage("preferences", {"strategy": "correctness_first"}, None, compute())
    assert est["params"]["method"] == "none"
    assert all(est["memory_gb"][k] == 0 for k in MEMORY_KEYS)
    assert est["fits"] is None


def test_tokens_and_flops() -> None:
    # FLOPs per trained token (Kaplan et al. with PaLM's attention term): full 6M + 12 L h s,
    # adapters 4M + 12 L h s + 6T; M = Linear weights + LM head (lookups are free).
    m = LLAMA7.linear_parameter_count() + LLAMA7.vocab_size * LLAMA7.hidden_size
    attention = 12 * 32 * 4096 * 512
    steps = estimate_stage("sft", {"train": train(max_steps=100, epochs=None, grad_accum=4)},
                           LLAMA7, compute(gpus=2))
    assert steps["global_batch"] == 8 * 4 * 2
    assert steps["tokens"] == 100 * 64 * 512 and steps["tokens_exact"] is True
    assert steps["flops_per_token"] == pytest.approx(6 * m + attention)
    assert steps["flops"] == pytest.approx((6 * m + attention) * steps["tokens"])
    # attention is about 2 % of a 7B model's FLOPs at 512 tokens (8 % at 2048)
    assert 0.015 < attention / (6 * m + attention) < 0.025
    epochs = estimate_stage("sft", {"train": train(), "adapter": lora()}, LLAMA7, compute(),
                            examples=1000)
    t = epochs["params"]["trainable"]
    assert epochs["tokens"] == 3 * 1000 * 512 and epochs["tokens_exact"] is False
    assert epochs["flops"] == pytest.approx((4 * m + attention + 6 * t) * epochs["tokens"])
    unknown = estimate_stage("sft", {"train": train()}, LLAMA7, compute())
    assert unknown["tokens"] is None and unknown["flops"] is None


def test_continual_patch() -> None:
    config = {"train": train(epochs=None), "patch": {"rank": 8, "layers": "all"},
              "phases": [{"name": "a", "data": "x", "steps": 100},
                         {"name": "b", "data": "y", "steps": 50}]}
    est = estimate_stage("continual", config, KNOWN["gpt2"], compute(gpus=0, memory_gb=None))
    assert est["params"]["method"] == "patch"
    assert est["params"]["trainable"] == 12 * (2 * 8 * 768 + 768 + 1)
    assert est["steps"] == 150 and est["tokens"] == 150 * 8 * 512
    assert est["setup"]["precision"] == "fp32" and est["fits"] is None


def test_cpu_has_no_fit_verdict() -> None:
    est = estimate_stage("sft", {"train": train()}, KNOWN["gpt2"],
                         compute(gpus=0, launcher="local"))
    assert est["fits"] is None and est["headroom_gb"] is None
    assert est["setup"] == {"gpu": False, "precision": "fp32", "attn_implementation": "sdpa",
                            "strategy": "single",
                            "zero_stage": 0, "offload": "none",
                            "activation_checkpointing": False}
    assert "(CPU)" in summarise(est)


def test_unknown_architecture_does_not_crash() -> None:
    known = estimate_stage("sft", {"train": train()}, MISTRAL, compute())
    est = estimate_stage("sft", {"train": train()}, None, compute())
    assert set(est) == set(known)
    assert est["params"] is None and est["memory_gb"] is None and est["fits"] is None
    assert est["notes"] == ["unknown architecture: set models.<name>.architecture for an estimate"]
    assert summarise(est) == "unknown architecture"


@pytest.mark.parametrize("kind", ["pretrain", "sft", "rollout", "preferences", "dpo", "grpo",
                                  "ppo", "eval", "continual"])
def test_every_kind_is_json(kind: str) -> None:
    config = {"train": train(), "generation": {"max_new_tokens": 64, "batch_size": 4},
              "models": ["a", "b"], "reward": {"model": "rm"}, "patch": {"rank": 4},
              "phases": [{"name": "p", "data": "d", "steps": 10}]}
    est = estimate_stage(kind, config, KNOWN["qwen2-0.5b"], compute(memory_gb=1), examples=50)
    assert json.loads(json.dumps(est)) == est
    assert isinstance(summarise(est), str)


def test_format_count() -> None:
    assert format_count(7_241_732_096) == "7.24B"
    assert format_count(41_943_040) == "41.9M"
    assert format_count(124_439_808) == "124M"
    assert format_count(512) == "512"


@pytest.mark.parametrize(("precision", "weights", "grads", "optim"), [
    ("fp32", 4, 4, 8),
    ("bf16-true", 2, 2, 4),
    ("bf16", 2, 2, 4),  # bf16 is bf16-true
    ("bf16-mixed", 4, 4, 8),  # fp32 master (+ autocast's copies); fp32 grads and moments
    ("fp16-mixed", 4, 4, 8),
    ("fp16", 4, 4, 8),  # fp16 is fp16-mixed
])
def test_bytes_per_parameter_by_precision(precision: str, weights: int, grads: int,
                                          optim: int) -> None:
    est = estimate_stage("sft", {"train": train()}, LLAMA7, compute(precision=precision))
    n, mem = LLAMA7.parameter_count(), est["memory_gb"]
    # autocast copies, in 16 bits, the weights a forward multiplies by: Linears and head
    copies = 2 * LLAMA7.matmul_parameter_count() if "mixed" in est["setup"]["precision"] else 0
    assert mem["weights"] == pytest.approx((weights * n + copies) / GIB, abs=0.01)
    assert mem["gradients"] == pytest.approx(grads * n / GIB, abs=0.01)
    assert mem["optimizer"] == pytest.approx(optim * n / GIB, abs=0.01)
    assert est["setup"]["precision"] == {"bf16": "bf16-true", "fp16": "fp16-mixed"}.get(
        precision, precision)


def test_mixed_precision_under_deepspeed_is_zero_accounting() -> None:
    """Stage 0 mixed is DeepSpeed's FP16_Optimizer: 16-bit weights and gradients, an fp32
    gradient copy, fp32 master and moments: 20 bytes (DeepSpeed's zero2 figure at N=1)."""
    est = estimate_stage("sft", {"train": train()}, LLAMA7,
                         compute(precision="bf16-mixed", strategy="deepspeed", zero_stage=0))
    n, mem = LLAMA7.parameter_count(), est["memory_gb"]
    assert (mem["weights"], mem["gradients"]) == pytest.approx((2 * n / GIB, 6 * n / GIB),
                                                               abs=0.01)
    assert mem["optimizer"] == pytest.approx(12 * n / GIB, abs=0.01)


def test_fp16_mixed_on_cpu_is_fp32_and_bf16_true_is_kept() -> None:
    cpu = compute(gpus=0, launcher="local", memory_gb=None)
    fp16 = estimate_stage("sft", {"train": train()}, KNOWN["gpt2"], {**cpu, "precision": "fp16"})
    bf16 = estimate_stage("sft", {"train": train()}, KNOWN["gpt2"],
                          {**cpu, "precision": "bf16-true"})
    assert fp16["setup"]["precision"] == "fp32" and bf16["setup"]["precision"] == "bf16-true"


def test_lora_base_is_stored_in_the_load_dtype() -> None:
    cfg = {"train": train(), "adapter": lora()}
    n = MISTRAL.parameter_count()
    true = estimate_stage("sft", cfg, MISTRAL, compute(precision="bf16-true"))["memory_gb"]
    mixed = estimate_stage("sft", cfg, MISTRAL, compute(precision="bf16-mixed"))["memory_gb"]
    copies = 2 * MISTRAL.matmul_parameter_count()  # autocast's, of the Linears and head
    assert mixed["weights"] - true["weights"] == pytest.approx((2 * n + copies) / GIB,
                                                               abs=0.02)
    assert mixed["optimizer"] == true["optimizer"]  # adapters train in fp32 either way


@pytest.mark.parametrize("attn", ["eager", "sdpa", "flash_attention_2"])
def test_activations_follow_the_attention_implementation(attn: str) -> None:
    arch = KNOWN["llama-2-7b"]
    b, s = 2, 2048
    cfg = {"train": train(batch_size=b, max_seq_len=s)}
    est = estimate_stage("sft", cfg, arch, {**compute(precision="bf16-true",
                                                      activation_checkpointing=False),
                                            "attn_implementation": attn})
    assert est["setup"]["attn_implementation"] == attn
    # The per-op model is measured by tests/integration/test_activations.py; here: wiring.
    want = training_activation_bytes(arch, b, s, precision="bf16-true", attn=attn,
                                      checkpointing=False)
    assert est["memory_gb"]["activations"] == pytest.approx(want / GIB, abs=0.01)


def test_eager_attention_needs_more_than_sdpa() -> None:
    cfg = {"train": train(batch_size=4, max_seq_len=4096)}
    mem = {attn: estimate_stage("sft", cfg, LLAMA7, {**compute(), "attn_implementation": attn}
                                )["memory_gb"]["activations"]
           for attn in ("eager", "sdpa", "flash_attention_2")}
    assert mem["eager"] > mem["sdpa"] == mem["flash_attention_2"]


def test_a_fit_leaves_room_for_the_cuda_context() -> None:
    from llm_recipe.compiler.estimate import fits

    assert fits(80 - RESERVE_GIB, 80) and not fits(79.5, 80)
