"""Activations of a training step: the layers, the head and loss, and checkpointing.

The memory estimate needs the bytes a training step keeps alive between the forward and
the backward. :mod:`.layers` lists what each op of one decoder layer saves, per family,
precision mode, attention kernel and adapter, as tests/integration/test_activations.py
measures it on the real layers; this module adds what lies outside the layers and how
activation checkpointing changes the total, and the traced steps of
tests/integration/test_trace.py check the sum.

Outside the layers (:func:`head_activation_bytes`): the embedding's indices (trainable
embedding), GPT-2's embedding dropout mask and position indices, the rotary cos/sin
(shared by all layers), the final norm (as above), the head's input (trainable head), and
the loss: transformers casts the logits to fp32 and ``cross_entropy`` keeps its fp32
log-softmax output, 4 T V, plus the int64 labels. At the start of the backward the loss
also holds two fp32 gradients of the logits while the log-softmax backward runs
(:func:`loss_transient_bytes`, 8 T V): with a large vocabulary this is the peak.

Activation checkpointing (the runtime's: transformers' ``activation_checkpointing_enable``
as the Trainer calls it, torch's non-reentrant checkpoint) keeps each layer's input,
``res T h``, and recomputes one layer at a time in the backward, which saves exactly what
the layer saves without checkpointing. The checkpoints also keep the inputs all layers
share alive: with eager attention that is a b x s x s mask in the model's dtype, which
without checkpointing is freed after the forward (:func:`checkpoint_shared_bytes`).

Stdlib only: this module must never import torch, transformers, peft or trl.
"""

from __future__ import annotations

from llm_recipe.compiler.architectures import Architecture
from llm_recipe.compiler.estimate.layers import (
    ATTENTIONS,
    DEVICES,
    FULL,
    LAYER_MODELS,
    METHODS,
    PRECISIONS,
    Saved,
    Trainable,
    _layer_norm,
    _linears,
    _rms_norm,
    _step,
    layer_activation_bytes,
    layer_breakdown,
    trainable_from_config,
)

__all__ = [
    "ATTENTIONS", "DEVICES", "FULL", "LAYER_MODELS", "METHODS", "PRECISIONS", "Saved",
    "Trainable", "checkpoint_shared_bytes", "checkpointed_layer_bytes", "head_activation_bytes",
    "head_breakdown", "layer_activation_bytes", "layer_breakdown", "loss_transient_bytes",
    "trainable_from_config", "training_activation_bytes",
]


def checkpointed_layer_bytes(arch: Architecture, batch: int, seq: int, *, precision: str,
                             trainable: Trainable = FULL) -> float:
    """Bytes a checkpointed layer keeps until its backward: its input, the residual stream
    (the cos/sin and masks it also receives are shared by all layers)."""
    z = _step(arch, batch, seq, precision, trainable, False, "cuda")
    return float(z.res * z.t * arch.hidden_size)


def checkpoint_shared_bytes(arch: Architecture, batch: int, seq: int, *, precision: str,
                            attn: str, trainable: Trainable = FULL,
                            padded: bool = False) -> float:
    """The layers' shared inputs that checkpoints keep alive until the backward.

    Without checkpointing eager attention's additive b x s x s mask (in the model's dtype)
    and padded sdpa's boolean one are freed after the forward: adding a mask saves nothing.
    A checkpoint keeps every input of its layer for the recompute, so the one mask all
    layers share lives on (GPT-2 passes it positionally, where the tests can see it; the
    other families as a keyword, held where saved-tensor hooks cannot see it).
    """
    z = _step(arch, batch, seq, precision, trainable, False, "cuda")
    if attn == "eager":
        return float(z.res * batch * seq * seq)
    return float(batch * seq * seq) if padded and attn == "sdpa" else 0.0


def head_breakdown(arch: Architecture, batch: int, seq: int, *, precision: str,
                   trainable: Trainable = FULL, dropout: bool = True, device: str = "cuda",
                   lm_head: bool = True) -> list[Saved]:
    """What the model saves outside its layers: embeddings, final norm, head and loss.

    ``lm_head=False``: a sequence classifier (reward_model), whose one-score head trains
    in every method (peft keeps it in modules_to_save) and has no vocabulary-sized loss
    (not measured: the score is T x 1, the loss b values).
    """
    z = _step(arch, batch, seq, precision, trainable, dropout, device)
    h, t, full = arch.hidden_size, z.t, not trainable.frozen_base
    out: list[Saved] = []
    if arch.family == "gpt2":
        if full:
            out.append(Saved("wte, wpe: token and position indices", 8.0 * (t + z.s)))
        if z.dropout:
            out.append(Saved("drop: embedding dropout mask", float(z.mask(z.res) * t * h)))
        out += _layer_norm(z, "ln_f")
    else:
        if full:
            out.append(Saved("embed_tokens: token indices", 8.0 * t))
        out.append(Saved("rotary: cos and sin (all layers share them)",
                         2.0 * z.res * z.s * arch.head_dim))
        out += _rms_norm(z, "norm")
    if lm_head:
        out += _linears(z, ["lm_head"], h, z.res)
        out += [Saved("loss: fp32 log-softmax of the logits", 4.0 * t * arch.vocab_size),
                Saved("loss: int64 labels", 8.0 * t)]
    else:
        out.append(Saved("score: input", (2.0 if z.autocast else z.res) * t * h))
    return [item for item in out if item.bytes]


def head_activation_bytes(arch: Architecture, batch: int, seq: int, *, precision: str,
                          trainable: Trainable = FULL, dropout: bool = True,
                          device: str = "cuda", lm_head: bool = True) -> float:
    """Bytes saved for the backward outside the layers (see :func:`head_breakdown`)."""
    return sum(item.bytes for item in head_breakdown(
        arch, batch, seq, precision=precision, trainable=trainable, dropout=dropout,
        device=device, lm_head=lm_head))


def loss_transient_bytes(arch: Architecture, batch: int, seq: int) -> float:
    """The loss's working set beyond what it saved, at the start of the backward.

    The log-softmax backward reads the fp32 gradient of its output and writes the fp32
    gradient of the logits while its saved output is still alive: 2 * 4 T V. (The forward
    holds less: the 16-bit logits and their fp32 copy, 6 T V.)
    """
    return 8.0 * batch * seq * arch.vocab_size


def training_activation_bytes(arch: Architecture, batch: int, seq: int, *, precision: str,
                              attn: str, checkpointing: bool, trainable: Trainable = FULL,
                              dropout: bool = True, device: str = "cuda",
                              padded: bool = False, lm_head: bool = True) -> float:
    """Activation bytes of one training step at the peak of its backward, per device.

    Without checkpointing: every layer's saved tensors, the head's and the loss's
    gradients of the logits. With it: each layer's checkpointed input and the mask they
    share, the head's saved tensors, and the larger of the loss's gradients of the
    logits and one layer recomputed in full: the two never coexist (the head's backward
    is over before the first recompute), as the traced steps of tests/integration/
    test_trace.py show.
    """
    layer = layer_activation_bytes(arch, batch, seq, precision=precision, attn=attn,
                                   trainable=trainable, dropout=dropout, device=device,
                                   padded=padded)
    head = head_activation_bytes(arch, batch, seq, precision=precision, trainable=trainable,
                                 dropout=dropout, device=device, lm_head=lm_head)
    loss = loss_transient_bytes(arch, batch, seq) if lm_head else 0.0
    if checkpointing:
        kept = checkpointed_layer_bytes(arch, batch, seq, precision=precision,
                                        trainable=trainable)
        shared = checkpoint_shared_bytes(arch, batch, seq, precision=precision, attn=attn,
                                         trainable=trainable, padded=padded)
        return arch.num_layers * kept + shared + head + max(layer, loss)
    return arch.num_layers * layer + head + loss
