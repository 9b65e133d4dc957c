"""The lockfile: what a reviewed recipe resolved to, so a later run can prove it is the same.

A recipe names ``main`` on the hub, leaves most settings to schema defaults and
inherits from base files; the config a stage actually trains with is only known after
compilation, and the libraries that run it are whatever is installed. A lock pins all
of it beside the recipe: every stage's resolved config and fingerprint (the
:func:`~llm_recipe.compiler.diff.plan_view` a semantic diff compares), the hub
revisions resolved to commits, the versions of the training stack, llm-recipe's own
version, the plan format and the schema version. ``recipe plan`` warns when the
recipe has drifted from its lock, ``recipe run --locked`` refuses to run then.

Pure: this module builds the lock document from a Plan and facts gathered at the edges
(package versions, hub commits: ``llm_recipe.lockfile`` does that I/O), serialises it
deterministically, and compares two lock documents into a list of :class:`Drift`.
No timestamps or host names: two locks of the same recipe are byte-identical.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from llm_recipe.compiler.diff import Change, View, diff_views, plan_view
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.errors import PathPart, RecipePath

LOCK_FORMAT = 1
PACKAGES = ("accelerate", "datasets", "peft", "torch", "transformers", "trl")
"""The training stack whose versions change what a run computes."""
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
VIEW_KEYS = ("recipe", "models", "datasets", "stages")


@dataclass(frozen=True)
class HubRef:
    """A hub repository the plan reads: ``key`` is where (``models.abel``,
    ``models.abel.tokenizer``, ``datasets.gsm8k``), ``revision`` as written (or None)."""

    key: str
    type: str
    repo: str
    revision: str | None


def hub_refs(plan: Plan) -> list[HubRef]:
    """Every hub model, tokenizer and dataset the plan names, in plan order."""
    refs = []
    for section, kind in (("models", "model"), ("datasets", "dataset")):
        for name, entry in getattr(plan, section).items():
            if "hub" in entry:
                refs.append(HubRef(f"{section}.{name}", kind, entry["hub"], entry.get("revision")))
            tokenizer = entry.get("tokenizer")
            if isinstance(tokenizer, dict) and "hub" in tokenizer:
                refs.append(HubRef(f"{section}.{name}.tokenizer", "model", tokenizer["hub"],
                                   tokenizer.get("revision")))
    return refs


def known_commit(revision: str | None) -> str | None:
    """A revision that is already a full commit id needs no lookup."""
    return revision if revision and _COMMIT.match(revision) else None


def build_lock(plan: Plan, *, recipe_file: str, packages: Mapping[str, str | None],
               commits: Mapping[str, str | None], version: str, schema: str) -> dict[str, Any]:
    """The lock document of a plan (plain data; :func:`lock_text` writes it).

    ``commits`` maps a :class:`HubRef` key to the commit its revision resolved to, or
    None where it could not be resolved (recorded as unpinned). ``recipe_file`` is the
    recipe's file name (not a path: the lock sits beside it).
    """
    view = plan_view(plan)
    return {
        "lock_format": LOCK_FORMAT,
        "recipe_file": recipe_file,
        "profiles": list(plan.recipe["profiles"]),
        "fingerprint": plan.recipe["fingerprint"],
        **view,
        "hub": {
            ref.key: {"type": ref.type, "repo": ref.repo, "revision": ref.revision,
                      "commit": commits.get(ref.key) or known_commit(ref.revision)}
            for ref in hub_refs(plan)
        },
        "packages": {name: packages.get(name) for name in PACKAGES},
        "llm_recipe": version,
        "plan_format": plan.plan_format,
        "schema": schema,
    }


def lock_text(lock: dict[str, Any], command: str) -> str:
    """The lockfile's text: a header, then YAML with sorted keys (stable for review).

    ``command`` is the one that writes it again (in the header, so a reader knows).
    """
    header = (f"# Written by `{command}`: do not edit.\n"
              "# The resolved plan this recipe was reviewed with. `recipe plan` warns when\n"
              "# the recipe drifts from it; `recipe run --locked` refuses to run until it is\n"
              "# written again.\n")
    body = yaml.dump(lock, Dumper=_Dumper, sort_keys=True, allow_unicode=True,
                     default_flow_style=False, width=100)
    return header + body


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with multi-line strings (prompt templates) as ``|`` blocks to read."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def unpinned(lock: dict[str, Any]) -> list[str]:
    """The hub references a lock could not resolve to a commit."""
    return [key for key, ref in lock.get("hub", {}).items() if not ref.get("commit")]


@dataclass(frozen=True)
class Drift:
    """One way the recipe (or the machine) differs from its lock.

    ``what``: config, compute, stage, lineage, fingerprint, entry, setting, revision,
    package or format. ``recipe_path``: where in the recipe the value is written (for
    a file:line:col), ``lock_path``: where in the lock.
    """

    what: str
    name: str
    path: str | None
    old: Any
    new: Any
    recipe_path: RecipePath | None = None
    lock_path: RecipePath = ()
    detail: str | None = None
    """Why (a fingerprint drift: ``own config: train.lr``, ``upstream: sft``)."""

    def describe(self) -> str:
        """One line: ``stage sft: train.lr 0.0001 -> 0.001``."""
        old, new = _show(self.old), _show(self.new)
        if self.what in ("config", "compute"):
            return f"stage {self.name}: {self.path} {old} -> {new}"
        if self.what == "stage":
            return (f"stage {self.name}: added since the lock" if self.old is None
                    else f"stage {self.name}: in the lock, no longer in the recipe")
        if self.what == "lineage":
            return f"stage {self.name}: {self.path} now reads {new} (locked: {old})"
        if self.what == "fingerprint":
            return f"stage {self.name}: fingerprint changed ({self.detail})"
        if self.what in ("entry", "setting"):
            return f"{self.name}: {self.path} {old} -> {new}"
        if self.what == "revision":
            return f"hub {self.name}: {self.path} is now commit {new} (locked: {old})"
        if self.what == "package":
            return f"package {self.name}: {old} -> {new}"
        return f"{self.name}: {old} -> {new}"

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "name": self.name, "path": self.path, "old": self.old,
                "new": self.new, "detail": self.detail, "text": self.describe()}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else yaml.safe_dump(
        value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def compare_locks(locked: dict[str, Any], current: dict[str, Any]) -> list[Drift]:
    """Every drift from ``locked`` to ``current`` (two :func:`build_lock` documents).

    Hub commits are compared where both sides know theirs (``recipe plan`` does not ask
    the hub: a revision written as a branch only drifts when its text changes).
    """
    drifts = [*_format_drifts(locked, current)]
    diff = diff_views(_view(locked), _view(current))
    for c in diff.changed:
        section = "compute" if c.parts[:1] == ("compute",) else "config"
        inside = c.parts[1:] if section == "compute" else c.parts
        drifts.append(Drift(section, c.where, c.path, c.old, c.new, ("stages", c.where, *c.parts),
                            ("stages", c.where, section, *inside)))
    drifts += [Drift("stage", s.name, None, None, s.kind, ("stages", s.name), ("stages",))
               for s in diff.added]
    drifts += [Drift("stage", s.name, None, s.kind, None, None, ("stages", s.name))
               for s in diff.removed]
    drifts += [Drift("lineage", x.stage, x.field, x.old, x.new,
                     ("stages", x.stage, *_parts(x.field)), ("stages", x.stage, "inputs"))
               for x in diff.lineage]
    drifts += [Drift("fingerprint", r.stage, None, locked["stages"][r.stage]["fingerprint"],
                     current["stages"][r.stage]["fingerprint"], None,
                     ("stages", r.stage, "fingerprint"), "; ".join(r.reasons()))
               for r in diff.rerun if not r.new]
    drifts += [_entry_drift(c) for c in diff.entries]
    drifts += [Drift("setting", "recipe", c.path, c.old, c.new, c.parts, ("recipe", *c.parts))
               for c in diff.settings]
    drifts += _revision_drifts(locked.get("hub", {}), current.get("hub", {}))
    drifts += [Drift("package", name, None, locked.get("packages", {}).get(name),
                     current["packages"].get(name), None, ("packages", name))
               for name in sorted({*locked.get("packages", {}), *current["packages"]})
               if locked.get("packages", {}).get(name) != current["packages"].get(name)]
    return drifts


def _view(lock: dict[str, Any]) -> View:
    return {key: lock.get(key) or {} for key in VIEW_KEYS}


def _parts(field: str) -> tuple[PathPart, ...]:
    return tuple(int(p) if p.isdigit() else p for p in field.split("."))


def _entry_drift(change: Change) -> Drift:
    section, name = change.where.split(".", 1)
    return Drift("entry", change.where, change.path if change.parts else "(entry)", change.old,
                 change.new,
                 (section, name, *change.parts), (section, name, *change.parts))


def _format_drifts(locked: dict[str, Any], current: dict[str, Any]) -> list[Drift]:
    keys = (("lock_format", "lock format"), ("plan_format", "plan format"),
            ("schema", "schema"), ("llm_recipe", "llm-recipe"))
    return [Drift("format", label, None, locked.get(key), current.get(key), None, (key,))
            for key, label in keys if locked.get(key) != current.get(key)]


def _revision_drifts(locked: dict[str, Any], current: dict[str, Any]) -> list[Drift]:
    out = []
    for key, ref in current.items():
        was = locked.get(key)
        if not was or was.get("repo") != ref.get("repo") or was.get("revision") != ref.get(
                "revision"):
            continue  # a changed repo or revision text is an entry drift already
        if was.get("commit") and ref.get("commit") and was["commit"] != ref["commit"]:
            label = f"{ref['repo']}@{ref.get('revision') or 'main'}"
            out.append(Drift("revision", key, label, was["commit"], ref["commit"], None,
                             ("hub", key, "commit")))
    return out


def summary(drifts: list[Drift], limit: int = 4) -> str:
    """The drifts in one line (fingerprint drifts folded into the stages that re-run)."""
    said = [d.describe() for d in drifts if d.what != "fingerprint"]
    rerun = [d.name for d in drifts if d.what == "fingerprint"]
    shown = said[:limit] + ([f"and {len(said) - limit} more"] if len(said) > limit else [])
    if rerun:
        shown.append(f"re-runs {', '.join(rerun)}")
    return "; ".join(shown)
