"""The ablation matrix: a recipe's ``matrix`` block -> named variants of the recipe.

``matrix`` maps settings paths (as ``--set`` writes them; ``sft.train.lr`` is short for
``stages.sft.train.lr``) to the values to try, the way GitHub Actions' ``strategy.matrix``
does: every combination of the axes is a variant, ``exclude`` drops the combinations
that match one of its entries, ``include`` adds settings to the combinations it matches
or, matching none (or carrying ``variant: NAME``), is a variant of its own. This is the
NLI training system's "experiment file layered on the defaults", a W&B grid sweep or a
Hydra multirun, written in the recipe, so the plan can see which stages the variants share.

Each variant is the composed recipe (extends, profiles, ``--set``) with its settings
applied, then ``${vars.x}`` interpolated (so a variant may change a variable and every
use follows), validated and planned on its own (:mod:`llm_recipe.compiler.matrix_plan`, which then
merges the variants' plans, planning a stage once where its fingerprint is the same in
every variant). This module reads the block: paths, values, include and exclude entries;
:mod:`llm_recipe.compiler.matrix_variants` combines what it read into named variants.

Names are typed by users and become folder names, so they are stable and plain: a
value is labelled by its YAML text (``1e-5``, ``16``, ``true``, ``nf4``) or by the label
it is given (``{plain: a.jsonl, reflected: b.jsonl}``); an axis by the shortest tail of
its path no other key shares (``lr``, ``r``, ``sft.train.lr`` beside ``dpo.train.lr``);
a variant by ``lr=1e-5,r=8``, or by its ``variant:`` name.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from llm_recipe.compiler.compose import _check_settable, split_path
from llm_recipe.compiler.load import Document
from llm_recipe.compiler.matrix_variants import (
    EXCLUDE,
    INCLUDE,
    LABEL,
    NAME,
    VARIANT,
    Entry,
    Setting,
    Variant,
    combine,
    include,
    name_variants,
    short_names,
    value_label,
)
from llm_recipe.compiler.matrix_variants import MAX_NAME as MAX_NAME  # matrix_plan's import
from llm_recipe.compiler.schema import recipe_schema
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import Location, RecipeError, RecipeErrors, RecipePath, raise_all

MAX_VARIANTS = 256
"""At most this many variants: each is planned, and run, in full where it differs."""

FIXED: dict[str, str] = {
    "recipe": "the format version is not a setting",
    "extends": "composition happens before the matrix",
    "profiles": "composition happens before the matrix",
    "matrix": "a matrix cannot vary itself",
    "name": "the variants share the recipe's workspace; their stage folders are named "
            "after them",
    "workspace": "the variants share the recipe's workspace; their stage folders are "
                 "named after them",
    "tracking": "a run is one tracking run, with a nested run per stage of every variant",
    "description": "it changes nothing a stage computes",
    "models": "entries are shared by every variant",
    "datasets": "entries are shared by every variant",
}
"""Top-level keys a matrix may not vary, and why."""
ENTRY_HINT = ("define one entry per value and vary the stage that reads it, "
              "e.g. sft.data: [nli_train, nli_train_reflected]")


@dataclass(frozen=True)
class Axis:
    """One key of the matrix: a path and the values to try, each with its label."""

    key: str
    """As written in the recipe (``sft.train.lr``)."""
    path: RecipePath
    """The setting it changes (``("stages", "sft", "train", "lr")``)."""
    labels: tuple[str, ...]
    values: tuple[Any, ...]
    labelled: bool
    """Written as a mapping ``label: value``: include and exclude name values by label."""


@dataclass(frozen=True)
class Expansion:
    axes: tuple[Axis, ...]
    variants: tuple[Variant, ...]
    short: dict[RecipePath, str]
    """Each varied path's short name in variant names (``lr``)."""
    warnings: tuple[str, ...] = ()


def take(doc: Document) -> Any:
    """Remove the ``matrix`` block from a composed document; None when there is none.

    The variants never see it: each is a recipe without a matrix, and ``matrix: null``
    (e.g. in a file that extends a recipe with a matrix) means a single plan.
    """
    if not isinstance(doc.data, dict):
        return None
    return doc.data.pop("matrix", None)


def expand(doc: Document, spec: Any) -> Expansion:
    """The variants of ``spec`` over ``doc`` (the composed recipe, matrix removed).

    Raises every problem of the block at once, each at its line: a path that names no
    stage or setting, an empty axis, a value that cannot be named, an include or exclude
    entry of the wrong shape, colliding names, too many variants.
    """
    where = doc.where
    if not isinstance(spec, dict) or not spec:
        raise where.error(("matrix",), "a matrix maps settings paths to the values to try",
                          expected="e.g. matrix: {sft.train.lr: [1.0e-5, 3.0e-5]}",
                          hint="remove matrix: (or set it to null) to plan one run")
    errors: list[RecipeError] = []
    axes: list[Axis] = []
    for key, values in spec.items():
        if key in (INCLUDE, EXCLUDE):
            continue
        try:
            axes.append(_axis(doc, str(key), values))
        except RecipeError as error:
            errors.extend(each_error(error))
    by_path = {axis.path: axis for axis in axes}
    includes = _entries(doc, spec, INCLUDE, by_path, errors)
    excludes = _entries(doc, spec, EXCLUDE, by_path, errors)
    raise_all(errors)
    size = math.prod(len(axis.values) for axis in axes) if axes else 0
    if size > MAX_VARIANTS:
        raise _too_many(where, size)
    warnings: list[str] = []
    combos = combine(axes, excludes, warnings)
    combos = include(combos, includes, by_path)
    if not combos:
        raise where.error(("matrix",), "the matrix has no variants: exclude drops every "
                          "combination", hint="remove an exclude entry, or add include entries")
    if len(combos) > MAX_VARIANTS:
        raise _too_many(where, len(combos))
    paths = [*by_path, *(p for c in combos for p in c.settings if p not in by_path)]
    short = short_names(list(dict.fromkeys(paths)))
    variants = name_variants(where, combos, short)
    return Expansion(tuple(axes), variants, short, tuple(warnings))


def _axis(doc: Document, key: str, values: Any) -> Axis:
    at: RecipePath = ("matrix", key)
    path = settings_path(doc, key, at)
    where = doc.where
    if isinstance(values, list):
        labels = []
        for index, value in enumerate(values):
            label = value_label(value)
            if label is None:
                raise where.error(
                    (*at, index), f"cannot name this value of {key} in a variant name",
                    expected="numbers, true/false, null or words of letters, digits, "
                             "'_', '.' and '-'",
                    hint=f"write the axis as a mapping label -> value, e.g. {key}: "
                         "{small: ..., large: ...}")
            labels.append(label)
        pairs = list(zip(labels, values, strict=True))
        labelled = False
    elif isinstance(values, dict):
        for label in values:
            if not isinstance(label, str) or not LABEL.match(label):
                raise where.error((*at, label), f"'{label}' cannot label a value of {key}",
                                  expected="a word of letters, digits, '_', '.' and '-'",
                                  key=True)
        pairs = list(values.items())
        labelled = True
    else:
        raise where.error(at, f"{key}: an axis is a list of values or a mapping label -> value",
                          expected=f"e.g. {key}: [a, b] or {key}: {{a: ..., b: ...}}",
                          hint=f"write [{value_label(values) or '...'}] for a single value")
    if not pairs:
        raise where.error(at, f"{key} has no values to try",
                          expected="at least one value",
                          hint="remove the axis, or list the values to try")
    seen: dict[str, int] = {}
    for index, (label, _) in enumerate(pairs):
        if label in seen:
            raise where.error(
                (*at, label if labelled else index),
                f"variant name collision: values {seen[label] + 1} and {index + 1} of {key} "
                f"are both named '{label}'",
                expected="values that differ in their text",
                hint=f"drop the repeated value, or label the values: {key}: {{a: ..., b: ...}}",
                key=labelled)
        seen[label] = index
    return Axis(key, path, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), labelled)


def settings_path(doc: Document, key: str, at: RecipePath) -> RecipePath:
    """The recipe path a matrix key names: ``sft.train.lr`` -> ``stages.sft.train.lr``.

    A first part that is a top-level key is a full path (``vars.steps``, ``seed``,
    ``stages.sft.train.lr``); otherwise it must be a stage of the recipe.
    """
    where = doc.where
    location = where.locate(at, key=True) or Location(doc.file, 1, 1)
    path = split_path(key, location)
    top = recipe_schema()["properties"]
    stages = doc.data.get("stages") if isinstance(doc.data.get("stages"), dict) else {}
    if path[0] not in top:
        if path[0] not in stages:
            choices = [*stages, *(k for k in top if k not in FIXED)]
            close = difflib.get_close_matches(str(path[0]), choices, n=1)
            rest = key[len(str(path[0])):]
            raise where.error(
                at, f"'{key}' names no stage or setting",
                expected=f"a stage ({', '.join(stages)}) or a settings path such as "
                         "stages.sft.train.lr or vars.steps",
                hint=f"did you mean '{close[0]}{rest}'?" if close
                else "start the path with a stage of the recipe", key=True)
        path = ("stages", *path)
    if path[0] in FIXED:
        raise where.error(at, f"a matrix cannot vary {path[0]}: {FIXED[path[0]]}",
                          expected="a setting of a stage, vars, seed or compute",
                          hint=ENTRY_HINT if path[0] in ("models", "datasets")
                          else "set it once, outside the matrix", key=True)
    if path[0] == "stages" and len(path) < 3:
        raise where.error(at, f"'{key}' is a whole stage: a matrix varies settings inside "
                          "stages, it cannot add or remove one",
                          expected="a path into a stage, e.g. stages.sft.train.lr", key=True)
    try:
        _check_settable(doc, path, location)
    except RecipeError as error:
        error.snippet = where.snippet(location)
        raise
    return path


def _entries(doc: Document, spec: dict[str, Any], which: str, axes: dict[RecipePath, Axis],
             errors: list[RecipeError]) -> list[Entry]:
    """The include or exclude entries, each key resolved; problems go to ``errors``."""
    raw = spec.get(which)
    if raw is None:
        return []
    where = doc.where
    shape = ("{variant: NAME, PATH: value, ...}" if which == INCLUDE
             else "{AXIS: value, ...}")
    if not isinstance(raw, list) or not raw:
        errors.append(where.error(("matrix", which), f"{which} is a list of mappings",
                                  expected=f"e.g. {which}: [{shape}]"))
        return []
    out = []
    for index, item in enumerate(raw):
        at: RecipePath = ("matrix", which, index)
        if not isinstance(item, dict) or not item:
            errors.append(where.error(at, f"{which} entry {index + 1} is not a mapping of "
                                      "paths to values", expected=shape))
            continue
        entry = Entry(index)
        try:
            for key, value in item.items():
                if key == VARIANT and which == INCLUDE:
                    if not isinstance(value, str) or not NAME.match(value):
                        raise where.error((*at, key), f"'{value}' cannot name a variant",
                                          expected="a letter, then letters, digits, '_' or '-'")
                    entry.name = value
                    continue
                path = settings_path(doc, str(key), (*at, str(key)))
                entry.keys[path] = str(key)
                entry.settings[path] = _entry_setting(where, axes.get(path), path, value,
                                                      (*at, str(key)), which)
        except RecipeError as error:
            errors.extend(each_error(error))
            continue
        if which == EXCLUDE:
            loose = [p for p in entry.settings if p not in axes]
            if loose:
                errors.append(where.error(
                    (*at, entry.keys[loose[0]]),
                    "exclude names a path that is not an axis of the matrix",
                    expected=f"one of: {', '.join(a.key for a in axes.values())}", key=True))
                continue
        if which == INCLUDE and not entry.settings and entry.name is None:
            errors.append(where.error(at, "include entry sets nothing", expected=shape))
            continue
        out.append(entry)
    return out


def _entry_setting(where: SourceMap, axis: Axis | None, path: RecipePath, value: Any,
                   at: RecipePath, which: str) -> Setting:
    """An include/exclude value: by label on a labelled axis, else as written."""
    if axis is not None and axis.labelled:
        if value not in axis.labels:
            raise where.error(at, f"no value of {axis.key} is labelled '{value}'",
                              expected=f"one of its labels: {', '.join(axis.labels)}",
                              hint=f"{which} names the values of a labelled axis by label")
        index = axis.labels.index(value)
        return Setting(path, axis.values[index], value, ("matrix", axis.key, value))
    return Setting(path, value, value_label(value), at)


def _too_many(where: SourceMap, count: int) -> RecipeError:
    return where.error(
        ("matrix",), f"the matrix expands to {count} variants",
        expected=f"at most {MAX_VARIANTS}",
        hint="try fewer values, drop combinations with exclude, or list the variants you "
             "want with include (a matrix of include entries alone plans exactly those)",
        key=True)


def each_error(error: RecipeError) -> list[RecipeError]:
    """The errors inside ``error``: one, or each of several reported together."""
    return list(error.errors) if isinstance(error, RecipeErrors) else [error]
