"""A stage's settings as the plan gives them to the runtime: its config with schema
defaults, its merged compute, its launcher, its generation backend.

Split from :mod:`llm_recipe.compiler.plan` (which re-exports these names): the planner
walks the recipe, these say what one stage's settings resolve to.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

from llm_recipe.compiler import world
from llm_recipe.compiler.schema import fill_defaults, recipe_schema

GENERATING_KINDS = frozenset({"rollout", "grpo", "ppo", "eval"})


def generation_backend(generation: dict[str, Any], compute: dict[str, Any],
                       kind: str = "rollout") -> tuple[str, str]:
    """(backend, why) for a stage that generates: vLLM or transformers ``generate``.

    ``auto`` picks vLLM when it is installed here (found without importing it) and the
    stage has GPUs. The runtime decides again where it runs, by the same rule. PPO
    samples from the policy it is training, between updates, with ``generate`` only.
    """
    if kind == "ppo":
        return "transformers", "transformers generate (PPO samples from the policy in training)"
    wanted = generation.get("backend", "auto")
    if wanted != "auto":
        return wanted, f"{wanted} (as the recipe says)"
    if not int(compute.get("gpus_per_node") or 0):
        return "transformers", "transformers generate (no GPU: vLLM needs one)"
    if importlib.util.find_spec("vllm") is None:
        return "transformers", "transformers generate (vLLM is not installed here)"
    return "vllm", "vLLM (installed, and the stage has GPUs)"


def stage_config(raw: dict[str, Any], seed: int) -> dict[str, Any]:
    """A stage's config as the runtime gets it: schema defaults, seed and training length.

    A training stage always has a ``train`` block (defaults filled), and one that
    says neither ``epochs`` nor ``max_steps`` trains for one epoch.
    """
    stage = {k: v for k, v in raw.items() if k != "compute"}
    defs = recipe_schema()["$defs"]
    if "train" in defs[f"stage_{raw['kind']}"]["properties"]:
        stage.setdefault("train", {})
    config = fill_defaults(stage, defs["stage"])
    config.setdefault("seed", seed)
    train = config.get("train")
    if raw["kind"] in LENGTH_KINDS and "max_steps" not in train and "epochs" not in train:
        train["epochs"] = 1
    return config


LENGTH_KINDS = frozenset({"pretrain", "sft", "dpo", "grpo", "ppo"})
"""Kinds trained for epochs or max_steps (continual counts steps per phase)."""


def launcher_for(compute: dict[str, Any]) -> dict[str, Any]:
    """What launching one stage needs: the launcher and how many processes it starts."""
    name = compute["launcher"]
    return {
        "name": name,
        "inner": world.inner_launcher(compute) if name == "docker" else None,
        "nodes": compute["nodes"],
        "processes_per_node": world.processes_per_node(compute),
        "processes": world.processes(compute),
    }


def merged_compute(recipe: dict[str, Any] | None, override: dict[str, Any] | None, *,
                   local: bool = False) -> dict[str, Any]:
    """A stage's compute: the recipe's, deep-merged with the stage's, defaults filled.

    ``local`` kinds (CPU-only work) run as one local process whatever the recipe says.
    """
    merged = _deep_merge({"distributed": {}}, recipe or {})
    merged = _deep_merge(merged, override or {})
    if local:
        merged.update(launcher="local", nodes=1, gpus_per_node=0)
    return fill_defaults(merged, recipe_schema()["$defs"]["compute"])


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
