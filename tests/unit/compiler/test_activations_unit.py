"""Structural properties of the activation estimate (no torch).

tests/integration/test_activations.py holds the estimate to measured bytes on small CPU
layers; these tests pin what must hold at any size, and on the GPU paths the CPU cannot
measure: which kernel saves the s x s scores, what checkpointing, grouped-query
attention, fp32 and frozen weights change, and how a stage's config is read.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from llm_recipe.compiler.architectures import FAMILIES, KNOWN
from llm_recipe.compiler.estimate.activations import (
    LAYER_MODELS,
    Trainable,
    checkpoint_shared_bytes,
    checkpointed_layer_bytes,
    head_activation_bytes,
    head_breakdown,
    layer_activation_bytes,
    layer_breakdown,
    loss_transient_bytes,
    trainable_from_config,
    training_activation_bytes,
)

LLAMA = KNOWN["llama-2-7b"]  # 32 heads, no GQA
LLAMA3 = KNOWN["llama-3-8b"]  # 32 heads, 8 kv heads
GPT2 = KNOWN["gpt2"]
B, S = 2, 2048
LORA_ALL = Trainable("lora", lora_r=16, lora_targets="all-linear", lora_dropout=0.05)


def layer(arch=LLAMA, seq: int = S, **kw) -> float:
    args = {"precision": "bf16-true", "attn": "sdpa", **kw}
    return layer_activation_bytes(arch, B, seq, **args)


def items(arch=LLAMA, **kw) -> dict[str, float]:
    args = {"precision": "bf16-true", "attn": "sdpa", **kw}
    return {i.what: i.bytes for i in layer_breakdown(arch, B, S, **args)}


def test_every_family_has_a_layer_model() -> None:
    assert set(LAYER_MODELS) == set(FAMILIES)
    with pytest.raises(ValueError, match="no activation model"):
        layer(replace(LLAMA, family="falcon"))


@pytest.mark.parametrize("arch", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_eager_keeps_the_scores_sdpa_does_not(arch) -> None:
    short = {a: layer(arch, attn=a, seq=128) for a in ("eager", "sdpa")}
    long = {a: layer(arch, attn=a, seq=8192) for a in ("eager", "sdpa")}
    assert long["eager"] > 3 * long["sdpa"]
    assert short["eager"] < 1.5 * short["sdpa"]
    # sdpa is linear in the sequence, eager gains an s^2 term
    assert layer(arch, seq=4096) == pytest.approx(2 * layer(arch, seq=2048), rel=1e-3)
    assert layer(arch, attn="eager", seq=4096) > 2.5 * layer(arch, attn="eager", seq=2048)


def test_gpt2_eager_scores_are_korthikantis_five_bytes() -> None:
    """16-bit softmax output, a bool dropout mask and the dropped probabilities on CUDA:
    5 b a s^2, the attention term of Korthikanti et al."""
    got = items(GPT2, attn="eager")
    scores = got["eager: softmax output"] + got["eager: dropout mask and dropped probabilities"]
    assert scores == 5 * B * GPT2.num_heads * S * S


def test_flash_attention_2_saves_like_sdpa() -> None:
    for arch in (LLAMA3, GPT2):
        assert layer(arch, attn="flash_attention_2") == layer(arch, attn="sdpa")


def test_grouped_query_attention_shrinks_k_and_v_only_for_fused_kernels() -> None:
    mha = replace(LLAMA3, num_kv_heads=LLAMA3.num_heads)
    kv_saving = 2 * 2 * B * S * (LLAMA3.hidden_size - LLAMA3.kv_dim)
    assert layer(mha) - layer(LLAMA3) == kv_saving
    assert layer(mha, attn="eager") == layer(LLAMA3, attn="eager")  # repeat_kv
    # a padding mask makes transformers repeat k/v for sdpa too, and adds a s x s bias
    assert layer(LLAMA3, padded=True) == layer(mha) + 2 * B * S * S


def test_checkpointing_keeps_one_input_per_layer() -> None:
    for arch in (LLAMA, GPT2):
        args = {"precision": "bf16-true", "attn": "sdpa"}
        off = training_activation_bytes(arch, B, S, checkpointing=False, **args)
        on = training_activation_bytes(arch, B, S, checkpointing=True, **args)
        head = head_activation_bytes(arch, B, S, precision="bf16-true")
        loss = loss_transient_bytes(arch, B, S)
        kept = 2 * B * S * arch.hidden_size  # each layer's bf16 input
        assert off == arch.num_layers * layer(arch) + head + loss
        # the loss's logit gradients are gone before the first layer is recomputed
        assert on == arch.num_layers * kept + head + max(layer(arch), loss)
        assert on - head - loss < (off - head - loss) / 5
    assert checkpointed_layer_bytes(LLAMA, B, S, precision="bf16-mixed") == \
        4 * B * S * LLAMA.hidden_size  # autocast's residual stream is fp32
    eager_mask = checkpoint_shared_bytes(LLAMA, B, S, precision="bf16-true", attn="eager")
    assert eager_mask == 2 * B * S * S
    assert checkpoint_shared_bytes(LLAMA, B, S, precision="bf16-true", attn="sdpa") == 0


def test_fp32_doubles_every_16_bit_value() -> None:
    half = items(GPT2, dropout=False)
    full = items(GPT2, precision="fp32", dropout=False)
    assert half.keys() == full.keys()
    for what, value in half.items():
        fp32_anyway = "logsumexp" in what or "mean, rstd" in what
        assert full[what] == (value if fp32_anyway else 2 * value), what
    # Llama's norms keep fp32 copies even in bf16, so fp32 costs less than double
    assert 1.5 * layer() < layer(precision="fp32") < 2 * layer()


def test_autocast_keeps_an_fp32_residual_and_bf16_copies() -> None:
    got = items(precision="bf16-mixed")
    h = LLAMA.hidden_size
    assert got["input_layernorm: normed value"] == 4 * B * S * h
    assert got["self_attn.q_proj, self_attn.k_proj, self_attn.v_proj: autocast bf16 "
               "input copy each"] == 3 * 2 * B * S * h
    assert layer(precision="bf16-mixed") == layer(precision="fp16-mixed")
    assert layer() < layer(precision="bf16-mixed") < layer(precision="fp32")


def test_a_frozen_base_saves_no_linear_input() -> None:
    frozen = Trainable("lora", lora_r=16, lora_targets=(), lora_dropout=0.0)
    got = items(trainable=frozen)
    assert not [w for w in got if w.endswith(": input") or "normed value" in w]
    assert layer(trainable=frozen) < layer()


def test_lora_adds_fp32_inputs_per_adapted_linear() -> None:
    qv = Trainable("lora", lora_r=16, lora_targets=("q_proj", "v_proj"), lora_dropout=0.05)
    frozen = replace(qv, lora_targets=())
    h, r, tokens = LLAMA.hidden_size, 16, B * S
    per_linear = 1 * tokens * h + 4 * tokens * h + 4 * tokens * r  # bool mask, fp32 input
    assert layer(trainable=qv) - layer(trainable=frozen) == 2 * per_linear
    # all-linear keeps an fp32 copy per Linear: more than full fine-tuning saves
    assert layer(trainable=LORA_ALL) > 1.5 * layer()
    no_dropout = replace(LORA_ALL, lora_dropout=0.0)
    assert layer(trainable=no_dropout) < layer(trainable=LORA_ALL)
    assert layer(trainable=replace(LORA_ALL, lora_r=64)) > layer(trainable=LORA_ALL)


def test_qlora_activations_are_fp32() -> None:
    qlora = replace(LORA_ALL, method="qlora")
    lora_fp32 = layer(precision="fp32", trainable=LORA_ALL)
    assert layer(trainable=qlora) == lora_fp32
    assert layer(precision="bf16-mixed", trainable=qlora) == lora_fp32


def test_dropout_masks_are_bools_on_cuda() -> None:
    cuda, cpu = layer(GPT2), layer(GPT2, device="cpu")
    tokens = B * S
    # two residual-branch masks, a byte more each on the CPU, whose bf16 LayerNorms keep
    # their mean and rstd in bf16 (CUDA: fp32)
    assert cpu - cuda == 2 * tokens * GPT2.hidden_size - 2 * 2 * 2 * tokens
    assert layer(GPT2, dropout=False) < cuda
    assert layer(device="cpu") == layer()  # Llama has no dropout


def test_head_keeps_the_fp32_log_softmax() -> None:
    tokens, v = B * S, LLAMA.vocab_size
    full = head_activation_bytes(LLAMA, B, S, precision="bf16-true")
    frozen = head_activation_bytes(LLAMA, B, S, precision="bf16-true", trainable=LORA_ALL)
    assert full > frozen > 4 * tokens * v
    assert "lm_head: input" in {i.what for i in head_breakdown(LLAMA, B, S,
                                                               precision="bf16-true")}
    assert loss_transient_bytes(LLAMA, B, S) == 8 * tokens * v
    score = head_activation_bytes(LLAMA, B, S, precision="bf16-true", lm_head=False)
    assert score < 4 * tokens * v  # a reward model has no vocabulary-sized loss


def test_patch_adds_a_sidecar_to_a_frozen_layer() -> None:
    patch = Trainable("patch", patch_rank=8)
    frozen = Trainable("lora", lora_r=16, lora_targets=(), lora_dropout=0.0)
    h, tokens = LLAMA.hidden_size, B * S
    assert layer(trainable=patch) - layer(trainable=frozen) == \
        3 * 4 * tokens * h + 2 * 4 * tokens * 8 + 2 * 4 * tokens


def test_trainable_from_config() -> None:
    adapter = {"type": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.1}
    got = trainable_from_config({"adapter": adapter}, "lora")
    assert got == Trainable("lora", lora_r=8, lora_targets=("q_proj", "v_proj"),
                            lora_dropout=0.1)
    assert got.adapts("self_attn.q_proj") and not got.adapts("self_attn.k_proj")
    default = trainable_from_config({"adapter": {"type": "qlora"}}, "qlora")
    assert default == Trainable("qlora", lora_r=16, lora_targets="all-linear",
                                lora_dropout=0.05)
    assert default.adapts("mlp.down_proj") and not default.adapts("lm_head")
    assert trainable_from_config({"patch": {"rank": 4}}, "patch") == \
        Trainable("patch", patch_rank=4)
    assert trainable_from_config({}, "full") == Trainable()
    with pytest.raises(ValueError, match="method"):
        layer(trainable=Trainable("prefix"))
    with pytest.raises(ValueError, match="precision"):
        layer(precision="int8")
