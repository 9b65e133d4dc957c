"""From a plan's training stages to traced memory beside the plan's analytical estimate.

For each stage this finds what its trainer will hold on one device (the architecture the
plan estimated with, the adapter it trains or continues, the precision mode, attention
kernel, activation checkpointing, micro-batch and optimizer: :func:`stage_spec`), traces
one step of it on fake tensors (:func:`~.tracker.trace_step`) and puts the measured
components next to the estimate's ``memory_gb`` (:class:`StageTrace`).

What a trace covers and what it does not is said per stage in ``notes``; the allowances
for what no trace of tensors can see (CUDA context, NCCL, the allocator) are in
:data:`ALLOWANCES`. This module imports torch only when a stage is actually traced, so
``--only`` with a wrong name fails before torch loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.architectures import Architecture, lookup
from llm_recipe.compiler.estimate import GIB, TRAIN_KINDS, format_count
from llm_recipe.compiler.kinds import ADAPTER, KINDS_BY_NAME
from llm_recipe.compiler.plan_types import Plan, StagePlan
from llm_recipe.errors import RecipeError

if TYPE_CHECKING:
    from llm_recipe.runtime.memtrace.tracker import TraceMemory, TraceSpec

COMPONENTS = {"weights": "weights", "gradients": "gradients", "optimizer": "optimizer",
              "optimizer_step": "step_temporaries", "activations": "activation_working_set"}
"""The plan's memory_gb keys a trace measures one for one -> the traced key.

The plan's ``activations`` are the backward's working set (what is saved plus the
gradients of the logits and a layer's temporaries), so they are compared with the most
the trace held in activations and backward temporaries at once; ``optimizer_step`` (the
optimizer's temporaries) where the plan has it."""

ALLOWANCES = (
    "CUDA context and kernel images: ~0.5-1 GiB per GPU",
    "NCCL communication buffers (more than one process): ~0.1-1 GiB",
    "caching-allocator fragmentation and rounding: typically 5-15% above the peak",
    "kernels a GPU picks differently: flash/efficient attention instead of the CPU SDPA "
    "kernel, cuBLAS workspaces",
)
"""What a trace of tensors cannot see; add these to the traced peak (docs/commands.md)."""


@dataclass
class StageTrace:
    """One stage's trace: ``status`` traced | not traced | failed, and why.

    ``measured`` is one device as traced (unsharded, bytes); ``traced_gb`` the same per
    device in GiB (weights = parameters + autocast copies; the other keys as in
    :class:`~.tracker.TraceMemory`), with ZeRO/FSDP sharding and offload applied where
    they are exact; ``plan_gb`` the estimate's memory_gb; ``ratio`` traced / plan per
    plan key (see :data:`COMPONENTS`) and for the total.
    """

    stage: str
    kind: str
    status: str
    reason: str | None = None
    what: str | None = None
    measured: TraceMemory | None = None
    traced_gb: dict[str, float] = field(default_factory=dict)
    plan_gb: dict[str, float] | None = None
    ratio: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``trace`` object of a stage in ``recipe plan --trace --json``."""
        return {"status": self.status, "reason": self.reason, "what": self.what,
                "measured_bytes": self.measured.to_dict() if self.measured else None,
                "traced_gb": self.traced_gb, "plan_gb": self.plan_gb, "ratio": self.ratio,
                "notes": self.notes, "seconds": round(self.seconds, 2)}


def check_only(plan: Plan, only: str | None) -> list[StagePlan]:
    """The stages to trace: all, or the one ``--only`` names (a RecipeError if none)."""
    if only is None:
        return list(plan.stages)
    names = [s.name for s in plan.stages]
    if only not in names:
        raise RecipeError(f"--only {only}: the recipe has no stage named '{only}'",
                          expected=f"one of: {', '.join(names)}")
    return [plan.stage(only)]


def trace_plan(plan: Plan, *, only: str | None = None, cwd: Path | None = None,
               progress: Callable[[str], None] | None = None,
               raise_errors: bool = False) -> list[StageTrace]:
    """Trace every training stage of ``plan`` (or only ``only``), in plan order.

    ``cwd`` is the directory the plan's relative paths start from (local config.json
    files); ``progress`` gets one line per stage before it is traced. A stage whose trace
    fails is reported as failed, unless ``raise_errors``.
    """
    stages = check_only(plan, only)
    out = []
    for stage in stages:
        out.append(trace_stage(plan, stage, cwd=cwd or Path.cwd(), progress=progress,
                               raise_errors=raise_errors))
    return out


def trace_stage(plan: Plan, stage: StagePlan, *, cwd: Path,
                progress: Callable[[str], None] | None = None,
                raise_errors: bool = False) -> StageTrace:
    """One stage: its spec, the trace, and the comparison with its estimate."""
    result = StageTrace(stage.name, stage.kind, "not traced",
                        plan_gb=stage.estimate.get("memory_gb"))
    spec_or_reason, notes = stage_spec(plan, stage, cwd)
    result.notes = notes
    if isinstance(spec_or_reason, str):
        result.reason = spec_or_reason
        return result
    spec = spec_or_reason
    result.what = describe(spec)
    if progress is not None:
        progress(f"tracing {stage.name}: {result.what} ...")
    start = time.perf_counter()
    try:
        from llm_recipe.runtime.memtrace.build import Untraceable
        from llm_recipe.runtime.memtrace.tracker import trace_step

        try:
            result.measured = trace_step(spec)
        except Untraceable as why:
            result.reason = str(why)
            return result
    except Exception as exc:
        if raise_errors:
            raise
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        return result
    finally:
        result.seconds = time.perf_counter() - start
    result.status = "traced"
    result.traced_gb, sharded = per_device_gb(result.measured, stage.estimate)
    result.notes.extend(sharded)
    result.ratio = ratios(result.traced_gb, result.plan_gb)
    return result


def stage_spec(plan: Plan, stage: StagePlan, cwd: Path) -> tuple[TraceSpec | str, list[str]]:
    """(the step to trace, or why it cannot be traced; notes on what the trace covers)."""
    from llm_recipe.runtime.memtrace.tracker import TraceSpec

    kind, config = stage.kind, stage.config
    if kind not in TRAIN_KINDS:
        return "no training step", []
    arch = stage_architecture(plan, stage, cwd)
    if arch is None:
        return "unknown architecture (set models.<name>.architecture)", []
    adapter = stage_adapter(plan, stage)
    if adapter and adapter.get("type") == "qlora":
        return "4-bit weights (bitsandbytes Params4bit cannot be traced)", []
    train = config.get("train") or {}
    optimizer = train.get("optimizer") or "adamw_torch"
    if optimizer == "adamw_8bit":
        return "optimizer adamw_8bit (bitsandbytes state cannot be traced)", []
    setup = stage.estimate.get("setup") or {}
    notes: list[str] = []
    pairs = kind in ("dpo", "reward_model")
    seq = int(train.get("max_seq_len", 512))
    if arch.family == "gpt2" and seq > arch.max_position:
        notes.append(f"max_seq_len {seq} is past gpt2's {arch.max_position} positions: "
                     f"traced at {arch.max_position}")
        seq = arch.max_position
    checkpointing = bool(setup.get("activation_checkpointing"))
    if kind == "continual" and checkpointing:
        notes.append("continual's loop does not checkpoint activations: traced without")
        checkpointing = False
    attn = setup.get("attn_implementation") or "sdpa"
    if attn == "flash_attention_2":
        notes.append("flash_attention_2 traced as sdpa (CPU kernel; both keep O(s) state)")
    notes.extend(_kind_notes(kind, config, stage.estimate))
    spec = TraceSpec(
        arch=arch, precision=setup.get("precision") or "fp32", attn=attn,
        checkpointing=checkpointing,
        batch=int(train.get("batch_size", 8)) * (2 if pairs else 1), seq=seq,
        micro_batches=min(int(train.get("grad_accum", 1) or 1), 2),
        optimizer=optimizer, weight_decay=float(train.get("weight_decay", 0.0)),
        max_grad_norm=float(train.get("max_grad_norm", 1.0)),
        adapter=adapter if kind != "continual" else None,
        patch=(config.get("patch") or {}) if kind == "continual" else None,
        head="classifier" if kind == "reward_model" else "causal",
        dropout=kind != "continual")
    return spec, notes


def _kind_notes(kind: str, config: dict[str, Any], estimate: dict[str, Any]) -> list[str]:
    notes = []
    if kind in ("grpo", "ppo"):
        notes.append(f"{kind}: the policy's training step only, at train.batch_size x "
                     "max_seq_len; generation and companion models are the plan's extra")
    elif kind == "dpo":
        notes.append("dpo: the policy's step on chosen + rejected; the reference forward "
                     "is not traced (a separate reference model is the plan's extra)")
    elif kind == "continual":
        notes.append("continual: the patch step with the LM loss; the teacher forward over "
                     "replayed rows and the regularisers are not traced")
    if kind in ("dpo", "grpo", "ppo"):
        notes.append("loss: causal-LM cross-entropy standing in for the kind's own")
    setup = estimate.get("setup") or {}
    if setup.get("precision") == "fp16-mixed":
        notes.append("fp16-mixed: the loss scaler is not run (its work is in place)")
    if setup.get("strategy") == "deepspeed" and setup.get("precision") in ("bf16-mixed",
                                                                           "fp16-mixed"):
        notes.append("deepspeed's own mixed precision (half weights, fp32 master copy in "
                     "the optimizer) is traced as torch autocast")
    return notes


def stage_architecture(plan: Plan, stage: StagePlan, cwd: Path) -> Architecture | None:
    """The architecture of the stage's policy (the model it trains), as the plan finds it:
    the ``models:`` entry at the root of its lineage, through ``architectures.lookup``."""
    field_name = KINDS_BY_NAME[stage.kind].policy_field
    policy = next((i for i in stage.inputs if i.field == field_name), None)
    if policy is None:
        return None
    root = _root_model(plan, policy.base if policy.base else policy.ref)
    return lookup(plan.models[root], cwd) if root is not None else None


def _root_model(plan: Plan, name: str, depth: int = 0) -> str | None:
    """The models: entry whose weights ``name`` (an entry or a stage) starts from."""
    if name in plan.models:
        return name
    if depth > len(plan.stages):
        return None
    try:
        producer = plan.stage(name)
    except KeyError:
        return None
    if producer.output.base:
        return _root_model(plan, producer.output.base, depth + 1)
    field_name = KINDS_BY_NAME[producer.kind].policy_field
    policy = producer.config.get(field_name) if field_name else None
    return _root_model(plan, policy, depth + 1) if isinstance(policy, str) else None


def stage_adapter(plan: Plan, stage: StagePlan, depth: int = 0) -> dict[str, Any] | None:
    """The adapter block the stage trains: its own, or the one it continues (its policy
    is an adapter a stage made: that stage's block, recursively), as the plan counts."""
    own = stage.config.get("adapter")
    if own:
        return dict(own)
    field_name = KINDS_BY_NAME[stage.kind].policy_field
    policy = next((i for i in stage.inputs if i.field == field_name), None)
    if policy is None or policy.type != ADAPTER or policy.producer is None:
        return None
    if depth > len(plan.stages):
        return None
    return stage_adapter(plan, plan.stage(policy.producer), depth + 1)


def describe(spec: TraceSpec) -> str:
    """'mistral 7.24B + lora r16, bf16-true, sdpa, checkpointing, 4x512, adamw_torch'."""
    head = f"{spec.arch.family} {format_count(spec.arch.parameter_count())}"
    if spec.adapter:
        head += f" + {spec.adapter.get('type', 'lora')} r{spec.adapter.get('r', 16)}"
    if spec.patch is not None:
        head += f" + patch r{spec.patch.get('rank', 8)}"
    if spec.head == "classifier":
        head += " (classifier)"
    parts = [head, spec.precision, spec.attn]
    if spec.checkpointing:
        parts.append("checkpointing")
    parts.append(f"{spec.batch}x{spec.seq}")
    if spec.micro_batches > 1:
        parts.append(f"{spec.micro_batches} micro-batches")
    parts.append(spec.optimizer)
    return ", ".join(parts)


def per_device_gb(measured: TraceMemory, estimate: dict[str, Any]
                  ) -> tuple[dict[str, float], list[str]]:
    """The trace in the plan's keys, GiB per device, and what sharding changed.

    ZeRO stage k / FSDP split optimizer states (k >= 1), gradients (k >= 2) and
    parameters (k = 3) over the processes, and offload moves them to the CPU: exact for
    those components. The peak is scaled by the same factors applied to what it held of
    each, which is approximate (a sharded run also gathers each layer's weights). DDP's
    gradient buckets, one more copy of the gradients, are the plan's (under 'extra').
    """
    setup = estimate.get("setup") or {}
    world = max(1, int(estimate.get("processes") or 1))
    shard, offload = int(setup.get("zero_stage") or 0), setup.get("offload") or "none"
    keep = {"weights": 1.0, "gradients": 1.0, "optimizer": 1.0}
    if world > 1:
        keep.update(optimizer=1 / world if shard >= 1 else 1.0,
                    gradients=1 / world if shard >= 2 else 1.0,
                    weights=1 / world if shard >= 3 else 1.0)
    if offload != "none":
        keep["optimizer"] = 0.0
    if offload == "parameters":
        keep.update(weights=0.0, gradients=0.0)
    m = measured
    raw = {"weights": m.parameters + m.weight_copies, "gradients": m.gradients,
           "optimizer": m.optimizer, "activations": m.activations,
           "activation_working_set": m.activation_working_set,
           "backward_temporaries": m.backward_temporaries,
           "step_temporaries": m.step_temporaries}
    scaled = dict(raw)
    scaled["weights"] = m.parameters * keep["weights"] + m.weight_copies
    scaled["gradients"] = m.gradients * keep["gradients"]
    scaled["optimizer"] = m.optimizer * keep["optimizer"]
    scaled["step_temporaries"] = m.step_temporaries * keep["optimizer"]
    at = m.at_peak
    peak = (m.peak - at.get("Parameter", 0) * (1 - keep["weights"])
            - at.get("Gradient", 0) * (1 - keep["gradients"])
            - at.get("Optstate", 0) * (1 - keep["optimizer"]))
    notes = []
    if setup.get("strategy") == "ddp" and world > 1:
        # DDP copies every gradient into its communication buckets (accelerate and the
        # Trainer leave gradient_as_bucket_view off): one more gradient-sized buffer,
        # allocated when the model is wrapped and held for the run; the plan counts it
        # under 'extra', which the report adds to the traced peak.
        notes.append(f"ddp over {world} processes: DDP's gradient buckets "
                     f"({m.gradients / GIB:.2f} GiB) are not traced; the plan's extra "
                     "counts them")
    scaled["peak"] = peak
    out = {k: round(v / GIB, 6) for k, v in scaled.items()}
    if keep != {"weights": 1.0, "gradients": 1.0, "optimizer": 1.0}:
        what = ", ".join(f"{k} x{v:.3g}" for k, v in keep.items() if v != 1.0)
        notes.append(f"traced one device without sharding; scaled {what} "
                     f"({setup.get('strategy')}, zero stage {shard}, offload {offload}); "
                     "the peak is scaled the same way (approximate)")
    return out, notes


def ratios(traced: dict[str, float], plan: dict[str, float] | None) -> dict[str, float | None]:
    """traced / plan for each of :data:`COMPONENTS` the plan has, and the total (the
    traced peak + the plan's extra, against the plan's total)."""
    if not plan:
        return {}
    out: dict[str, float | None] = {}
    for key, traced_key in COMPONENTS.items():
        if key in plan:
            out[key] = round(traced[traced_key] / plan[key], 3) if plan[key] else None
    total = traced["peak"] + float(plan.get("extra") or 0.0)
    out["total"] = round(total / plan["total"], 3) if plan.get("total") else None
    return out


def traces_json(traces: Sequence[StageTrace]) -> dict[str, dict[str, Any]]:
    """{stage name: trace object}, to add to the plan JSON's stages."""
    return {t.stage: t.to_dict() for t in traces}
