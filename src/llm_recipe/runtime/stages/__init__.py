"""Stage kinds of the runtime: one module per kind, imported only when a stage runs.

The registry is an explicit list (a test keeps it in sync with the compiler's kinds).
Each module has one frozen config dataclass and ``run(ctx) -> StageResult``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from llm_recipe.errors import RecipeError

STAGE_MODULES: dict[str, str] = {
    "pretrain": "llm_recipe.runtime.stages.pretrain",
    "sft": "llm_recipe.runtime.stages.sft",
    "rollout": "llm_recipe.runtime.stages.rollout",
    "preferences": "llm_recipe.runtime.stages.preferences",
    "reward_model": "llm_recipe.runtime.stages.reward_model",
    "dpo": "llm_recipe.runtime.stages.dpo",
    "grpo": "llm_recipe.runtime.stages.grpo",
    "ppo": "llm_recipe.runtime.stages.ppo",
    "eval": "llm_recipe.runtime.stages.eval",
    "continual": "llm_recipe.runtime.stages.continual",
}
"""Kinds the runtime can execute today; the compiler knows more (plan and render work)."""


def stage_module(kind: str) -> ModuleType:
    if kind not in STAGE_MODULES:
        raise RecipeError(
            f"the runtime cannot execute {kind} stages yet",
            hint="recipe plan and recipe render work for every kind; run the stages before "
            "it with --only, or wait for the release that adds it",
        )
    return importlib.import_module(STAGE_MODULES[kind])
