"""``recipe plan --trace``: the memory of one real training step, measured on fake tensors.

The plan's memory estimate (compiler/estimate/) is arithmetic; this runs the stage's
actual step (its architecture, adapter or patch, precision mode, attention kernel,
activation checkpointing, micro-batch and optimizer) under torch's ``FakeTensorMode``,
where tensors have shapes and dtypes but no bytes, and measures it with torch's
``MemTracker``. A 7B full fine-tune traces in seconds with a few hundred MB of RAM,
without a GPU, so the estimate can be checked where the recipe is written.

    stages   plan -> TraceSpec per stage, trace, compare with the estimate (torch lazily)
    tracker  TraceSpec, trace_step, the MemTracker subclass (torch)
    build    the model, adapter/patch, optimizer and batch under fake tensors (torch)
    report   the per-stage tables (text)

Runtime side: imports torch, transformers and peft when a stage is traced, so the plain
``recipe plan`` path never imports this package.
"""

from llm_recipe.runtime.memtrace.report import format_trace, format_traces
from llm_recipe.runtime.memtrace.stages import (
    ALLOWANCES,
    StageTrace,
    check_only,
    stage_spec,
    trace_plan,
    trace_stage,
    traces_json,
)

__all__ = [
    "ALLOWANCES", "StageTrace", "check_only", "format_trace", "format_traces", "stage_spec",
    "trace_plan", "trace_stage", "traces_json",
]
