"""Model states as the runtime holds them: the bytes-per-parameter table, QLoRA storage,
optimizers, the optimizer step's temporary, DDP buckets, FSDP units, offload (no torch).

The measured counterparts (bitsandbytes, peft, torch's AdamW, DDP, DeepSpeed's own
counting) are in tests/integration/test_model_states.py and test_deepspeed_states.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from llm_recipe.compiler.architectures import KNOWN
from llm_recipe.compiler.estimate import (
    GIB,
    MEMORY_KEYS,
    QLORA_LINEAR_BYTES,
    Setup,
    bytes_per_parameter,
    estimate_stage,
    memory_bytes,
    model_states,
    peak_bytes,
    stage_params,
)

LLAMA7, MISTRAL, GPT2 = KNOWN["llama-2-7b"], KNOWN["mistral-7b"], KNOWN["gpt2"]


def setup(precision: str = "bf16-true", strategy: str = "single", processes: int = 1,
          shard: int = 0, offload: str = "none") -> Setup:
    return Setup(devices=processes, processes=processes, gpu=True, precision=precision,
                 strategy=strategy, shard=shard, offload=offload, checkpointing=True)


def config(optimizer: str = "adamw_torch", adapter: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    cfg: dict[str, Any] = {"train": {"batch_size": 1, "max_seq_len": 128,
                                     "optimizer": optimizer}}
    if adapter:
        cfg["adapter"] = {"r": 16, "target_modules": "all-linear", "double_quant": True,
                          **adapter}
    return cfg


@pytest.mark.parametrize(("s", "row"), [
    (setup("fp32"), (4, 4, 8)),
    (setup("bf16-true"), (2, 2, 4)),
    (setup("bf16-mixed"), (6, 4, 8)),
    (setup("fp16-mixed", "ddp", 2), (6, 4, 8)),
    (setup("bf16-mixed", "fsdp", 8, 3), (4, 4, 8)),
    (setup("bf16-true", "fsdp", 8, 3), (2, 2, 4)),
    (setup("bf16-mixed", "deepspeed", 8, 0), (2, 6, 12)),
    (setup("bf16-mixed", "deepspeed", 8, 1), (2, 6, 12)),
    (setup("bf16-true", "deepspeed", 8, 2), (2, 6, 12)),  # ZeRO's fp32 master anyway
    (setup("fp16-mixed", "deepspeed", 8, 3), (2, 4, 12)),
    (setup("bf16-true", "deepspeed", 8, 0), (2, 2, 4)),  # no ZeRO optimizer at stage 0
])
def test_bytes_per_parameter_is_the_docstring_table(s: Setup, row: tuple[int, ...]) -> None:
    per = bytes_per_parameter(config(), s)
    assert (per["weights"], per["gradients"], per["optimizer"]) == row


def test_optimizer_state_bytes() -> None:
    s = setup("bf16-true")
    assert bytes_per_parameter(config("adamw_8bit"), s)["optimizer"] == 2 + 8 / 256
    assert bytes_per_parameter(config("paged_adamw_32bit"), s)["optimizer"] == 8  # fp32 states
    assert bytes_per_parameter(config("paged_adamw_8bit"), s)["optimizer"] == 2 + 8 / 256
    assert bytes_per_parameter(config("sgd"), s)["optimizer"] == 0


def test_qlora_linear_bytes() -> None:
    # NF4: 4 bits + absmax per 64 weights, 8-bit (+ fp32 per 256 blocks) with double quant
    assert QLORA_LINEAR_BYTES[True] == pytest.approx(0.515869, abs=1e-6)
    assert QLORA_LINEAR_BYTES[False] == 0.5625


@pytest.mark.parametrize(("precision", "copy"), [("bf16-true", 0), ("fp32", 0),
                                                 ("bf16-mixed", 2)])
def test_qlora_weights(precision: str, copy: int) -> None:
    """4-bit block Linears, every other base parameter fp32 (prepare_model_for_kbit_training),
    trl's bf16 adapter, autocast's half copy of the head in the mixed modes."""
    cfg = config(adapter={"type": "qlora"})
    params = stage_params("sft", cfg, MISTRAL)
    st = model_states("sft", cfg, MISTRAL, params, setup(precision))
    n, linear, t = MISTRAL.parameter_count(), MISTRAL.linear_parameter_count(), params["trainable"]
    head = MISTRAL.vocab_size * MISTRAL.hidden_size
    assert st.weights == pytest.approx(linear * QLORA_LINEAR_BYTES[True] + (n - linear) * 4
                                       + t * 2 + copy * head)
    assert (st.gradients, st.optimizer, st.step) == (2 * t, 4 * t, 2 * t)
    value = 4 if precision == "fp32" else 2
    assert st.buffers == value * MISTRAL.largest_linear_parameter_count()  # dequantised
    ppo = model_states("ppo", cfg, MISTRAL, params, setup(precision))  # own loop: fp32 LoRA
    assert (ppo.gradients, ppo.optimizer, ppo.step) == (4 * t, 8 * t, 4 * t)


def test_lora_adapters_stay_fp32() -> None:
    cfg = config(adapter={"type": "lora"})
    params = stage_params("sft", cfg, MISTRAL)
    st = model_states("sft", cfg, MISTRAL, params, setup("bf16-true"))
    t = params["trainable"]
    assert st.weights == 2 * MISTRAL.parameter_count() + 4 * t
    assert (st.gradients, st.optimizer, st.step, st.buffers) == (4 * t, 8 * t, 4 * t, 0)


@pytest.mark.parametrize(("optimizer", "per_param"), [
    ("adamw_torch", 2), ("adamw_8bit", 0), ("paged_adamw_8bit", 0), ("adafactor", 0),
    ("sgd", 0)])
def test_the_step_temporary_of_foreach_adamw(optimizer: str, per_param: int) -> None:
    mem = memory_bytes("sft", config(optimizer), LLAMA7, setup("bf16-true"))
    assert mem["optimizer_step"] == per_param * LLAMA7.parameter_count()


def test_the_peak_takes_the_larger_of_activations_and_the_step() -> None:
    mem = {"weights": 10.0, "gradients": 5.0, "optimizer": 20.0, "optimizer_step": 7.0,
           "activations": 3.0, "extra": 1.0}
    assert peak_bytes(mem) == 36.0 + 7.0
    assert peak_bytes({**mem, "activations": 9.0}) == 36.0 + 9.0
    full = memory_bytes("sft", config(), LLAMA7, setup("bf16-true"))
    assert list(full) == list(MEMORY_KEYS)
    assert full["total"] == peak_bytes(full)
    assert full["total"] < sum(v for k, v in full.items() if k != "total")


def test_ddp_buckets_copy_the_gradients() -> None:
    one = model_states("sft", config(), LLAMA7, stage_params("sft", config(), LLAMA7),
                       setup("bf16-mixed"))
    ddp = model_states("sft", config(), LLAMA7, stage_params("sft", config(), LLAMA7),
                       setup("bf16-mixed", "ddp", 4))
    # a second gradient-sized copy, held from the wrap on: a buffer, not a gradient
    assert ddp.buffers == one.gradients and one.buffers == 0
    assert (ddp.weights, ddp.gradients, ddp.optimizer, ddp.step) == (
        one.weights, one.gradients, one.optimizer, one.step)


@pytest.mark.parametrize("arch", [LLAMA7, KNOWN["llama-3-8b"], GPT2])
def test_fsdp_units(arch) -> None:
    """The root unit gathered with its gradient, one block computed beside the next."""
    cfg, world = config(), 8
    params = stage_params("sft", cfg, arch)
    st = model_states("sft", cfg, arch, params, setup("bf16-mixed", "fsdp", world, 3))
    n = arch.parameter_count()
    assert (st.weights, st.gradients, st.optimizer) == pytest.approx(
        (4 * n / world, 4 * n / world, 8 * n / world))
    assert st.step == 4 * n / world
    root, block = arch.root_parameter_count(), arch.block_parameter_count()
    assert st.buffers == 2 * (2 * root + 3 * block)
    lora = config(adapter={"type": "lora"})
    ad = model_states("sft", lora, arch, stage_params("sft", lora, arch),
                      setup("bf16-mixed", "fsdp", world, 3))
    assert ad.buffers == 2 * (root + 2 * block)  # no full-size unit gradients
    alone = model_states("sft", cfg, arch, params, setup("bf16-mixed", "fsdp", 1, 3))
    assert alone.buffers == 0  # one process: nothing to gather


def test_largest_layer_and_root() -> None:
    assert LLAMA7.largest_layer_parameter_count() == 32000 * 4096  # embedding, not the MLP
    assert KNOWN["llama-3-8b"].largest_layer_parameter_count() == 128256 * 4096
    assert GPT2.largest_layer_parameter_count() == 50257 * 768  # tied head counted once
    assert GPT2.root_parameter_count() == 50257 * 768 + 1024 * 768 + 2 * 768
    assert LLAMA7.root_parameter_count() == 2 * 32000 * 4096 + 4096
    assert LLAMA7.largest_linear_parameter_count() == 4096 * 11008


def test_zero3_gathers_the_largest_layer_even_on_one_gpu() -> None:
    """DeepSpeed's zero3 function counts 4 x the largest layer at any world size."""
    mem = memory_bytes("sft", config(), LLAMA7, setup("bf16-mixed", "deepspeed", 1, 3))
    assert mem["extra"] == 4 * LLAMA7.largest_layer_parameter_count()


def test_cpu_memory_of_offload() -> None:
    cmp = {"launcher": "accelerate", "nodes": 1, "gpus_per_node": 4, "precision": "bf16-mixed",
           "distributed": {"strategy": "deepspeed", "zero_stage": 3, "offload": "parameters"}}
    est = estimate_stage("sft", config(), LLAMA7, cmp)
    n = LLAMA7.parameter_count()
    assert est["cpu_memory_gb"] == pytest.approx(18 * n / 4 / GIB, abs=0.01)
    assert est["memory_gb"]["weights"] == est["memory_gb"]["optimizer_step"] == 0
    none = estimate_stage("sft", config(), LLAMA7, {**cmp, "distributed": {"strategy": "ddp"}})
    assert none["cpu_memory_gb"] == 0
    low = {**cmp, "distributed": {"strategy": "deepspeed", "zero_stage": 2,
                                  "offload": "parameters"}}
    assert any("only at zero_stage 3" in x for x in estimate_stage("sft", config(), LLAMA7,
                                                                  low)["notes"])


def test_paged_optimizers_are_noted() -> None:
    cmp = {"launcher": "accelerate", "nodes": 1, "gpus_per_node": 1, "precision": "auto"}
    est = estimate_stage("sft", config("paged_adamw_8bit"), LLAMA7, cmp)
    assert any(x.startswith("paged_adamw_8bit: optimizer states counted on the GPU")
               for x in est["notes"])
