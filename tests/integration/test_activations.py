"""The plan's activation estimate, held to what real decoder layers save for the backward.

Why: ``recipe plan`` decides whether a stage fits its GPUs with
llm_recipe.compiler.estimate.activations, a stdlib table of what each op of a decoder
layer keeps for the backward. The table is only as good as its agreement with what
transformers, peft and torch actually save, and all three change between versions. So
this file builds the layers the runtime trains (configs from ``runtime.models.hf_config``,
peft configs from ``runtime.adapters.lora_config``, ``use_cache`` off and checkpointing
on as the Trainer sets them), counts the bytes autograd saves with
``torch.autograd.graph.saved_tensors_hooks`` and holds the estimate to 5 %.

How: each distinct storage is counted once (views and shared inputs alike); parameters,
buffers and, under autocast, its bf16 copies of the weights (memory.py counts those with
the weights) are left out. One layer is a 2-layer model minus the same model with one
layer, so what a layer shares with the rest (rotary cos/sin, masks) stays out of it, and
the rest, the 1-layer model minus that layer, is the head term (embeddings, final norm,
head, loss). With a frozen base, ``enable_input_require_grads`` makes the first layer
like the others (without it the first layer, before any adapter, saves less). A
checkpointed layer is measured twice: what it keeps from the forward, and, during the
backward, what its recompute saves (through torch's own recomputation hook).

The CPU runs the same layers as a GPU, with differences the estimator takes as
``device='cpu'``: dropout masks are kept in the value dtype instead of as bools, bf16
LayerNorm statistics in bf16 instead of fp32, and CPU autocast leaves gelu_new's pow in
bf16 (CUDA's runs it in fp32). SDPA with dropout falls back to the math kernel on the
CPU, so GPT-2's attention dropout is 0 in the sdpa cases (on a GPU the flash kernel
drops out in place, which is what the estimate assumes). flash_attention_2 needs a GPU:
the estimate models it as sdpa's flash kernel, which is what it saves.

Run ``python tests/integration/test_activations.py`` for the measured-vs-estimated table.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import torch
import torch.utils.checkpoint as torch_checkpoint

from llm_recipe.compiler.architectures import FAMILIES, Architecture
from llm_recipe.compiler.estimate.activations import (
    LAYER_MODELS,
    Trainable,
    checkpoint_shared_bytes,
    checkpointed_layer_bytes,
    head_activation_bytes,
    head_breakdown,
    layer_activation_bytes,
)

MEASURED_FAMILIES = ("gpt2", "llama", "mistral", "qwen2")
HIDDEN, HEADS, KV_HEADS, INTER, VOCAB, POSITIONS = 64, 4, 2, 160, 200, 128
BATCH, SEQ = 2, 48  # b*s = 96 matches no weight dimension: see _autocast_weight_copy
TOLERANCE = 0.05
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}  # the schema's dropout default
ATTENTION_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
pytestmark = [
    pytest.mark.integration, pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings(
        "ignore:fan_in_fan_out is set to False",  # peft on GPT-2's Conv1D, as intended
        "ignore:`is_gradient_checkpointing` is deprecated"),  # peft asking transformers 5
]


@dataclass(frozen=True)
class Case:
    family: str
    attn: str = "sdpa"
    precision: str = "bf16-true"
    checkpointing: bool = False
    lora: str | tuple[str, ...] | None = None
    dropout: bool = True  # the model's own dropout (GPT-2's 0.1); trl turns it off for dpo
    padded: bool = False

    def __str__(self) -> str:
        parts = [self.family, self.attn, self.precision]
        if self.checkpointing:
            parts.append("ckpt")
        if self.lora is not None:
            parts.append("lora:" + (self.lora if isinstance(self.lora, str)
                                    else "+".join(self.lora)))
        if not self.dropout:
            parts.append("no-dropout")
        if self.padded:
            parts.append("padded")
        return "-".join(parts)

    @property
    def trainable(self) -> Trainable:
        if self.lora is None:
            return Trainable()
        return Trainable("lora", lora_r=LORA["r"], lora_targets=self.lora,
                         lora_dropout=LORA["dropout"])


CASES = (
    # Every family, both attention kernels, checkpointing off and on, in bf16-true.
    [Case(f, attn, checkpointing=ckpt) for f in MEASURED_FAMILIES
     for attn in ("sdpa", "eager") for ckpt in (False, True)]
    # fp32 and autocast (CPU autocast to bf16 stands for the mixed modes).
    + [Case(f, precision=p) for f in MEASURED_FAMILIES for p in ("fp32", "bf16-mixed")]
    # LoRA r=8 on the attention input projections and on all linears, base frozen.
    + [Case(f, lora=tuple(ATTENTION_TARGETS[f])) for f in ("llama", "gpt2")]
    + [Case(f, lora="all-linear") for f in ("llama", "gpt2")]
    # Beyond the grid: dropout off (trl's disable_dropout), autocast with eager and with
    # LoRA, a padding mask, checkpointed LoRA and the mixed checkpoint input.
    + [Case("gpt2", "sdpa", dropout=False), Case("gpt2", "eager", dropout=False),
       Case("gpt2", "eager", "bf16-mixed"), Case("llama", "eager", "bf16-mixed"),
       Case("llama", "eager", "fp32"),
       Case("llama", precision="bf16-mixed", lora="all-linear"),
       Case("llama", padded=True), Case("gpt2", padded=True),
       Case("llama", checkpointing=True, lora="all-linear"),
       Case("llama", precision="bf16-mixed", checkpointing=True)]
)


def architecture(family: str, layers: int) -> Architecture:
    """The test shape in the compiler's terms (GPT-2 has no grouped-query attention)."""
    kv = HEADS if family == "gpt2" else KV_HEADS
    return Architecture(family, HIDDEN, layers, HEADS, kv, INTER, VOCAB, POSITIONS,
                        family == "gpt2", family in ("gpt2", "qwen2"), f"test-{family}")


def hf_config(family: str, layers: int) -> Any:
    """The transformers config, built as the runtime builds it for an init model.

    ``runtime.models.hf_config`` covers the init families; Mistral (hub-only) gets the
    same field mapping, the one ``architectures.from_hf_config`` reads back.
    """
    from llm_recipe.runtime import models

    arch = architecture(family, layers)
    special = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if family != "mistral":
        return models.hf_config(arch, special)
    from transformers import MistralConfig

    return MistralConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=layers,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=INTER, max_position_embeddings=POSITIONS,
                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2)


def build(case: Case, layers: int) -> Any:
    """The model a stage would train, in train mode."""
    from transformers import AutoModelForCausalLM

    config = hf_config(case.family, layers)
    if case.family == "gpt2" and case.attn == "sdpa":
        config.attn_pdrop = 0.0  # SDPA's CPU kernel cannot drop out (see the docstring)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=case.attn)
    model.to(torch.bfloat16 if case.precision == "bf16-true" else torch.float32)
    model.config.use_cache = False  # the Trainer sets TrainingArguments.use_cache (False)
    if not case.dropout:
        for module in model.modules():  # what trl's disable_dropout does
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if case.lora is not None:
        from peft import get_peft_model

        from llm_recipe.runtime.adapters import lora_config

        targets = case.lora if isinstance(case.lora, str) else list(case.lora)
        model = get_peft_model(model, lora_config({**LORA, "target_modules": targets}))
    if case.checkpointing:
        # As transformers' Trainer calls it when TrainingArguments.activation_checkpointing
        # is on: no kwargs, so use_reentrant=False; it also enables input gradients.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=None,
                                              every_n_layers=1, offload=False)
    elif case.lora is not None:
        model.enable_input_require_grads()
    model.train()
    return model


class Storages:
    """Distinct storages and their bytes, leaving out the model's own tensors."""

    def __init__(self, model: Any, autocast: bool) -> None:
        self.own = {t.untyped_storage().data_ptr()
                    for t in (*model.parameters(), *model.buffers())}
        self.weight_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
        self.autocast = autocast
        self.seen: dict[int, int] = {}

    def _autocast_weight_copy(self, t: torch.Tensor) -> bool:
        # Autocast's bf16 copy of a weight (or its transpose); activations are 2-D only as
        # (b*s, features) views, and b*s matches no weight dimension here.
        return self.autocast and t.dim() == 2 and (
            tuple(t.shape) in self.weight_shapes or tuple(t.shape[::-1]) in self.weight_shapes)

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self.own or storage.nbytes() == 0 or self._autocast_weight_copy(t):
            return
        self.seen.setdefault(ptr, storage.nbytes())

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def forward(case: Case, model: Any) -> tuple[int, torch.Tensor]:
    """(bytes saved by the forward and the loss, the loss)."""
    autocast = case.precision in ("bf16-mixed", "fp16-mixed")
    saved = Storages(model, autocast)

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.add(t)
        return t

    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ))
    mask = torch.ones_like(ids)
    if case.padded:
        mask[0, -SEQ // 4:] = 0
    amp = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
           else contextlib.nullcontext())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    return saved.total, loss


def recompute_bytes(case: Case, model: Any, loss: torch.Tensor) -> int:
    """The most one checkpointed layer's recompute saves, measured during the backward.

    torch's non-reentrant checkpoint recomputes a layer under its private
    ``_recomputation_hook`` (a saved_tensors_hooks); a subclass counts what it packs.
    """
    assert hasattr(torch_checkpoint, "_recomputation_hook"), (
        "torch.utils.checkpoint._recomputation_hook is gone: find how this torch "
        "recomputes checkpointed layers and count what that saves")
    frames: dict[int, Storages] = {}
    autocast = case.precision in ("bf16-mixed", "fp16-mixed")

    class Counting(torch_checkpoint._recomputation_hook):  # type: ignore[name-defined,misc]
        def __init__(self, frame_ref: Any, gid: Any) -> None:
            super().__init__(frame_ref, gid)
            saved = frames.setdefault(id(frame_ref()), Storages(model, autocast))
            inner = self.pack_hook

            def pack(t: torch.Tensor) -> Any:
                saved.add(t)
                return inner(t)

            self.pack_hook = pack

    with mock.patch.object(torch_checkpoint, "_recomputation_hook", Counting):
        loss.backward()
    assert frames, "no layer was recomputed: checkpointing is not on"
    return max(s.total for s in frames.values())


@dataclass
class Measured:
    layer: float
    head: float
    recompute: float | None = None


def measure(case: Case) -> Measured:
    one, _ = forward(case, build(case, 1))
    model = build(case, 2)
    two, loss = forward(case, model)
    layer = two - one
    recompute = recompute_bytes(case, model, loss) if case.checkpointing else None
    return Measured(layer, one - layer, recompute)


def estimate(case: Case) -> Measured:
    arch = architecture(case.family, 2)
    common = {"precision": case.precision, "trainable": case.trainable}
    cpu = {"dropout": case.dropout, "device": "cpu"}
    full = layer_activation_bytes(arch, BATCH, SEQ, attn=case.attn, padded=case.padded,
                                  **common, **cpu)
    head = head_activation_bytes(arch, BATCH, SEQ, **common, **cpu)
    if case.checkpointing:
        # The checkpoints also keep the inputs all layers share. GPT-2 passes its mask
        # positionally, so torch saves it where the hooks see it. The other families pass
        # mask and rotary cos/sin as keywords, which the checkpoint holds out of the
        # hooks' sight: cos/sin then show up first in the recompute, not in the head.
        if case.family == "gpt2":
            head += checkpoint_shared_bytes(arch, BATCH, SEQ, attn=case.attn,
                                            padded=case.padded, **common)
        else:
            rotary = sum(i.bytes for i in head_breakdown(arch, BATCH, SEQ, **common, **cpu)
                         if i.what.startswith("rotary"))
            head, full = head - rotary, full + rotary
        return Measured(checkpointed_layer_bytes(arch, BATCH, SEQ, **common), head, full)
    return Measured(full, head)


def row(case: Case, got: Measured, want: Measured) -> str:
    def pair(a: float | None, b: float | None) -> str:
        if a is None or b is None:
            return f"{'':>21}"
        return f"{a:>9.0f} {b:>9.0f} {a / b - 1:+5.1%}"

    return (f"{case!s:<42} {pair(got.layer, want.layer)}  {pair(got.head, want.head)}  "
            f"{pair(got.recompute, want.recompute)}")


HEADER = (f"{'case':<42} {'layer: measured estimate':>27}  {'head: measured estimate':>27}"
          f"  {'recompute: measured estimate':>27}")


def test_every_family_is_measured() -> None:
    """A family the compiler knows must be measured here before the estimate trusts it."""
    assert set(FAMILIES) == set(MEASURED_FAMILIES) == set(LAYER_MODELS)
    grid = {(c.family, c.attn, c.checkpointing) for c in CASES if c.precision == "bf16-true"}
    for family in FAMILIES:
        for attn in ("sdpa", "eager"):
            for ckpt in (False, True):
                assert (family, attn, ckpt) in grid


@pytest.mark.parametrize("case", CASES, ids=str)
def test_saved_bytes_match_the_estimate(case: Case) -> None:
    got, want = measure(case), estimate(case)
    print(row(case, got, want))
    assert got.layer == pytest.approx(want.layer, rel=TOLERANCE)
    assert got.head == pytest.approx(want.head, rel=TOLERANCE)
    if case.checkpointing:
        assert got.recompute == pytest.approx(want.recompute, rel=TOLERANCE)


def test_sdpa_with_dropout_on_the_cpu_saves_the_probabilities() -> None:
    """Why GPT-2's attention dropout is 0 in the sdpa cases: with dropout SDPA's CPU
    dispatcher takes the math kernel, which keeps b x a x s x s probabilities and its
    mask (a GPU's flash kernel drops out in place and keeps neither)."""
    from transformers import AutoModelForCausalLM

    case = Case("gpt2")
    config = hf_config("gpt2", 1)  # attn_pdrop 0.1, as the runtime builds it
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.to(torch.bfloat16).train()
    model.config.use_cache = False
    with_dropout, _ = forward(case, model)
    without, _ = forward(case, build(case, 1))
    assert with_dropout - without >= 2 * 2 * BATCH * HEADS * SEQ * SEQ


def test_continual_patch_layer_matches_the_estimate() -> None:
    """The continual stage's patch (frozen base in eval mode, an fp32 sidecar on every
    layer, its regularisers in the loss), as runtime.continual attaches and trains it.
    Layers 1 and 2 are steady (their inputs carry gradients), so 3 layers minus 2 is one."""
    from transformers import AutoModelForCausalLM

    from llm_recipe.runtime.continual import losses
    from llm_recipe.runtime.continual import patch as continual

    rank, case = 4, Case("llama", dropout=False)

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(hf_config("llama", layers),
                                                 attn_implementation="sdpa")
        model.to(torch.bfloat16).eval()
        model.config.use_cache = False
        continual.freeze_base(model)
        attachment = continual.attach(
            model, continual.patch_config(model, rank, "all", -4.0), seed=0)
        storages = Storages(model, autocast=False)

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages.add(t)
            return t

        ids = torch.randint(3, VOCAB, (BATCH, SEQ))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with attachment.record() as records:
                logits = model(input_ids=ids, use_cache=False).logits
            nll, _ = losses.token_ce(logits, ids, torch.ones_like(ids))
            scales = [b.scale for b in attachment.patches.blocks.values()]
            regs = losses.regularisers(records, scales)
            (nll.sum() + regs["gate"] + regs["patch"] + regs["scale_penalty"]).backward()
        return storages.total

    got = saved(3) - saved(2)
    want = layer_activation_bytes(architecture("llama", 3), BATCH, SEQ, precision=case.precision,
                                  attn="sdpa", trainable=Trainable("patch", patch_rank=rank),
                                  dropout=False, device="cpu")
    print(f"{'llama-sdpa-bf16-true-continual-patch':<42} {got:>9.0f} {want:>9.0f}")
    assert got == pytest.approx(want, rel=TOLERANCE)


if __name__ == "__main__":
    print(HEADER)
    for c in CASES:
        print(row(c, measure(c), estimate(c)))
