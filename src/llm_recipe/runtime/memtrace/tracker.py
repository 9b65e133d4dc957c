"""Measure one training step with torch's MemTracker, on fake tensors or real ones.

:class:`TraceSpec` describes the step (architecture, precision mode, attention kernel,
activation checkpointing, micro-batch, adapter or patch, optimizer); :func:`trace_step`
builds it (see :mod:`.build`), runs it twice and measures the second run, so that the
optimizer states exist as they do in every step after the first. The numbers are what
torch allocates for tensors on one device: the caching allocator, the CUDA context and
communication buffers are not tensors and are not seen (the allowances are in
docs/commands.md, "Traced estimate").

MemTracker (``torch.distributed._tools.mem_tracker``) sorts every tensor storage created
while it is active into parameters, buffers, gradients, activations, temporaries and
optimizer states. :class:`_Tracker` adds three things this needs:

- frozen parameters (a LoRA base, a continual base) get no gradient hooks: MemTracker
  registers one on every parameter and ``register_hook`` refuses a tensor that does not
  require grad;
- the maximum of every category over the step, not only the snapshot at the peak: the
  gradients peak after the backward, the activations at the end of the forward (and no
  per-module peaks, which MemTracker updates for every module on every op);
- autocast's half-precision copies of the weights (the mixed modes) are their own
  category, since the plan counts them with the weights.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.mem_tracker import (
    _TOTAL_KEY as _TOTAL,
)
from torch.distributed._tools.mem_tracker import (
    MemTracker,
    _MemRefType,
    _RefType,
)

from llm_recipe.compiler.architectures import Architecture


class _Ref(_RefType):
    """MemTracker's categories plus autocast's weight copies.

    The names and values are MemTracker's own, so its code (which indexes snapshots by
    ``_MemRefType`` members) finds them: str-valued enum members with equal values hash
    and compare equal.
    """

    PARAM = "Parameter"
    BUFFER = "Buffer"
    GRAD = "Gradient"
    ACT = "Activation"
    TEMP = "Temp"
    OPT = "Optstate"
    OTH = "Other"
    COPY = "Weight copy"


_CAST = torch.ops.aten._to_copy.default
WORKING = "Activation+Temp"
"""Activations and backward temporaries held at once: their most is the working set."""


class _Tracker(MemTracker):
    """MemTracker with frozen parameters, per-category maxima and weight copies."""

    def __init__(self) -> None:
        super().__init__()
        self._ref_class = _Ref
        self.maxima: dict[str, int] = {}
        self.peak_phase = "forward"

    def _track_module_params_and_buffers(self, module: torch.nn.Module,
                                         install_grad_hooks: bool = True) -> tuple[int, int]:
        # MemTracker's own, except that only parameters that require grad get hooks.
        def grad_hook(grad: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

        param_memory = 0
        for param in module.parameters():
            winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
            param_memory += sum(w.mem_consumed for w in winfos)
            if param.grad is not None:
                self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            if (install_grad_hooks and param.requires_grad
                    and self._param_to_grad_hook_handles.get(param, None) is None):
                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(grad_hook),
                    param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                )
        buffer_memory = 0
        for buffer in module.buffers():
            winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
            buffer_memory += sum(w.mem_consumed for w in winfos)
        return param_memory, buffer_memory

    def _update_snap(self, *args: Any, **kwargs: Any) -> None:
        super()._update_snap(*args, **kwargs)
        for snap in self._curr_mem_snap.values():
            for key, value in snap.items():
                name = getattr(key, "value", key)
                if value > self.maxima.get(name, 0):
                    self.maxima[name] = value
            working = snap.get(_Ref.ACT, 0) + snap.get(_Ref.TEMP, 0)
            if working > self.maxima.get(WORKING, 0):
                self.maxima[WORKING] = working

    def _update_peak_stats(self, peak_state: Any) -> None:
        # The device peak only: MemTracker also walks every module's stats here, on every
        # op, which makes a 7B LoRA trace minutes instead of seconds; they are not used.
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap[_TOTAL]:
                self._peak_mem[dev] = snap[_TOTAL]
                self._peak_mem_snap[dev] = dict(snap)
                self.peak_phase = ("optimizer step" if self._in_opt else
                                   "backward" if self._mod_tracker.is_bw else "forward")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        res = super().__torch_dispatch__(func, types, args, kwargs)
        if func is _CAST and args and isinstance(args[0], torch.Tensor) \
                and isinstance(res, torch.Tensor) and self._is_param(args[0]):
            self._update_and_maybe_create_winfos(res, _Ref.COPY)
        return res

    def _is_param(self, tensor: torch.Tensor) -> bool:
        for storage in get_untyped_storages(tensor):
            winfo, _ = self._WINFO.get(storage, (None, None))
            if winfo is not None and winfo.reftype == _MemRefType.PARAM:
                return True
        return False

    def current(self) -> dict[str, int]:
        """Bytes per category now (one device)."""
        return _flat(self._curr_mem_snap)

    def peak(self) -> dict[str, int]:
        """Bytes per category at the step's peak (one device)."""
        return _flat(self._peak_mem_snap)


def _flat(snapshot: dict[Any, dict[Any, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for snap in snapshot.values():
        for key, value in snap.items():
            name = getattr(key, "value", key)
            out[name] = out.get(name, 0) + value
    return out


@dataclass(frozen=True)
class TraceSpec:
    """One training step to trace: what the stage's trainer runs on one device.

    ``batch`` is the rows of one micro-batch (dpo and reward_model: chosen and rejected,
    twice train.batch_size); ``micro_batches`` how many run before the optimizer step
    (gradient accumulation: from the second on, every gradient is alive during the
    forward and backward, so two show the peak of any larger number); ``adapter`` is a
    recipe adapter block (type lora); ``patch``
    a continual patch block (rank, layers, gate_init); ``head`` ``classifier`` is a
    one-score sequence classifier (reward_model); ``dropout`` False runs the model in eval
    mode (continual's loop does).
    """

    arch: Architecture
    precision: str = "fp32"
    attn: str = "sdpa"
    checkpointing: bool = False
    batch: int = 1
    seq: int = 512
    micro_batches: int = 1
    optimizer: str = "adamw_torch"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adapter: dict[str, Any] | None = None
    patch: dict[str, Any] | None = None
    head: str = "causal"
    dropout: bool = True


@dataclass
class TraceMemory:
    """Bytes on one device during the measured step (the second of two).

    parameters: parameters and buffers; weight_copies: autocast's half-precision copies of
    the weights (mixed modes), at their most; gradients: as the optimizer step gets
    them; activations (saved for the backward, and the forward's live outputs): at
    their most; optimizer: the optimizer
    states after the step; backward_temporaries: the most held by temporaries of the
    backward (gradients of activations, of the logits); activation_working_set: the most
    held by activations and backward temporaries together (what the plan's activations
    stand for: the backward's peak working set);
    step_temporaries: the most the optimizer step allocated beyond its states (foreach
    AdamW: one parameter-sized buffer); peak: the most allocated at once, and
    peak_phase/at_peak where and of what it was made.
    """

    parameters: int
    weight_copies: int
    gradients: int
    optimizer: int
    activations: int
    activation_working_set: int
    backward_temporaries: int
    step_temporaries: int
    peak: int
    peak_phase: str
    at_peak: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trace_step(spec: TraceSpec, *, fake: bool = True) -> TraceMemory:
    """Run ``spec``'s step twice (on fake tensors unless ``fake`` is False) and measure the
    second. Fake tensors allocate nothing: a 70B step traces in tens of seconds and a few
    hundred MB of RAM; ``fake=False`` is for checking the fake trace on tiny models."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from llm_recipe.runtime.memtrace.build import build_step, quiet

    start = time.perf_counter()
    at_step: dict[str, int] = {}
    with quiet(), build_step(spec, fake=fake) as step:
        step.run()
        tracker = _Tracker()
        tracker.track_external(step.model, step.optimizer, *step.inputs)
        # The gradients as the optimizer gets them; their running maximum also counts,
        # for a moment, each incoming gradient beside the one it is added to.
        handle = register_optimizer_step_pre_hook(
            lambda *_: at_step.update(tracker.current()))
        try:
            with tracker:
                step.run(between=tracker.reset_mod_stats)
        finally:
            handle.remove()
        after = tracker.current()
    peak = tracker.peak()
    maxima = tracker.maxima
    names = {r.name: r.value for r in _Ref}
    states = after.get(names["OPT"], 0)
    return TraceMemory(
        parameters=after.get(names["PARAM"], 0) + after.get(names["BUFFER"], 0),
        weight_copies=maxima.get(names["COPY"], 0),
        gradients=at_step.get(names["GRAD"], maxima.get(names["GRAD"], 0)),
        optimizer=states,
        activations=maxima.get(names["ACT"], 0),
        activation_working_set=maxima.get(WORKING, 0),
        backward_temporaries=maxima.get(names["TEMP"], 0),
        step_temporaries=max(0, maxima.get(names["OPT"], 0) - states),
        peak=peak.get("Total", 0),
        peak_phase=tracker.peak_phase,
        at_peak={k: v for k, v in peak.items() if v and k != "Total"},
        seconds=round(time.perf_counter() - start, 2),
    )
