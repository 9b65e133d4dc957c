"""What a stage module gets: its slice of the plan, paths, inputs and a log.

A stage kind is one module under ``runtime/stages/`` with one frozen config dataclass
and one ``run(ctx: StageContext) -> StageResult``. The context resolves everything the
plan names (paths relative to the working directory, input models and datasets), so
stage code never reads YAML, never guesses paths and never decides devices or
precision (see :mod:`llm_recipe.runtime.compute`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llm_recipe.compiler.plan import Plan, StageInput, StagePlan
from llm_recipe.runtime.log import StageLog


@dataclass
class StageResult:
    """What a stage reports back; the executor records it in the manifest and summary."""

    metrics: dict[str, Any] = field(default_factory=dict)
    key_metric: str | None = None
    """Name of the metric the summary table shows (e.g. 'loss', 'sft/gsm8k_accuracy')."""
    steps: int | None = None
    early_stopping: dict[str, Any] | None = None
    """What early stopping did (``stopped``, ``stopped_early_at``, ``best_step``...), when
    the stage has it; the manifest records it."""


class StageModule(Protocol):
    """The shape of a module in ``runtime/stages/``."""

    def run(self, ctx: StageContext) -> StageResult: ...


@dataclass
class StageContext:
    plan: Plan
    stage: StagePlan
    root: Path
    """The directory the plan's relative paths are relative to."""
    log: StageLog
    resume_from: Path | None = None
    """The checkpoint to resume from: the latest complete one of an interrupted run of
    this same stage, or the one ``train.resume_from`` names; None for step 0."""

    @property
    def config(self) -> dict[str, Any]:
        return self.stage.config

    @property
    def compute(self) -> dict[str, Any]:
        return self.stage.compute

    @property
    def dir(self) -> Path:
        return self.path(self.stage.dir)

    @property
    def output_path(self) -> Path:
        return self.path(self.stage.output.path)

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    def path(self, plan_path: str) -> Path:
        """A plan path (relative to the working directory) as an absolute path."""
        p = Path(plan_path)
        return p if p.is_absolute() else self.root / p

    def input(self, field_name: str) -> StageInput:
        for item in self.stage.inputs:
            if item.field == field_name:
                return item
        raise KeyError(f"stage {self.stage.name} has no input {field_name!r}")

    def has_input(self, field_name: str) -> bool:
        return any(item.field == field_name for item in self.stage.inputs)

    def inputs_under(self, prefix: str) -> list[StageInput]:
        """List inputs such as ``models.0``, ``models.1`` (in order) for prefix ``models``."""
        return [i for i in self.stage.inputs if i.field.split(".")[0] == prefix]

    def rows(self, field_name: str) -> list[dict[str, Any]]:
        """The rows of a dataset input, in the canonical shape of its format, as Python
        dicts: for small consumers (eval, rollout prompts, preferences). Read through the
        same cached Arrow conversion as :meth:`dataset`."""
        from llm_recipe.runtime.data import inputs

        return inputs.rows(self, field_name)

    def dataset(self, field_name: str) -> Any:
        """A dataset input as a memory-mapped ``datasets.Dataset`` of canonical rows,
        converted once per content and cached under ``<workspace>/.cache/datasets``.

        With the stage's ``validation_split``, ``data`` is the training part and
        ``validation`` the held-out part (see :mod:`llm_recipe.runtime.data.inputs`).
        """
        from llm_recipe.runtime.data import inputs

        return inputs.load(self, field_name)[0]

    @property
    def has_validation(self) -> bool:
        """Whether the stage has validation rows: a validation input or a split."""
        from llm_recipe.runtime.data import inputs

        return inputs.has_validation(self)

    def load_model(self, item: StageInput, *, trainable: bool = False) -> tuple[Any, Any]:
        """(model, tokenizer) for a model, adapter or patch input (see runtime.loading)."""
        from llm_recipe.runtime.loading import load_input_model

        return load_input_model(self, item, trainable=trainable)
