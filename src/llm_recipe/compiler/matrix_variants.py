"""Combining a matrix's axes into named variants: include, exclude, names.

:mod:`llm_recipe.compiler.matrix` reads the block (each key resolved to a settings path,
its values labelled, include and exclude entries checked); this module takes what it
read and makes the variants, GitHub Actions' way: every combination of the axes less the
ones an ``exclude`` entry matches, then each ``include`` entry joined to the combinations
it matches or, matching none (or carrying ``variant: NAME``), a variant of its own. It
also owns the names, which users type and which become folder names: a value's label
(:func:`value_label`), an axis's short name (:func:`short_names`) and a variant's name
(:func:`name_variants`). It exists apart so that the reading and its many errors stay
in one module and the combinatorics and naming, which ``matrix_view`` also uses, in another.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipePath, raise_all

if TYPE_CHECKING:
    from llm_recipe.compiler.matrix import Axis

MAX_NAME = 100
"""At most this many characters in a variant's name (it is part of folder names)."""
INCLUDE, EXCLUDE, VARIANT = "include", "exclude", "variant"
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A value's label: safe in a folder name and a shell word, and free of ``=`` and ``,``,
which separate a variant name's parts."""
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
"""A ``variant:`` name, like every other name in a recipe."""


@dataclass(frozen=True)
class Setting:
    """One value a variant sets, and where the recipe writes it (for error locations)."""

    path: RecipePath
    value: Any
    label: str | None
    source: RecipePath


@dataclass(frozen=True)
class Variant:
    name: str
    tokens: tuple[str, ...]
    """``("lr=1e-5", "r=8")``, or ``(name,)`` for a named one: what stage copies are
    named after (the tokens the variants sharing a copy have in common)."""
    settings: tuple[Setting, ...]
    source: RecipePath


@dataclass
class Combo:
    settings: dict[RecipePath, Setting]
    source: RecipePath
    name: str | None = None
    original: bool = False


@dataclass
class Entry:
    """One include or exclude entry, its keys resolved to paths."""

    index: int
    settings: dict[RecipePath, Setting] = field(default_factory=dict)
    keys: dict[RecipePath, str] = field(default_factory=dict)
    """Each path's key as written (for errors about it)."""
    name: str | None = None


def value_label(value: Any) -> str | None:
    """A value's text in a variant name, or None when it has no plain one.

    Floats print shortest with a plain exponent (``1.0e-5`` -> ``1e-5``, ``3.0`` stays
    ``3.0`` so it never reads as an integer), strings only when they are a plain word.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(value, str) and LABEL.match(value):
        return value
    return None


def short_names(paths: Sequence[RecipePath]) -> dict[RecipePath, str]:
    """Each path's shortest tail that no other path ends with (``stages.`` dropped)."""
    parts = {p: [str(x) for x in (p[1:] if p[0] == "stages" else p)] for p in paths}
    out = {}
    for path, mine in parts.items():
        for n in range(1, len(mine) + 1):
            tail = mine[-n:]
            if not any(other[-n:] == tail for p, other in parts.items() if p != path):
                break
        out[path] = ".".join(tail)
    return out


def combine(axes: list[Axis], excludes: list[Entry], warnings: list[str]) -> list[Combo]:
    """Every combination of the axes (the first axis varies slowest), less the excluded."""
    if not axes:
        return []
    combos = []
    used = set()
    for picks in itertools.product(*(range(len(a.values)) for a in axes)):
        settings = {a.path: Setting(a.path, a.values[i], a.labels[i],
                                    ("matrix", a.key, a.labels[i] if a.labelled else i))
                    for a, i in zip(axes, picks, strict=True)}
        hit = next((e.index for e in excludes if _matches(settings, e.settings)), None)
        if hit is None:
            combos.append(Combo(settings, ("matrix",), original=True))
        else:
            used.add(hit)
    for entry in excludes:
        if entry.index not in used:
            warnings.append(f"matrix: exclude entry {entry.index + 1} matches no combination")
    return combos


def _matches(settings: dict[RecipePath, Setting], wanted: dict[RecipePath, Setting]) -> bool:
    return all(p in settings and settings[p].label is not None
               and settings[p].label == s.label for p, s in wanted.items())


def include(combos: list[Combo], includes: list[Entry],
             axes: dict[RecipePath, Axis]) -> list[Combo]:
    """GitHub Actions' include: an entry's other settings join every original combination
    its axis values match; an entry that matches none, or has a name, is its own."""
    originals = [c for c in combos if c.original]
    for entry in includes:
        source: RecipePath = ("matrix", INCLUDE, entry.index)
        on_axes = {p: s for p, s in entry.settings.items() if p in axes}
        others = {p: s for p, s in entry.settings.items() if p not in axes}
        matched = [] if entry.name else [c for c in originals if _matches(c.settings, on_axes)]
        for combo in matched:
            combo.settings.update(others)
        if not matched:
            ordered = {p: on_axes[p] for p in axes if p in on_axes}
            combos.append(Combo({**ordered, **others}, source, entry.name))
    return combos


def name_variants(where: SourceMap, combos: list[Combo], short: dict[RecipePath, str]
           ) -> tuple[Variant, ...]:
    variants = []
    seen: dict[str, Combo] = {}
    errors = []
    for combo in combos:
        if combo.name is not None:
            tokens: tuple[str, ...] = (combo.name,)
        else:
            nameless = [s for s in combo.settings.values() if s.label is None]
            if nameless:
                errors.append(where.error(
                    nameless[0].source, "cannot name this variant: a value has no plain text",
                    expected="numbers, true/false, null or words of letters, digits, "
                             "'_', '.' and '-'",
                    hint="give the include entry a name: variant: NAME"))
                continue
            tokens = tuple(f"{short[s.path]}={s.label}" for s in combo.settings.values())
        name = combo.name or ",".join(tokens)
        if len(name) > MAX_NAME:
            errors.append(where.error(
                combo.source, f"variant name '{name[:40]}...' has {len(name)} characters",
                expected=f"at most {MAX_NAME} (it is part of folder names)",
                hint="name it (include: [{variant: NAME, ...}]), or label long values "
                     "with a mapping label -> value"))
            continue
        if name in seen:
            errors.append(where.error(
                (*combo.source, VARIANT) if combo.name else combo.source,
                f"variant name collision: two variants are named '{name}'",
                expected="a distinct name per variant",
                hint="rename one" if combo.name else "drop the repeated include entry, "
                     "or label values that print the same"))
            continue
        seen[name] = combo
        variants.append(Variant(name, tokens, tuple(combo.settings.values()), combo.source))
    raise_all(errors)
    return tuple(variants)
