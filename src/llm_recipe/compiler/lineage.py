"""The lineage vocabulary: what a name stands for, and which input field accepts it.

:class:`Artifact` (a model, an adapter or patch on a base, a dataset of a format, a
report), :class:`Edge` (a stage reading a name through one input field) and
:class:`Resolution` (the resolve pass's result, read by plan.py and the plan-time
rules), with the predicates over them: whether an artifact fits an input
(:func:`_fits`), which sections can hold a fitting entry (:func:`_sections`), a
stage's kind (:func:`_kind`) and the values at an input field pattern
(:func:`_expand`).

Kept apart from :mod:`llm_recipe.compiler.resolve`, which walks a recipe with these
(naming, ordering, type checks), so the types the rest of the compiler reads do not
live inside the pass; resolve re-exports them, so imports from it keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler.kinds import (
    ADAPTER,
    DATASET,
    KINDS_BY_NAME,
    MODEL,
    PATCH,
    Input,
    Kind,
)
from llm_recipe.errors import RecipePath


@dataclass(frozen=True)
class Artifact:
    """What a name stands for on a lineage edge."""

    type: str
    format: str | None = None
    base: str | None = None
    """For adapters and patches: the name whose full weights they sit on."""
    producer: str | None = None
    """The stage that writes it; None for models: and datasets: entries."""

    def describe(self, name: str) -> str:
        what = f"a dataset of format {self.format}" if self.type == DATASET else _article(self.type)
        if self.type in (ADAPTER, PATCH) and self.base:
            what += f" on '{self.base}'"
        if self.producer:
            return f"stage '{name}', which produces {what}"
        return f"'{name}', {what}"


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


@dataclass(frozen=True)
class Edge:
    """``stage`` consumes ``ref`` through its input field at ``path`` (relative to the stage)."""

    stage: str
    field: str
    path: RecipePath
    ref: str


@dataclass(frozen=True)
class Resolution:
    order: tuple[str, ...]
    artifacts: dict[str, Artifact]
    edges: dict[str, tuple[Edge, ...]]
    upstream: dict[str, tuple[str, ...]]
    """Stages each stage waits for (consumed or named in ``after``), in plan order."""



def _sections(spec: Input) -> tuple[str, ...]:
    """The sections whose entries can fit an input (stages always can)."""
    sections = ("models",) if spec.accepts & {MODEL, ADAPTER, PATCH} else ()
    return (*sections, *(("datasets",) if DATASET in spec.accepts else ()), "stages")


def _fits(spec: Input, artifact: Artifact) -> bool:
    if artifact.type not in spec.accepts:
        return False
    if artifact.type == DATASET and spec.formats and artifact.format is not None:
        return artifact.format in spec.formats
    return True


def _kind(stage: Any) -> Kind | None:
    """The stage's kind, or None when it has no valid one (the schema check reports that)."""
    kind = stage.get("kind") if isinstance(stage, dict) else None
    return KINDS_BY_NAME.get(kind) if isinstance(kind, str) else None


def _expand(stage: dict[str, Any], pattern: str) -> list[tuple[RecipePath, Any]]:
    """Values at a field pattern: ``data``, ``models[]``, ``phases[].data``, ``reward.model``."""
    found: list[tuple[RecipePath, Any]] = [((), stage)]
    for part in pattern.split("."):
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        step: list[tuple[RecipePath, Any]] = []
        for path, node in found:
            if not isinstance(node, dict) or key not in node:
                continue
            value = node[key]
            if many:
                if isinstance(value, list):
                    step.extend(((*path, key, i), item) for i, item in enumerate(value))
            else:
                step.append(((*path, key), value))
        found = step
    return found
