"""Build a stage's training step (model, adapter or patch, optimizer, batch) for a trace.

Under ``FakeTensorMode`` every tensor is fake: shapes, dtypes and storages exist, bytes do
not. Three things the runtime does would break or allocate there, and are done
differently here, with the same result:

- weights: the model is built inside transformers' ``no_init_weights`` (no init kernels)
  with ``torch.set_default_dtype`` set to the load dtype, instead of loading and casting
  (a cast would hold both copies at once);
- ``.to()`` and ``deepcopy``: torch converts fake parameters with ``swap_tensors``,
  which fake tensors refuse, and peft moves every new LoRA layer with it (and copies a
  classifier's head): during the build both are done by :func:`_fake_safe_modules`;
- masks: transformers cannot read fake position ids to rule out packed sequences, and
  would build a ``b x s x s`` mask a real unpadded batch never has; the trace's batch is
  unpacked, so that check answers "not packed" as it does on real tensors.

Two CPU kernels keep more than the CUDA kernels a GPU run uses, and are swapped for ones
that keep what CUDA keeps (:func:`_gpu_kernels`), on fake and real tensors alike:
dropout (the CPU keeps its noise in the input's dtype, CUDA's fused dropout a bool mask)
and attention dropout (the CPU SDPA falls back to the math kernel, which keeps the
``b x heads x s x s`` probabilities; flash and memory-efficient attention regenerate the
mask in the backward, so their memory is that of attention without dropout).

Precision follows runtime/compute.py's ``MODES``: the load dtype of the mode (bf16 for
bf16-true, fp32 otherwise) and, for the mixed modes, an autocast around the forward (the loss scaler
of fp16-mixed is not run: its work is in place). The optimizer is the CUDA default for
the recipe's choice: ``foreach=True``, which the CPU would not pick by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from llm_recipe.runtime.compute import MODES
from llm_recipe.runtime.memtrace.tracker import TraceSpec

LR = 1e-4  # any: the step's memory does not depend on it


def load_dtype(precision: str) -> torch.dtype:
    """The dtype weights are loaded in for a precision mode (runtime/compute.py's rule)."""
    return getattr(torch, MODES[precision][0])


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a mixed mode, None when the mode does not autocast."""
    flag = MODES[precision][1]
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[flag] if flag else None


class Untraceable(Exception):
    """A step this tracer cannot build (the message says what, for the report)."""


@dataclass
class Step:
    """A built step: run it to do one forward, backward and optimizer step."""

    model: Any
    optimizer: Any
    inputs: tuple[torch.Tensor, ...]
    spec: TraceSpec

    def run(self, between: Callable[[], None] | None = None) -> None:
        """Forward (autocast in the mixed modes) and backward per micro-batch, then clip,
        step and zero_grad (to None, as the Trainer does). ``between`` runs before every
        micro-batch after the first (MemTracker must forget the previous forward)."""
        spec, (ids,) = self.spec, self.inputs
        half = autocast_dtype(spec.precision)
        for index in range(spec.micro_batches):
            if index and between is not None:
                between()
            autocast = (torch.autocast("cpu", dtype=half) if half is not None
                        else contextlib.nullcontext())
            with autocast:
                if spec.head == "classifier":
                    scores = self.model(input_ids=ids).logits[:, 0].float()
                    chosen, rejected = scores.chunk(2)
                    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
                else:
                    loss = self.model(input_ids=ids, labels=ids).loss
            (loss / spec.micro_batches).backward()
            del loss
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, spec.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def build_step(spec: TraceSpec, *, fake: bool = True) -> Iterator[Step]:
    """The step of ``spec``, built (and to be run) inside a fake tensor mode when ``fake``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with mode, _unpacked(), _gpu_kernels(), _fake_safe_modules(enabled=fake):
        model = build_model(spec, fake=fake)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(spec, trainable)
        vocab = spec.arch.vocab_size
        ids = torch.randint(0, vocab, (spec.batch, spec.seq))
        yield Step(model, optimizer, (ids,), spec)


def build_model(spec: TraceSpec, *, fake: bool = True) -> Any:
    """The stage's model as the trainer holds it: base in the load dtype, adapter or
    patch attached, checkpointing on, train (dropout) or eval mode.

    On fake tensors the weights are made in the load dtype without init kernels (see the
    module doc); on real ones the way ``models.init_model`` makes them (initialised in
    fp32, then cast), so a fake trace checked against a real one is checked against the
    runtime's own path.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llm_recipe.runtime import models

    config = models.hf_config(spec.arch)
    config.use_cache = False
    cls = AutoModelForCausalLM
    if spec.head == "classifier":
        config.num_labels, config.pad_token_id = 1, 0
        cls = AutoModelForSequenceClassification
    dtype = load_dtype(spec.precision)
    attn = "sdpa" if spec.attn == "flash_attention_2" else spec.attn
    if fake:
        with _default_dtype(dtype), _no_init_weights():
            model = cls.from_config(config, attn_implementation=attn)
        model.tie_weights()  # no_init_weights skips it with the init: GPT-2 would be untied
    else:
        model = cls.from_config(config, attn_implementation=attn).to(dtype)
    model.train(spec.dropout)
    if spec.checkpointing and spec.patch is None:
        enable = (getattr(model, "activation_checkpointing_enable", None)
                  or model.gradient_checkpointing_enable)  # transformers 4 names it so
        enable({"use_reentrant": False})
    if spec.adapter:
        model = _with_lora(model, spec)
    if spec.patch is not None:
        _with_patch(model, spec.patch)
    return model


def make_optimizer(spec: TraceSpec, params: list[Any]) -> Any:
    """``train.optimizer`` as the CUDA trainer makes it (foreach kernels)."""
    if spec.optimizer == "adamw_torch":
        return torch.optim.AdamW(params, lr=LR, weight_decay=spec.weight_decay, foreach=True)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=LR, weight_decay=spec.weight_decay, foreach=True)
    if spec.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=LR, weight_decay=spec.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    raise Untraceable(f"optimizer {spec.optimizer} (bitsandbytes state cannot be traced)")


def _with_lora(model: Any, spec: TraceSpec) -> Any:
    from peft import get_peft_model

    from llm_recipe.runtime.adapters import lora_config

    adapter = spec.adapter or {}
    if adapter.get("type") != "lora":
        raise Untraceable(f"{adapter.get('type')} adapter (4-bit weights)")
    task = "SEQ_CLS" if spec.head == "classifier" else "CAUSAL_LM"
    model = get_peft_model(model, lora_config(adapter, task_type=task))
    if spec.checkpointing:
        model.enable_input_require_grads()  # as trl does for peft with checkpointing
    return model


def _with_patch(model: Any, patch: dict[str, Any]) -> None:
    """A continual stage's patch set on its frozen base, attached as the runtime does."""
    from llm_recipe.runtime.continual.patch import attach, freeze_base, patch_config

    freeze_base(model)
    shape = patch_config(model, int(patch.get("rank", 8)), patch.get("layers", "all"),
                         float(patch.get("gate_init", -4.0)))
    attach(model, shape, seed=0)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _no_init_weights() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


@contextlib.contextmanager
def _unpacked() -> Iterator[None]:
    """Tell transformers the batch holds one sequence per row (see the module doc)."""
    try:
        from transformers import masking_utils
    except ImportError:
        yield
        return
    original = getattr(masking_utils, "find_packed_sequence_indices", None)
    if original is None:
        yield
        return
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No library chatter on stderr while tracing: deprecation warnings of transformers
    and peft, fake tensors' data-pointer warning, transformers' config notices and
    bitsandbytes' note about optional CPU kernels (printed when peft imports it)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bnb = logging.getLogger("bitsandbytes")
    bnb_level = bnb.level
    hf_logging.set_verbosity_error()
    bnb.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.simplefilter("ignore", category)
            yield
    finally:
        hf_logging.set_verbosity(before)
        bnb.setLevel(bnb_level)


@contextlib.contextmanager
def _gpu_kernels() -> Iterator[None]:
    """Dropout and attention dropout with CUDA's memory (see the module doc)."""
    functional = torch.nn.functional
    dropout, sdpa = functional.dropout, functional.scaled_dot_product_attention

    def fused_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True,
                      inplace: bool = False) -> torch.Tensor:
        if not training or p == 0.0 or inplace:
            return dropout(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    def flash_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        if len(args) > 4:
            args = (*args[:4], 0.0, *args[5:])
        kwargs.pop("dropout_p", None)
        return sdpa(*args, **kwargs)

    functional.dropout = fused_dropout
    functional.scaled_dot_product_attention = flash_sdpa
    try:
        yield
    finally:
        functional.dropout, functional.scaled_dot_product_attention = dropout, sdpa


@contextlib.contextmanager
def _fake_safe_modules(*, enabled: bool) -> Iterator[None]:
    """``Module.to`` and ``copy.deepcopy`` that work on fake parameters.

    torch swaps fake parameters in place, which fake tensors refuse; here a conversion
    that changes nothing returns the module as it is, and one that changes a dtype or
    device puts new parameters in place of the old (one new parameter per old one, so
    tied weights stay tied): what ``_apply`` does for real tensors. A deep copy of a fake
    tensor (peft copies a classifier's score head) would land in a new fake mode, which
    the model's cannot mix with; here it is a clone in the same mode.
    """
    if not enabled:
        yield
        return
    original = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        done: dict[int, Any] = {}

        def convert(t: torch.Tensor) -> torch.Tensor:
            cast = dtype if dtype is not None and (t.is_floating_point() or t.is_complex()) \
                else t.dtype
            return t.to(device=device or t.device, dtype=cast)

        with torch.no_grad():
            for module in self.modules():
                for key, param in module._parameters.items():
                    if param is None:
                        continue
                    if id(param) not in done:
                        new = convert(param)
                        done[id(param)] = param if new is param else torch.nn.Parameter(
                            new, requires_grad=param.requires_grad)
                    module._parameters[key] = done[id(param)]
                for key, buffer in module._buffers.items():
                    if buffer is not None:
                        module._buffers[key] = convert(buffer)
        return self

    def deepcopy(self: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor:
        if id(self) not in memo:
            with torch.no_grad():
                copied = self.clone()
            if isinstance(self, torch.nn.Parameter):
                copied = torch.nn.Parameter(copied, requires_grad=self.requires_grad)
            memo[id(self)] = copied
        return memo[id(self)]

    from torch._subclasses.fake_tensor import FakeTensor

    had_deepcopy = "__deepcopy__" in FakeTensor.__dict__
    original_deepcopy = FakeTensor.__dict__.get("__deepcopy__")
    torch.nn.Module.to = to  # type: ignore[method-assign,assignment]
    FakeTensor.__deepcopy__ = deepcopy  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.nn.Module.to = original  # type: ignore[method-assign]
        if had_deepcopy:
            FakeTensor.__deepcopy__ = original_deepcopy  # type: ignore[method-assign]
        else:
            del FakeTensor.__deepcopy__
