"""Semantic diff of two plans: what a recipe change does, stage by stage.

A review of a recipe change should not be a review of YAML text: the same change can
be written in a base file, a profile or a default, and what matters is the config a
stage will run with and which stages will train again. So this compares *compiled*
plans (extends, profiles, ``--set`` and schema defaults applied), through a plain-data
*view* of each (:func:`plan_view`) that the lockfile stores too (:mod:`.lock`), so a
lock can be compared with today's plan by the same code.

Pure: two views (or two Plans) in, one :class:`Diff` out. Rendering is the caller's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llm_recipe.compiler.fingerprint import (
    CONFIG_FILES,
    COSMETIC_STAGE_KEYS,
    COSMETIC_TRAIN_KEYS,
)
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.world import precision_mode, replicas
from llm_recipe.errors import PathPart, format_path

View = dict[str, Any]
"""``{"recipe": {...}, "models": {...}, "datasets": {...}, "stages": {name: {...}}}``."""

SETTINGS = ("name", "seed", "workspace", "tracking", "env")
"""Recipe-wide values a view keeps (the rest of a recipe reaches the stages' configs)."""


def plan_view(plan: Plan) -> View:
    """What of a plan a review (or a lock) compares, as JSON-plain data.

    Per stage: kind, config, compute, inputs by field (ref, producer, fingerprint) and
    fingerprint. Left out: paths under the workspace, status and estimates (they depend
    on the machine and the workspace, not on the recipe). Stages keep plan order as
    the mapping's order (a lock sorts them: order follows from the lineage).
    """
    view = {
        "recipe": {
            "name": plan.recipe["name"],
            "seed": plan.recipe["seed"],
            "workspace": plan.workspace,
            "tracking": plan.tracking,
            "env": list(plan.env),
        },
        "models": plan.models,
        "datasets": plan.datasets,
        "stages": {
            stage.name: {
                "kind": stage.kind,
                "config": stage.config,
                "compute": stage.compute,
                "inputs": {
                    i.field: {"ref": i.ref, "producer": i.producer, "fingerprint": i.fingerprint}
                    for i in stage.inputs
                },
                "fingerprint": stage.fingerprint,
            }
            for stage in plan.stages
        },
    }
    return json.loads(json.dumps(view))  # tuples -> lists: equal to a view read back


@dataclass(frozen=True)
class Change:
    """One value that differs. ``where``: a stage name, ``models.x``/``datasets.x``, or
    ``recipe``; ``parts``: the path inside it. A value that is absent is ``None``."""

    where: str
    parts: tuple[PathPart, ...]
    old: Any
    new: Any

    @property
    def path(self) -> str:
        return format_path(self.parts)


@dataclass(frozen=True)
class StageSummary:
    """An added or removed stage: its kind and what it consumes (field -> ref)."""

    name: str
    kind: str
    inputs: dict[str, str]


@dataclass(frozen=True)
class LineageChange:
    """A stage input that now names another artifact (``None``: the field is new/gone)."""

    stage: str
    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Rerun:
    """A stage whose fingerprint differs, and why.

    ``own``: its config or compute paths that changed; ``upstream``: producing stages
    whose outputs change; ``inputs``: ``models:``/``datasets:`` entries that changed
    (or whose file content did); ``lineage``: fields that now name another input;
    ``new``: the stage did not exist before.
    """

    stage: str
    own: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    lineage: tuple[str, ...] = ()
    new: bool = False

    @property
    def cause(self) -> str:
        """The first reason: new, own, lineage, input, upstream, else other."""
        for name, value in (("new", self.new), ("own", self.own), ("lineage", self.lineage),
                            ("input", self.inputs), ("upstream", self.upstream)):
            if value:
                return name
        return "other"

    def reasons(self) -> list[str]:
        """Short phrases a person reads: ``own config: train.lr``, ``upstream: sft``."""
        if self.new:
            return ["new stage"]
        out = []
        if self.own:
            out.append(f"own config: {', '.join(self.own)}")
        if self.lineage:
            out.append(f"input {', '.join(self.lineage)} now names another artifact")
        if self.inputs:
            out.append(f"input changed: {', '.join(self.inputs)}")
        if self.upstream:
            out.append(f"upstream: {', '.join(self.upstream)}")
        return out or ["fingerprint changed (kind version or content the plan does not show)"]


@dataclass(frozen=True)
class Diff:
    """What changed between plan ``a`` and plan ``b`` (stages in ``b``'s order)."""

    a: dict[str, Any]
    b: dict[str, Any]
    changed: tuple[Change, ...] = ()
    entries: tuple[Change, ...] = ()
    settings: tuple[Change, ...] = ()
    added: tuple[StageSummary, ...] = ()
    removed: tuple[StageSummary, ...] = ()
    lineage: tuple[LineageChange, ...] = ()
    rerun: tuple[Rerun, ...] = ()
    unchanged: tuple[str, ...] = ()
    order: tuple[str, ...] = field(default=(), compare=False)
    """``b``'s stages in plan order (for display)."""

    @property
    def empty(self) -> bool:
        return not (self.changed or self.entries or self.settings or self.added
                    or self.removed or self.lineage or self.rerun)

    def to_dict(self) -> dict[str, Any]:
        """The ``recipe diff --json`` document (docs/commands.md)."""
        return {
            "a": self.a,
            "b": self.b,
            "changed": [{"stage": c.where, "path": c.path, "old": c.old, "new": c.new}
                        for c in self.changed],
            "entries": [{"entry": c.where, "path": c.path, "old": c.old, "new": c.new}
                        for c in self.entries],
            "settings": [{"path": c.path, "old": c.old, "new": c.new} for c in self.settings],
            "added": [_summary(s) for s in self.added],
            "removed": [_summary(s) for s in self.removed],
            "lineage": [{"stage": x.stage, "field": x.field, "old": x.old, "new": x.new}
                        for x in self.lineage],
            "rerun": [r.stage for r in self.rerun],
            "reasons": [{"stage": r.stage, "cause": r.cause, "own": list(r.own),
                         "upstream": list(r.upstream), "inputs": list(r.inputs),
                         "lineage": list(r.lineage), "text": r.reasons()}
                        for r in self.rerun],
            "unchanged": list(self.unchanged),
        }


def _summary(stage: StageSummary) -> dict[str, Any]:
    return {"stage": stage.name, "kind": stage.kind, "inputs": dict(stage.inputs)}


def side(plan: Plan) -> dict[str, Any]:
    """How a diff names one side: the file as given, the recipe name and its profiles."""
    return {"file": plan.recipe["file"], "name": plan.recipe["name"],
            "profiles": list(plan.recipe["profiles"])}


def diff_plans(a: Plan, b: Plan) -> Diff:
    """The semantic diff of two compiled plans."""
    return diff_views(plan_view(a), plan_view(b), a=side(a), b=side(b))


def diff_views(old: View, new: View, *, a: dict[str, Any] | None = None,
               b: dict[str, Any] | None = None) -> Diff:
    """The diff of two views (:func:`plan_view`, or the views two lockfiles hold)."""
    old_stages, new_stages = old["stages"], new["stages"]
    changed: list[Change] = []
    lineage: list[LineageChange] = []
    for name, stage in new_stages.items():
        before = old_stages.get(name)
        if before is None:
            continue
        fields = {_field_parts(f) for f in (*before["inputs"], *stage["inputs"])}
        changed += [c for c in _changes(name, (), before["config"], stage["config"])
                    if c.parts not in fields]
        changed += _changes(name, ("compute",), before["compute"], stage["compute"])
        if before["kind"] != stage["kind"]:
            changed.insert(0, Change(name, ("kind",), before["kind"], stage["kind"]))
        lineage += _lineage(name, before["inputs"], stage["inputs"])
    entries = [c for section in ("models", "datasets")
               for c in _entry_changes(section, old.get(section, {}), new.get(section, {}))]
    settings = [c for key in SETTINGS
                for c in _changes("recipe", (key,), old["recipe"].get(key),
                                  new["recipe"].get(key))]
    reruns = [r for r in (_rerun(n, s, old_stages.get(n), changed, lineage, entries)
                          for n, s in new_stages.items()) if r is not None]
    rerunning = {r.stage for r in reruns}
    return Diff(
        a=a or {}, b=b or {},
        changed=tuple(changed), entries=tuple(entries), settings=tuple(settings),
        added=tuple(_stage_summary(n, s) for n, s in new_stages.items() if n not in old_stages),
        removed=tuple(_stage_summary(n, s) for n, s in old_stages.items()
                      if n not in new_stages),
        lineage=tuple(lineage), rerun=tuple(reruns),
        unchanged=tuple(n for n in new_stages if n not in rerunning),
        order=tuple(new_stages),
    )


def _field_parts(name: str) -> tuple[PathPart, ...]:
    """An input field (``models.1``, ``phases.0.data``) as a path (``models[1]``...)."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _changes(where: str, prefix: tuple[PathPart, ...], old: Any, new: Any) -> list[Change]:
    """Leaf changes between two plain values: mappings by key, same-length lists by index,
    anything else as a whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [*old, *(k for k in new if k not in old)]:
            out += _changes(where, (*prefix, key), old.get(key), new.get(key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for index, (x, y) in enumerate(zip(old, new, strict=True)):
            out += _changes(where, (*prefix, index), x, y)
        return out
    if old == new and isinstance(old, bool) == isinstance(new, bool):  # 1 and 1.0: equal
        return []
    return [Change(where, prefix, old, new)]


def _entry_changes(section: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """``models:``/``datasets:`` changes; a mixture member's derived fingerprint is left
    out (its member's own entry says what changed)."""
    out = []
    for name in [*old, *(n for n in new if n not in old)]:
        for change in _changes(f"{section}.{name}", (), old.get(name), new.get(name)):
            if change.parts[-1:] != ("fingerprint",):
                out.append(change)
    return out


def _lineage(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[LineageChange]:
    out = []
    for key in [*old, *(k for k in new if k not in old)]:
        before = (old.get(key) or {}).get("ref")
        after = (new.get(key) or {}).get("ref")
        if before != after:
            out.append(LineageChange(name, key, before, after))
    return out


def _stage_summary(name: str, stage: dict[str, Any]) -> StageSummary:
    return StageSummary(name, stage["kind"], {f: i["ref"] for f, i in stage["inputs"].items()})


def _rerun(name: str, stage: dict[str, Any], before: dict[str, Any] | None,
           changed: list[Change], lineage: list[LineageChange],
           entries: list[Change]) -> Rerun | None:
    if before is None:
        return Rerun(name, new=True)
    if before["fingerprint"] == stage["fingerprint"]:
        return None
    own = [c.path for c in changed if c.where == name and _counts(c.parts)]
    if _compute_math(before["compute"]) == _compute_math(stage["compute"]):
        own = [p for p in own if not p.startswith("compute.")]
    moved = {x.field for x in lineage if x.stage == name}
    upstream, inputs = [], []
    entry_names = {c.where for c in entries}
    for key, item in stage["inputs"].items():
        was = before["inputs"].get(key)
        if key in moved or was is None or was["fingerprint"] == item["fingerprint"]:
            continue
        if item["producer"]:
            upstream.append(item["producer"])
        else:
            entry = _entry_name(item["ref"], entry_names)
            inputs.append(entry or f"content of {item['ref']}")
    return Rerun(name, own=tuple(own), upstream=tuple(dict.fromkeys(upstream)),
                 inputs=tuple(dict.fromkeys(inputs)), lineage=tuple(sorted(moved)))


def _entry_name(ref: str, changed: set[str]) -> str | None:
    for section in ("models", "datasets"):
        if f"{section}.{ref}" in changed:
            return f"{section}.{ref}"
    return None


def _counts(parts: tuple[PathPart, ...]) -> bool:
    """Whether a config path is part of the fingerprint (not description, gate, ...)."""
    if not parts or parts[0] == "compute":
        return True
    if parts[0] in COSMETIC_STAGE_KEYS:
        return False
    return not (parts[0] == "train" and len(parts) > 1 and parts[1] in COSMETIC_TRAIN_KEYS)


def _compute_math(compute: dict[str, Any]) -> tuple[Any, ...]:
    """The compute settings a fingerprint hashes (see fingerprint.stage_fingerprint)."""
    distributed = compute.get("distributed") or {}
    files = tuple((distributed.get(k), distributed.get(f"{k}_sha256")) for k in CONFIG_FILES)
    return precision_mode(compute), replicas(compute), files
