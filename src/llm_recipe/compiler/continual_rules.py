"""Plan-time rules of the continual stage that no JSON Schema keyword can state.

- two phases that train on the same data stream (phase k would replay itself);
- a probe interval longer than a phase (that phase would never be probed, so it could
  never write a ``good`` snapshot or roll back);
- a patch rank larger than the model's hidden size (the sidecar's down-projection
  would not be low rank), and patch layers the model does not have.

The replay ratio's range [0, 1) and a rollback threshold above 0 are schema rules. The
architecture comes from the same table and ``init`` specs as the estimate, so no model
is loaded (and torch is never imported).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_recipe.compiler import architectures
from llm_recipe.compiler.kinds import KINDS_BY_NAME
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError


def continual_errors(data: dict[str, Any], where: SourceMap, cwd: Path) -> list[RecipeError]:
    """Every error of the rules above, for every continual stage."""
    stages = mapping_at(data, "stages")
    errors: list[RecipeError] = []
    for name, stage in stages.items():
        if not isinstance(stage, dict) or stage.get("kind") != "continual":
            continue
        at = ("stages", name)
        phases = [p for p in stage.get("phases") or [] if isinstance(p, dict)]
        errors += _repeated_streams(phases, at, where)
        errors += _probe_intervals(stage, phases, at, where)
        arch = _architecture(data, stage.get("model"), cwd)
        if arch is not None:
            errors += _patch_shape(stage, arch, at, where)
    return errors


def _repeated_streams(phases: list[dict[str, Any]], at: tuple,
                      where: SourceMap) -> list[RecipeError]:
    errors = []
    first: dict[str, int] = {}
    for index, phase in enumerate(phases):
        stream = phase.get("data")
        if stream in first:
            errors.append(where.error(
                (*at, "phases", index, "data"),
                f"phase '{phase.get('name')}' trains on '{stream}', which phase "
                f"'{phases[first[stream]].get('name')}' already trained on",
                expected="a data stream of its own per phase",
                hint="replay of earlier phases is automatic (replay_ratio); to train longer "
                "on one stream, raise that phase's steps"))
        else:
            first[stream] = index
    return errors


def _probe_intervals(stage: dict[str, Any], phases: list[dict[str, Any]], at: tuple,
                     where: SourceMap) -> list[RecipeError]:
    shortest = min((p for p in phases if isinstance(p.get("steps"), int)),
                   key=lambda p: p["steps"], default=None)
    if shortest is None:
        return []
    errors = []
    for index, probe in enumerate(stage.get("probes") or []):
        every = probe.get("every", 1000) if isinstance(probe, dict) else None
        if isinstance(every, int) and every > shortest["steps"]:
            errors.append(where.error(
                (*at, "probes", index, "every") if "every" in probe else (*at, "probes", index),
                f"probe '{probe.get('name')}' runs every {every} steps, longer than phase "
                f"'{shortest.get('name')}' ({shortest['steps']} steps), which would never be "
                "probed: no good snapshot, no rollback",
                expected=f"every <= {shortest['steps']}",
                hint=f"e.g. every: {max(1, shortest['steps'] // 4)}"))
    return errors


def _patch_shape(stage: dict[str, Any], arch: architectures.Architecture, at: tuple,
                 where: SourceMap) -> list[RecipeError]:
    patch = mapping_at(stage, "patch")
    errors = []
    rank = patch.get("rank", 8)
    if isinstance(rank, int) and rank > arch.hidden_size:
        errors.append(where.error(
            (*at, "patch", "rank"),
            f"patch rank {rank} is larger than the model's hidden size {arch.hidden_size}",
            expected=f"a rank below {arch.hidden_size} (a low-rank sidecar)",
            hint="ranks of 8 to 64 are usual; the continual GPT-2 project (hidden 768) uses 32"))
    layers = patch.get("layers", "all")
    if isinstance(layers, list):
        outside = [i for i in layers if isinstance(i, int) and i >= arch.num_layers]
        if outside:
            errors.append(where.error(
                (*at, "patch", "layers"),
                f"patch layers {outside} do not exist: the model has {arch.num_layers} "
                "blocks", expected=f"indices 0..{arch.num_layers - 1}, or all"))
    return errors


def _architecture(data: dict[str, Any], name: Any, cwd: Path,
                  depth: int = 0) -> architectures.Architecture | None:
    """The architecture of a models: entry, or of the model a stage trained from."""
    models = mapping_at(data, "models")
    stages = mapping_at(data, "stages")
    if not isinstance(name, str) or depth > len(stages):
        return None
    if isinstance(models.get(name), dict):
        try:
            return architectures.lookup(models[name], cwd)
        except (ValueError, KeyError, TypeError):
            return None
    stage = stages.get(name)
    kind = KINDS_BY_NAME.get(stage.get("kind")) if isinstance(stage, dict) else None
    if kind is None or kind.policy_field is None:
        return None
    return _architecture(data, stage.get(kind.policy_field), cwd, depth + 1)
