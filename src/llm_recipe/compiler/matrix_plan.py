"""A matrix's variants -> checked recipes -> one Plan, each stage planned once per fingerprint.

:func:`checked_variants` applies each variant's settings to the composed recipe,
interpolates, validates and plans it (errors of every variant reported together);
:func:`merge_plans` merges the plans.

A stage whose fingerprint is the same in every variant (a pretrain or data stage
upstream of what varies) is planned once under its own name and folder, exactly as
without a matrix, so its outputs are shared, and kept from a run before the matrix
existed. A stage that differs gets one copy per distinct fingerprint, named
``<stage>@<label>`` (``sft@lr=1e-5``), in ``<workspace>/<stage>@<label>/``; its
downstream copies follow, since fingerprints cascade. The label is what the variants
sharing the copy have in common (``sft@lr=1e-5`` serves ``lr=1e-5,limit=10`` and
``lr=1e-5,limit=20`` when only eval reads ``limit``).

The merged plan is an ordinary Plan: the runtime, the renderer and ``recipe status``
run and show copies as stages. Each copy's lineage (inputs, upstream, the names its
config uses for them, the model names its eval gate qualifies) points at the copies of
its own variants. ``plan.extra["matrix"]`` says which variant uses which copy.
"""

from __future__ import annotations

import copy
import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_recipe.compiler import matrix
from llm_recipe.compiler.compose import interpolate, set_value, split_path
from llm_recipe.compiler.fingerprint import digest, shared_file_digests
from llm_recipe.compiler.load import Document
from llm_recipe.compiler.matrix import MAX_NAME, MAX_VARIANTS, Expansion, Variant, each_error
from llm_recipe.compiler.plan_types import Plan, StageInput, StagePlan
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.compiler.status import stage_status, with_blocked
from llm_recipe.errors import Location, RecipeError, raise_all


def apply_variant(doc: Document, variant: Variant) -> Document:
    """The recipe of one variant: a copy of ``doc`` with the variant's settings set.

    Values keep their locations in the matrix block, so a variant's value that the
    schema refuses is reported where the matrix writes it.
    """
    where = SourceMap()
    where.values, where.keys = dict(doc.where.values), dict(doc.where.keys)
    where.texts = doc.where.texts
    out = Document(copy.deepcopy(doc.data), where, doc.file)
    for setting in variant.settings:
        location = doc.where.locate(setting.source) or Location(doc.file, 1, 1)
        set_value(out, setting.path, copy.deepcopy(setting.value), location,
                  source=(doc.where, setting.source))
    return out


def checked_variants(
    doc: Document, spec: Any, check: Callable[[Document], Any], overrides: Sequence[str] = ()
) -> tuple[Expansion, list[tuple[Document, Any]]]:
    """Expand, apply, interpolate and ``check`` every variant; raise all errors together.

    An error found in some variants but not all says which ("in variant lr=1e-5"): the
    line it points at may be the base recipe's, and only that variant's values break it.
    ``check`` returns what the caller needs of a valid variant (a resolution, a plan).
    Local files are hashed once for all variants. A ``--set`` (``overrides``) of a path
    the matrix sets is replaced by it, which a warning says.
    """
    expansion = matrix.expand(doc, spec)
    expansion = replace(expansion, warnings=(*expansion.warnings,
                                             *_replaced_overrides(expansion, overrides)))
    results: list[tuple[Document, Any]] = []
    found: dict[tuple[Location | None, str], tuple[RecipeError, list[str]]] = {}
    with shared_file_digests():
        for variant in expansion.variants:
            variant_doc = apply_variant(doc, variant)
            try:
                interpolate(variant_doc)
                results.append((variant_doc, check(variant_doc)))
            except RecipeError as error:
                for one in each_error(error):
                    found.setdefault((one.location, one.message), (one, []))[1].append(
                        variant.name)
    if found:
        raise_all([_in_variants(error, names, len(expansion.variants))
                   for error, names in found.values()])
    _same_entries(expansion, results)
    return expansion, results


def _same_entries(expansion: Expansion, results: list[tuple[Document, Any]]) -> None:
    """Refuse variants whose models:, datasets:, tracking or workspace differ (through
    ``${vars.x}``): every variant reads the same entries and writes one workspace."""
    first = results[0][0].data
    errors = []
    for variant, (doc, _) in zip(expansion.variants[1:], results[1:], strict=True):
        for key in ("models", "datasets", "tracking", "workspace", "name"):
            mine, theirs = doc.data.get(key) or {}, first.get(key) or {}
            if mine == theirs:
                continue
            what = key
            if isinstance(mine, dict) and isinstance(theirs, dict) and key in (
                    "models", "datasets"):
                changed = [n for n in {**theirs, **mine} if mine.get(n) != theirs.get(n)]
                what = f"{key} entry '{changed[0]}'"
            blamed = next((s for s in variant.settings if s.path[0] == "vars"),
                          variant.settings[0] if variant.settings else None)
            at = blamed.source if blamed else ("matrix",)
            errors.append(doc.where.error(
                at, f"variant {variant.name} changes {what} (through a variable)",
                expected="the same models:, datasets:, tracking and workspace in every variant",
                hint=matrix.ENTRY_HINT if key in ("models", "datasets") else matrix.FIXED[key]))
            break
    raise_all(errors)


def _replaced_overrides(expansion: Expansion, overrides: Sequence[str]) -> list[str]:
    """A ``--set`` at or under a path the matrix sets: the matrix applies last and wins,
    which is right for an ablation but easy to miss on the command line."""
    set_by_matrix = list(dict.fromkeys(s.path for v in expansion.variants for s in v.settings))
    out = []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        path = split_path(key, Location(f"--set {key}", 1, 1))
        hit = next((p for p in set_by_matrix if path[:len(p)] == p), None)
        if hit is not None:
            out.append(f"--set {key}: the matrix sets {'.'.join(map(str, hit))}, which "
                       "replaces it in the variants that set it")
    return out


def _in_variants(error: RecipeError, names: list[str], total: int) -> RecipeError:
    if len(names) == total:
        return error
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    error.message = f"{error.message} (in variant{'s' if len(names) > 1 else ''} {shown})"
    return error


def merge_plans(expansion: Expansion, docs: list[Document], plans: list[Plan],
                cwd: Path) -> Plan:
    """One plan for all variants (``plans[i]`` is variant ``i``'s, from ``docs[i]``)."""
    variants = expansion.variants
    order = [s.name for s in plans[0].stages]
    groups: dict[str, dict[str, list[int]]] = {}
    for name in order:
        for index, plan in enumerate(plans):
            groups.setdefault(name, {}).setdefault(plan.stage(name).fingerprint, []).append(index)
    names = {stage: copy_names(stage, found, variants) for stage, found in groups.items()}
    renames = [{s: names[s][plan.stage(s).fingerprint] for s in order} for plan in plans]
    _check_registered(plans[0], docs[0], groups)
    workspace = plans[0].workspace
    copies = []
    notes = []
    for stage in order:
        for fingerprint, members in groups[stage].items():
            notes += _unshared(stage, [plans[m].stage(stage) for m in members],
                               [variants[m].name for m in members])
            copies.append(_copy(workspace, [plans[m].stage(stage) for m in members],
                                [renames[m] for m in members], names[stage][fingerprint]))
    copies = _ordered(copies, order)
    states = {c.name: stage_status(Path(c.dir), c.fingerprint, c.config, cwd,
                                   {i.field: i.fingerprint for i in c.inputs}) for c in copies}
    with_blocked(states, {c.name: c.upstream for c in copies})
    copies = [replace(c, index=i, status=states[c.name]) for i, c in enumerate(copies)]
    first = plans[0]
    return Plan(
        recipe={**first.recipe, "fingerprint": digest([c.fingerprint for c in copies])},
        workspace=workspace,
        models=first.models,
        datasets=first.datasets,
        tracking=first.tracking,
        stages=tuple(copies),
        env=tuple(sorted({e for p in plans for e in p.env})),
        warnings=tuple(dict.fromkeys([*(w for p in plans for w in p.warnings),
                                      *expansion.warnings, *notes,
                                      *_alike(variants, renames)])),
        extra={**first.extra, "matrix": describe(expansion, renames, groups, names)},
    )


def copy_names(stage: str, groups: dict[str, list[int]], variants: tuple[Variant, ...]
               ) -> dict[str, str]:
    """fingerprint -> the name of the stage's copy with it.

    One fingerprint in every variant: the stage's own name. Otherwise
    ``<stage>@<label>``, the label being the tokens (``lr=1e-5``) every variant of the
    copy has; when those say nothing or do not tell two copies apart, the variants'
    names joined with ``+`` (``eval@default+ablation2``).
    """
    if len(groups) == 1:
        return {fingerprint: stage for fingerprint in groups}
    labels: dict[str, str] = {}
    for fingerprint, members in groups.items():
        tokens = variants[members[0]].tokens
        labels[fingerprint] = ",".join(
            t for t in tokens if all(t in variants[m].tokens for m in members))
    counts = Counter(labels.values())
    for fingerprint, members in groups.items():
        if labels[fingerprint] and counts[labels[fingerprint]] == 1:
            continue
        joined = "+".join(variants[m].name for m in members)
        labels[fingerprint] = joined if len(joined) <= MAX_NAME else (
            f"{variants[members[0]].name}+{len(members) - 1}more")
    seen: Counter[str] = Counter()
    out = {}
    for fingerprint, label in labels.items():
        seen[label] += 1
        out[fingerprint] = f"{stage}@{label}" + (f"~{seen[label]}" if seen[label] > 1 else "")
    return out


def _copy(workspace: str, members: list[StagePlan], renames: list[dict[str, str]],
          name: str) -> StagePlan:
    """The first member's stage plan, renamed to ``name``, its lineage to its variants'
    copies. Members share the fingerprint, so they have the same inputs; ``after``
    (not fingerprinted) may differ, and the copy waits for all of theirs."""
    stage, rename = members[0], renames[0]
    directory = f"{workspace}/{name}"
    upstream = tuple(dict.fromkeys(r.get(u, u) for s, r in zip(members, renames, strict=True)
                                   for u in s.upstream))
    inputs = tuple(_input(workspace, item, rename) for item in stage.inputs)
    config = _config(stage, rename, members, renames)
    output = replace(stage.output, path=directory + stage.output.path[len(stage.dir):],
                     base=rename.get(stage.output.base or "", stage.output.base))
    return replace(stage, name=name, dir=directory, config=config, inputs=inputs,
                   upstream=upstream, output=output)


def _input(workspace: str, item: StageInput, rename: dict[str, str]) -> StageInput:
    if item.producer is None:
        return replace(item, base=rename.get(item.base or "", item.base))
    ref = rename.get(item.ref, item.ref)
    path = item.path
    old = f"{workspace}/{item.ref}/"
    if path is not None and path.startswith(old):
        path = f"{workspace}/{ref}/{path[len(old):]}"
    return replace(item, ref=ref, producer=rename.get(item.producer, item.producer),
                   base=rename.get(item.base or "", item.base), path=path)


def _config(stage: StagePlan, rename: dict[str, str], members: list[StagePlan],
            renames: list[dict[str, str]]) -> dict[str, Any]:
    """The stage's config with the stage names it uses (its inputs, ``after``, the model
    of a gate's metric) replaced by its variants' copies, as the runtime reads them."""
    config = copy.deepcopy(stage.config)
    for item in stage.inputs:
        parts: list[str | int] = [int(p) if p.isdigit() else p for p in item.field.split(".")]
        node: Any = config
        for part in parts[:-1]:
            node = _child(node, part)
        value = _child(node, parts[-1])
        if isinstance(value, str):
            node[parts[-1]] = rename.get(value, value)
    if isinstance(config.get("after"), list):
        config["after"] = list(dict.fromkeys(
            r.get(a, a) for s, r in zip(members, renames, strict=True)
            for a in s.config.get("after") or []))
    gate = config.get("gate")
    if isinstance(gate, dict):
        for key in ("metric", "better_than"):
            value = gate.get(key)
            if isinstance(value, str):
                head, sep, tail = value.partition("/")
                gate[key] = rename.get(head, head) + sep + tail
    return config


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _ordered(copies: list[StagePlan], order: list[str]) -> list[StagePlan]:
    """Producers before consumers; otherwise the recipe's stage order, then variant order."""
    position = {c.name: (order.index(c.name.split("@", 1)[0]), i) for i, c in enumerate(copies)}
    waiting = {c.name: {u for u in c.upstream if u in position} for c in copies}
    by_name = {c.name: c for c in copies}
    ready = [position[n] + (n,) for n, w in waiting.items() if not w]
    heapq.heapify(ready)
    out = []
    while ready:
        *_, name = heapq.heappop(ready)
        out.append(by_name[name])
        for other, wanted in waiting.items():
            if name in wanted:
                wanted.discard(name)
                if not wanted:
                    heapq.heappush(ready, position[other] + (other,))
    done = {c.name for c in out}
    return out + [c for c in copies if c.name not in done]  # a cycle: resolve refused it


def _check_registered(plan: Plan, doc: Document, groups: dict[str, dict[str, list[int]]]
                      ) -> None:
    """``tracking.register`` names one stage: it must be one the variants share."""
    register = plan.tracking.get("register") or {}
    gate = mapping_at(register, "gate")
    errors = []
    for at, name in ((("tracking", "register", "stage"), register.get("stage")),
                     (("tracking", "register", "gate", "report"), gate.get("report"))):
        if isinstance(name, str) and len(groups.get(name, {})) > 1:
            errors.append(doc.where.error(
                at, f"'{name}' differs between the matrix's variants: which one to register?",
                expected="a stage every variant shares",
                hint="register from one variant: a file that extends this recipe with "
                     "matrix: null and that variant's settings"))
    raise_all(errors)


def _unshared(stage: str, members: list[StagePlan], names: list[str]) -> list[str]:
    """Variants sharing a copy may differ in what does not change its outputs (its
    description, ``compute.env``, ``push_to_hub``...): the first variant's settings win."""
    first = members[0]
    differ = sorted({key for other in members[1:]
                     for key in {*first.config, *other.config}
                     if first.config.get(key) != other.config.get(key)}
                    | ({"compute"} if any(o.compute != first.compute for o in members) else set()))
    if not differ:
        return []
    return [f"matrix: stage {stage} is planned once for variants {', '.join(names)} (the "
            f"same fingerprint); they differ only in {', '.join(differ)}, and "
            f"{names[0]}'s are used"]


def _alike(variants: tuple[Variant, ...], renames: list[dict[str, str]]) -> list[str]:
    """Variants that plan exactly the same stages: their settings change no fingerprint."""
    seen: dict[tuple[str, ...], str] = {}
    out = []
    for variant, rename in zip(variants, renames, strict=True):
        key = tuple(rename.values())
        if key in seen:
            out.append(f"matrix: variants {seen[key]} and {variant.name} plan the same "
                       "stages (their settings change no stage's fingerprint)")
        else:
            seen[key] = variant.name
    return out


def describe(expansion: Expansion, renames: list[dict[str, str]],
             groups: dict[str, dict[str, list[int]]], names: dict[str, dict[str, str]]
             ) -> dict[str, Any]:
    """``plan.extra["matrix"]``: the axes, each variant's settings and stage copies, and
    each copy's variants (documented in docs/plan-json.md)."""
    variants = expansion.variants
    return {
        "limit": MAX_VARIANTS,
        "axes": [{"key": a.key, "path": ".".join(map(str, a.path)),
                  "name": expansion.short[a.path], "values": list(a.labels)}
                 for a in expansion.axes],
        "variants": [{"name": v.name,
                      "settings": {".".join(map(str, s.path)): s.value for s in v.settings},
                      "stages": rename}
                     for v, rename in zip(variants, renames, strict=True)],
        "copies": {names[stage][fingerprint]: {"stage": stage,
                                               "variants": [variants[m].name for m in members]}
                   for stage, found in groups.items()
                   for fingerprint, members in found.items()},
    }
