"""What one decoder layer saves for the backward, op by op, as the runtime's models save it.

The memory estimate needs the bytes a training step keeps alive between the forward and
the backward. A textbook formula (Korthikanti et al. 2022, for a GPT block with eager
attention) is wrong for what the runtime trains: Hugging Face transformers decoder layers
with SDPA attention save far less than it says, Llama's SwiGLU MLP saves more than a GPT
MLP, RMSNorm keeps an fp32 copy of its input, peft keeps LoRA weights in fp32 and casts
each adapted layer's input to fp32, and with frozen base weights a Linear does not save
its input at all. So this module lists what each op of one decoder layer saves, and
tests/integration/test_activations.py measures the same layers (transformers 5.24,
torch 2.13, peft 0.21; ``torch.autograd.graph.saved_tensors_hooks``, each storage counted
once, parameters and autocast's weight copies left out) and holds every family,
precision, attention kernel, checkpointing and adapter case here to within 5 % (on the
CPU they agree to within a few bytes).

Notation: b batch, s sequence, T = b*s tokens, h hidden, kv = kv_heads * head_dim, I the
MLP width, a heads, r the LoRA rank, V the vocabulary. Bytes per value: ``half`` is what
a matmul writes (2 in bf16-true and under autocast, 4 in fp32), ``res`` the residual
stream (2 in bf16-true; 4 in fp32 and under autocast, whose fp32 embeddings make every
residual add fp32). ``m`` is a dropout mask: 1 byte on CUDA (a bool), on the CPU one
value of the dropped tensor's dtype. "full": only when the base weights train.

Llama, Mistral, Qwen2 (RMSNorm, rotary, SwiGLU), one layer:

    op                  saves                               bytes        when
    input_layernorm     fp32 input (pow, x * rsqrt)         4 T h
                        rsqrt                               4 T
                        normed value (weight's gradient)    res T h      full
    q/k/v_proj          their shared input                  res T h      full
                        or autocast's bf16 copy, one each   3 * 2 T h    full, autocast
    sdpa, flash         q (rotated) and the output          2 half T h
                        k (rotated), v: grouped, as they    2 half T kv
                        are (transformers passes enable_gqa)
                        logsumexp                           4 b a s
    eager               q, k and v repeated to all heads    3 half T h
                        softmax output (fp32 by request)    4 b a s^2
                        its 16-bit cast for matmul(p, v)    2 b a s^2    half = 2
                        o_proj input (contiguous output)    half T h     full
    post_attention_layernorm, gate/up_proj: as input_layernorm, q/k/v_proj
    act_fn (silu)       gate output                         half T I
    gate * up           silu output, up output              2 half T I
    down_proj           the product                         half T I     full

GPT-2 (LayerNorm, fused qkv Conv1D, gelu_new, dropout 0.1 on the embeddings, attention
probabilities and both residual branches), one layer:

    op                  saves                               bytes        when
    ln_1, ln_2          input; mean and rstd (fp32)         res T h; 8 T
    c_attn, c_fc        input (autocast: a bf16 copy)       res T h      full
    sdpa, flash         q, k, v: views of c_attn's output   3 half T h
                        output (c_proj's input); logsumexp  half T h; 4 b a s
    eager               q, k, v (reshape copies)            3 half T h
                        softmax output (fp32 if autocast)   half b a s^2
                        dropout mask, dropped probabilities (m + half) b a s^2
                        or autocast's bf16 probabilities    2 b a s^2    no dropout
                        c_proj input                        half T h     full
    dropouts            resid_dropout and mlp.dropout masks 2 m T h
    act (gelu_new)      x, 0.5 x, 1 + tanh, tanh            4 half T I   (*)
    mlp.c_proj          gelu output                         half T I     full (*)

(*) CUDA autocast runs pow in fp32, and the gelu's sums and tanh follow it: 14 T I, and
a bf16 copy of the fp32 gelu output for mlp.c_proj. The CPU's autocast does not.

With frozen base weights (LoRA, QLoRA, the continual patch) a Linear saves nothing, and
neither does a norm's weight multiply: the "full" rows go. Each LoRA-adapted Linear adds,
whatever the base (peft casts the input to its fp32 weights, then applies lora_dropout):

    op                  saves                               bytes
    lora_dropout        mask (CPU: fp32)                    m T in       dropout > 0
    lora_A              the dropped fp32 input              4 T in       (autocast: 2)
                        or, without dropout, the fp32 cast  4 T in       each Linear
    lora_B              lora_A's output                     4 T r        (autocast: 2)

so q, k and v adapted separately each keep an fp32 copy of the same input, and LoRA on
'all-linear' saves more than full fine-tuning does (Llama-2-7B on a GPU: 1.7x per layer
with the default lora_dropout 0.05, 1.5x without; the tests' small layers: 1.8-2.4x).
QLoRA runs like LoRA on fp32 activations: peft's ``prepare_model_for_kbit_training``
casts every weight that is not 4-bit (embeddings, norms, head) to fp32, and a Linear4bit
casts its output back to its input's dtype, so the residual stream and every matmul
output are fp32 (bitsandbytes' 4-bit matmul itself saves no activation). The continual
patch (method 'patch') is a frozen base plus, per patched layer, an fp32 sidecar that
keeps its fp32 input, the rank-r GELU input and output, the gate and the delta the
regulariser squares.


Choices, for GPUs, where the estimate is used:

- sdpa is the flash kernel (16-bit, no mask) or the memory-efficient one (fp32, or a
  mask): both save q, k, v, the output and an fp32 logsumexp, and both take grouped
  k/v as they are. flash_attention_2 saves the same. Neither runs on a CPU; the CPU's
  flash kernel saves the same set, and that is what the tests measure.
- Attention dropout (GPT-2's 0.1) runs inside the GPU kernels and saves only an RNG seed.
  On the CPU, SDPA with dropout falls back to the math kernel, which saves the s x s
  probabilities: the tests measure sdpa with GPT-2's attention dropout at 0.
- Dropout masks are bools on CUDA; the CPU keeps them in the value dtype (``device``).
- Batches are unpadded (packed, or one length), as the estimate's every-sequence-at-
  max_seq_len assumption has it. A padding mask (``padded``) makes sdpa take the
  memory-efficient kernel with an additive 16-bit b x s x s bias saved per layer, and
  transformers then repeats grouped k/v to all heads.
- Not modelled: sequences longer than Mistral's sliding window, fp16's loss scaler;
  QLoRA in the mixed modes is counted as fp32 (an upper bound).

The whole training step (embeddings, head, loss, checkpointing) is :mod:`.activations`.

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler.architectures import Architecture

PRECISIONS = ("bf16-true", "bf16-mixed", "fp16-mixed", "fp32")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")
METHODS = ("full", "lora", "qlora", "patch")
DEVICES = ("cuda", "cpu")
DEFAULT_LORA_R = 16  # the schema's adapter defaults, as stage_params reads them
DEFAULT_LORA_DROPOUT = 0.05
DEFAULT_PATCH_RANK = 8


@dataclass(frozen=True)
class Trainable:
    """What a stage trains, as far as saved activations care.

    ``full``: every weight; ``lora``/``qlora``: a frozen base (4-bit for QLoRA) with
    rank-``lora_r`` adapters on ``lora_targets`` ('all-linear' or module names, matched
    like peft: equal to the module path or its last dotted parts); ``patch``: a frozen
    base with the continual stage's rank-``patch_rank`` sidecar on every layer.
    """

    method: str = "full"
    lora_r: int = 0
    lora_targets: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.0
    patch_rank: int = 0

    @property
    def frozen_base(self) -> bool:
        return self.method != "full"

    def adapts(self, path: str) -> bool:
        """Whether LoRA adapts the Linear at ``path`` (e.g. 'self_attn.q_proj')."""
        if self.method not in ("lora", "qlora") or self.lora_r <= 0:
            return False
        if self.lora_targets == "all-linear":
            return path != "lm_head"
        names = (self.lora_targets,) if isinstance(self.lora_targets, str) else self.lora_targets
        return any(path == n or path.endswith("." + n) for n in names)


FULL = Trainable()


def trainable_from_config(kind_config: dict[str, Any], method: str) -> Trainable:
    """The :class:`Trainable` of a stage from its config and ``stage_params``' method.

    Reads ``config['adapter']`` {'r', 'target_modules', 'dropout'} for lora/qlora and
    ``config['patch']['rank']`` for the continual patch, with the schema's defaults.
    """
    if method in ("lora", "qlora"):
        adapter = kind_config.get("adapter") or {}
        targets = adapter.get("target_modules", "all-linear")
        if not isinstance(targets, str):
            targets = tuple(targets)
        return Trainable(method, lora_r=int(adapter.get("r", DEFAULT_LORA_R)),
                         lora_targets=targets,
                         lora_dropout=float(adapter.get("dropout", DEFAULT_LORA_DROPOUT)))
    if method == "patch":
        rank = int((kind_config.get("patch") or {}).get("rank", DEFAULT_PATCH_RANK))
        return Trainable("patch", patch_rank=rank)
    return FULL


@dataclass(frozen=True)
class Saved:
    """One tensor (or group of same-sized tensors) kept for the backward."""

    what: str
    bytes: float


@dataclass(frozen=True)
class _Step:
    """The sizes and dtypes one estimate needs, resolved once."""

    arch: Architecture
    b: int
    s: int
    half: int  # bytes of a matmul output
    res: int  # bytes of the residual stream
    autocast: bool
    cuda: bool
    train: Trainable
    dropout: bool  # the model's own dropout (GPT-2) is active

    @property
    def t(self) -> int:
        return self.b * self.s

    def mask(self, value_bytes: int) -> int:
        """Bytes of a dropout mask over values of ``value_bytes``."""
        return 1 if self.cuda else value_bytes


def _step(arch: Architecture, batch: int, seq: int, precision: str, trainable: Trainable,
          dropout: bool, device: str) -> _Step:
    """Resolve the value sizes: QLoRA's activations are fp32 whatever the mode (see the
    module docstring), the mixed modes autocast matmuls over an fp32 residual stream."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if trainable.method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {trainable.method!r}")
    if trainable.method == "qlora" or precision == "fp32":
        half, res, autocast = 4, 4, False
    elif precision == "bf16-true":
        half, res, autocast = 2, 2, False
    else:
        half, res, autocast = 2, 4, True
    return _Step(arch, batch, seq, half, res, autocast, device == "cuda", trainable,
                 dropout and arch.family == "gpt2")


def _linears(z: _Step, paths: list[str], fan_in: int, input_bytes: int,
             already_saved: bool = False) -> list[Saved]:
    """What Linears reading one input tensor save for their weights' gradients.

    A trainable base saves the input once for all of them (no autocast), or one bf16 copy
    each when autocast casts an fp32 input; ``already_saved``: another op keeps it.
    A frozen base saves nothing; each LoRA-adapted one saves its own fp32 (autocast:
    bf16) input copy, the dropout mask, and lora_A's output.
    """
    out: list[Saved] = []
    tokens_in = z.t * fan_in
    if not z.train.frozen_base:
        if z.autocast and input_bytes == 4:
            out.append(Saved(f"{', '.join(paths)}: autocast bf16 input copy each",
                             len(paths) * 2.0 * tokens_in))
        elif not already_saved:
            out.append(Saved(f"{', '.join(paths)}: input", float(input_bytes * tokens_in)))
        return out
    shared_done = already_saved
    for path in paths:
        if not z.train.adapts(path):
            continue
        r, p = z.train.lora_r, z.train.lora_dropout
        if p > 0:
            out.append(Saved(f"{path}.lora_dropout: mask", float(z.mask(4) * tokens_in)))
            out.append(Saved(f"{path}.lora_A: dropped input",
                             (2.0 if z.autocast else 4.0) * tokens_in))
        elif z.autocast:
            out.append(Saved(f"{path}.lora_A: bf16 input copy", 2.0 * tokens_in))
        elif input_bytes == 4:
            if not shared_done:  # the fp32 input itself, shared by its adapted Linears
                out.append(Saved(f"{path}.lora_A: input", 4.0 * tokens_in))
                shared_done = True
        else:
            out.append(Saved(f"{path}.lora_A: fp32 input copy", 4.0 * tokens_in))
        out.append(Saved(f"{path}.lora_B: lora_A output",
                         (2.0 if z.autocast else 4.0) * z.t * r))
    return out


def _rms_norm(z: _Step, name: str) -> list[Saved]:
    """transformers' RMSNorm: upcast to fp32, x * rsqrt(mean(x^2)), cast back, * weight."""
    h, t = z.arch.hidden_size, z.t
    out = [Saved(f"{name}: fp32 input", 4.0 * t * h), Saved(f"{name}: rsqrt", 4.0 * t)]
    if not z.train.frozen_base:
        out.append(Saved(f"{name}: normed value", float(z.res * t * h)))
    return out


def _layer_norm(z: _Step, name: str) -> list[Saved]:
    stats = 4 if z.cuda or z.res == 4 else 2  # CUDA keeps mean/rstd in fp32
    return [Saved(f"{name}: input", float(z.res * z.t * z.arch.hidden_size)),
            Saved(f"{name}: mean, rstd", 2.0 * stats * z.t)]


def _padding_mask(z: _Step) -> Saved:
    """SDPA turns the boolean mask into an additive one in the query dtype, per layer."""
    return Saved("sdpa: additive padding mask", float(z.half * z.b * z.s * z.s))


def _llama_layer(z: _Step, attn: str, padded: bool) -> list[Saved]:
    """Llama, Mistral, Qwen2: the first table of the module docstring."""
    h, t, s, b = z.arch.hidden_size, z.t, z.s, z.b
    heads, i = z.arch.num_heads, z.arch.intermediate_size
    out = _rms_norm(z, "input_layernorm")
    out += _linears(z, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], h, z.res)
    if attn == "eager":
        out += [Saved("eager: q, k and v (repeated to all heads)", 3.0 * z.half * t * h),
                Saved("eager: fp32 softmax output", 4.0 * b * heads * s * s)]
        if z.half == 2:
            out.append(Saved("eager: 16-bit probabilities for matmul(p, v)",
                             2.0 * b * heads * s * s))
        out += _linears(z, ["self_attn.o_proj"], h, z.half)
    else:
        repeated = padded and attn == "sdpa"  # with a mask transformers repeats k/v
        kv = h if repeated else z.arch.kv_dim
        out += [Saved("attention: q and output", 2.0 * z.half * t * h),
                Saved("attention: k and v", 2.0 * z.half * t * kv),
                Saved("attention: fp32 logsumexp", 4.0 * b * heads * s)]
        if repeated:
            out.append(_padding_mask(z))
        out += _linears(z, ["self_attn.o_proj"], h, z.half, already_saved=True)
    out += _rms_norm(z, "post_attention_layernorm")
    out += _linears(z, ["mlp.gate_proj", "mlp.up_proj"], h, z.res)
    out += [Saved("mlp.act_fn: gate output", float(z.half * t * i)),
            Saved("mlp: silu output and up output", 2.0 * z.half * t * i)]
    out += _linears(z, ["mlp.down_proj"], i, z.half)
    return out


def _gpt2_layer(z: _Step, attn: str, padded: bool) -> list[Saved]:
    """GPT-2: the second table of the module docstring."""
    h, t, s, b = z.arch.hidden_size, z.t, z.s, z.b
    heads, i = z.arch.num_heads, z.arch.intermediate_size
    out = _layer_norm(z, "ln_1")
    out += _linears(z, ["attn.c_attn"], h, z.res)
    out.append(Saved("attention: q, k, v", 3.0 * z.half * t * h))
    if attn == "eager":
        softmax = 2 if z.half == 2 and not z.autocast else 4
        out.append(Saved("eager: softmax output", float(softmax * b * heads * s * s)))
        if z.dropout:
            out.append(Saved("eager: dropout mask and dropped probabilities",
                             float((z.mask(z.half) + z.half) * b * heads * s * s)))
        elif z.autocast:
            out.append(Saved("eager: bf16 probabilities for matmul(p, v)",
                             2.0 * b * heads * s * s))
        out += _linears(z, ["attn.c_proj"], h, z.half)
    else:
        out += [Saved("attention: output", float(z.half * t * h)),
                Saved("attention: fp32 logsumexp", 4.0 * b * heads * s)]
        if padded and attn == "sdpa":
            out.append(_padding_mask(z))
        out += _linears(z, ["attn.c_proj"], h, z.half, already_saved=True)
    if z.dropout:
        out.append(Saved("resid_dropout: mask", float(z.mask(z.half) * t * h)))
    out += _layer_norm(z, "ln_2")
    out += _linears(z, ["mlp.c_fc"], h, z.res)
    if z.autocast and z.cuda:  # CUDA autocast runs pow in fp32, and the rest follows
        out.append(Saved("mlp.act (gelu_new): fp32 x, 0.5x, fp32 1 + tanh, fp32 tanh",
                         14.0 * t * i))
        out += _linears(z, ["mlp.c_proj"], i, 4)
    else:
        out.append(Saved("mlp.act (gelu_new): x, 0.5x, 1 + tanh, tanh", 4.0 * z.half * t * i))
        out += _linears(z, ["mlp.c_proj"], i, z.half)
    if z.dropout:
        out.append(Saved("mlp.dropout: mask", float(z.mask(z.half) * t * h)))
    return out


LAYER_MODELS = {"gpt2": _gpt2_layer, "llama": _llama_layer, "mistral": _llama_layer,
                "qwen2": _llama_layer}
"""The layer model of each family; tests/integration/test_activations.py measures each."""


def _patch_sidecar(z: _Step) -> list[Saved]:
    """The continual patch on one layer's output: h' = h + s * sigmoid(w.h + c) * U gelu(D h)."""
    h, t, r = z.arch.hidden_size, z.t, z.train.patch_rank
    return [Saved("patch: fp32 input", 4.0 * t * h),
            Saved("patch: gelu input and output", 2.0 * 4 * t * r),
            Saved("patch: gate and scale * gate", 2.0 * 4 * t),
            Saved("patch: U gelu(D h)", 4.0 * t * h),
            Saved("patch: delta (its regulariser squares it)", 4.0 * t * h)]


def layer_breakdown(arch: Architecture, batch: int, seq: int, *, precision: str, attn: str,
                    trainable: Trainable = FULL, dropout: bool = True, device: str = "cuda",
                    padded: bool = False) -> list[Saved]:
    """What one decoder layer saves for the backward, op by op (the module's tables).

    ``dropout``: the model's own dropout is active (GPT-2 trains with 0.1 unless trl's
    ``disable_dropout`` or ``model.eval()`` turns it off; the other families have none).
    ``device``: 'cuda' (what the estimate is for) or 'cpu' (what the tests run on).
    ``padded``: batches carry a padding mask. The layer is a steady one: its input needs
    a gradient (with a frozen base the first layer, before any adapter, saves less).
    """
    if attn not in ATTENTIONS:
        raise ValueError(f"attn must be one of {', '.join(ATTENTIONS)}, not {attn!r}")
    if arch.family not in LAYER_MODELS:
        raise ValueError(f"no activation model for the {arch.family!r} family "
                         f"(known: {', '.join(LAYER_MODELS)})")
    z = _step(arch, batch, seq, precision, trainable, dropout, device)
    items = LAYER_MODELS[arch.family](z, attn, padded)
    if trainable.method == "patch":
        items += _patch_sidecar(z)
    return [item for item in items if item.bytes]


def layer_activation_bytes(arch: Architecture, batch: int, seq: int, *, precision: str,
                           attn: str, trainable: Trainable = FULL, dropout: bool = True,
                           device: str = "cuda", padded: bool = False) -> float:
    """Bytes one decoder layer saves for the backward without checkpointing (also what a
    checkpointed layer saves again when it is recomputed). See :func:`layer_breakdown`."""
    return sum(item.bytes for item in layer_breakdown(
        arch, batch, seq, precision=precision, attn=attn, trainable=trainable,
        dropout=dropout, device=device, padded=padded))
