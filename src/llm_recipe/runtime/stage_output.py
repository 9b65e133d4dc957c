"""A finished stage's output, for the commands that use it after the run.

``recipe export``, ``recipe chat`` and ``recipe generate`` work on what a stage left in
the workspace, outside any run: this module finds the stage (did-you-mean on a typo),
checks that its output is complete (its manifest), says when it is of another config
than the recipe now describes (stale: still usable, the user is told), and loads it as
a stage downstream of it would (a model, an adapter on its base, a continual patch on
its frozen base), through the same :mod:`llm_recipe.runtime.loading` walk. Nothing here
writes to the stage's folder: its log is disabled.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StageInput, StagePlan
from llm_recipe.compiler.status import FRESH, STALE, read_manifest
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.integrity import stage_path

MODEL_OUTPUTS = ("model", "adapter", "patch")
"""Output types that are a language model (the others: datasets, metrics)."""


@dataclass(frozen=True)
class FinishedStage:
    """A stage whose output is on disk, with what the user should know about it."""

    plan: Plan
    stage: StagePlan
    root: Path
    manifest: dict[str, Any]
    stale_reason: str | None
    """Why the output is not of the recipe's current config (None when it is fresh)."""

    @property
    def output_dir(self) -> Path:
        return stage_path(self.root, self.stage.output.path)

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the config that made the output on disk."""
        return str(self.manifest.get("fingerprint") or self.stage.fingerprint)

    def as_input(self) -> StageInput:
        """The output as a downstream stage would see it in its inputs."""
        output = self.stage.output
        return StageInput(field="model", ref=self.stage.name, type=output.type,
                          fingerprint=self.fingerprint, format=output.format,
                          base=output.base, producer=self.stage.name, path=output.path)


def stage_named(plan: Plan, name: str) -> StagePlan:
    """The stage called ``name``; a RecipeError listing the stages (and a close match)."""
    names = [s.name for s in plan.stages]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        raise RecipeError(f"no stage named {name!r} in {plan.recipe['file']}",
                          expected=f"one of: {', '.join(names)}",
                          hint=f"did you mean {close[0]!r}?" if close else None)
    return plan.stage(name)


def finished_stage(plan: Plan, name: str, root: Path, *, run_hint: str,
                   wanted: tuple[str, ...] = MODEL_OUTPUTS) -> FinishedStage:
    """The stage ``name`` with a complete output of one of the ``wanted`` types.

    ``run_hint`` is the command that would make the output (``recipe run FILE --only
    sft``), shown when there is none yet.
    """
    from llm_recipe.runtime.executor import current_status

    stage = stage_named(plan, name)
    if stage.output.type not in wanted:
        usable = [s.name for s in plan.stages if s.output.type in wanted]
        raise RecipeError(
            f"stage {name} ({stage.kind}) produces {stage.output.type}, not a model",
            expected=f"a stage whose output is {' or '.join(wanted)}",
            hint=f"stages with a model: {', '.join(usable)}" if usable else None)
    manifest = read_manifest(stage_path(root, stage.dir))
    if manifest is None or manifest.get("status") != "complete":
        raise RecipeError(f"stage {name} has no complete output in {stage.dir}",
                          hint=f"run it first: {run_hint}")
    status = current_status(stage, root)
    stale = None
    if status["state"] != FRESH:
        stale = status.get("reason") or status["state"]
        if status["state"] == STALE and status.get("damaged"):
            raise RecipeError(f"stage {name}: {stale}", hint=f"run it again: {run_hint}")
    return FinishedStage(plan=plan, stage=stage, root=root, manifest=manifest,
                         stale_reason=stale)


def context(finished: FinishedStage) -> Any:
    """A StageContext for loading the stage's output, with a disabled log (writes nothing)."""
    from llm_recipe.runtime.context import StageContext
    from llm_recipe.runtime.log import StageLog

    directory = stage_path(finished.root, finished.stage.dir)
    return StageContext(plan=finished.plan, stage=finished.stage, root=finished.root,
                        log=StageLog(directory, finished.stage.name, enabled=False))


def load_output(finished: FinishedStage) -> tuple[Any, Any]:
    """(model, tokenizer) of the stage's output, in eval mode, on the stage's dtype."""
    ctx = context(finished)
    model, tokenizer = ctx.load_model(finished.as_input(), trainable=False)
    model.eval()
    return model, tokenizer
