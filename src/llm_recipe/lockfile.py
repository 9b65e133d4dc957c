"""Lockfiles on disk, and the facts a lock needs from outside the recipe.

What a lock holds and how two locks compare is pure (:mod:`llm_recipe.compiler.lock`);
this module is the I/O around it: where a recipe's lock lives, the installed versions of
the training stack (``importlib.metadata``: nothing is imported), hub commits (one
``HfApi`` call per repository, with a short timeout, behind :func:`hub_commit` so tests
replace it), and writing, reading and checking the file. ``recipe plan`` checks offline;
``recipe lock`` and ``recipe run --locked`` ask the hub.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from llm_recipe import __version__
from llm_recipe.compiler import lock
from llm_recipe.compiler.lock import Drift, HubRef
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.schema import recipe_schema
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import Location, RecipeError

HUB_TIMEOUT_S = 5.0
LOCK_SUFFIXES = (".lock.yaml", ".lock.yml")


class HubUnavailable(Exception):
    """The hub could not say which commit a revision is (offline, unknown repo, timeout)."""


Lookup = Callable[[HubRef], str]
"""A hub lookup: the commit a reference's revision is at, or :class:`HubUnavailable`."""


def lock_path(recipe: Path, profiles: Sequence[str] = ()) -> Path:
    """``recipes/abel.yaml`` -> ``recipes/abel.lock.yaml``; with ``-p tiny``
    ``recipes/abel.tiny.lock.yaml`` (one lock per profile combination, in order)."""
    suffix = recipe.suffix if recipe.suffix in (".yaml", ".yml") else ".yaml"
    stem = recipe.name.removesuffix(recipe.suffix) if recipe.suffix == suffix else recipe.name
    return recipe.with_name(".".join([stem, *profiles, "lock"]) + suffix)


def is_lockfile(path: Path | str) -> bool:
    """Whether a file is a lock (``recipe validate recipes/*.yaml`` skips those)."""
    return str(path).endswith(LOCK_SUFFIXES)


def relock_command(recipe: str, profiles: Sequence[str]) -> str:
    """The command that writes this lock, for hints."""
    return shlex.join(["recipe", "lock", recipe, *(a for p in profiles for a in ("-p", p))])


def package_versions() -> dict[str, str | None]:
    """Installed versions of the training stack (None: not installed), without importing it."""
    versions: dict[str, str | None] = {}
    for name in lock.PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hub_commit(ref: HubRef, *, timeout: float = HUB_TIMEOUT_S) -> str:
    """The commit ``ref.revision`` (default branch when None) is at on the Hugging Face Hub.

    Honours ``HF_HUB_OFFLINE`` (no request at all). Raises :class:`HubUnavailable` with a
    one-line reason for anything that stops the answer: no network, a private or missing
    repository, a timeout.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubUnavailable("HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        info = api.model_info if ref.type == "model" else api.dataset_info
        sha = info(ref.repo, revision=ref.revision, timeout=timeout).sha
    except Exception as exc:  # a lookup that fails for any reason leaves the ref unpinned
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HubUnavailable(f"{type(exc).__name__}: {reason}"[:200]) from None
    if not sha:
        raise HubUnavailable("the hub returned no commit")
    return sha


def resolve_commits(refs: Sequence[HubRef], lookup: Lookup | None) -> tuple[
        dict[str, str | None], list[str]]:
    """Commits for each reference (None where unknown), and a warning per unresolved one.

    ``lookup`` None: offline, only revisions written as full commits are known. One
    lookup per (type, repo, revision): two datasets from one repository ask once.
    """
    commits: dict[str, str | None] = {}
    warnings: list[str] = []
    asked: dict[tuple[str, str, str | None], str | HubUnavailable] = {}
    for ref in refs:
        known = lock.known_commit(ref.revision)
        if known or lookup is None:
            commits[ref.key] = known
            continue
        key = (ref.type, ref.repo, ref.revision)
        if key not in asked:
            try:
                asked[key] = lookup(ref)
            except HubUnavailable as why:
                asked[key] = why
        answer = asked[key]
        commits[ref.key] = answer if isinstance(answer, str) else None
        if not isinstance(answer, str):
            warnings.append(f"{ref.key}: {ref.repo}@{ref.revision or 'main'} not resolved to "
                            f"a commit ({answer}); locked as unpinned")
    return commits, warnings


def current_lock(plan: Plan, recipe: Path, lookup: Lookup | None) -> tuple[dict[str, Any],
                                                                           list[str]]:
    """The lock this plan would have now (``lookup`` None: without asking the hub)."""
    commits, warnings = resolve_commits(lock.hub_refs(plan), lookup)
    document = lock.build_lock(plan, recipe_file=recipe.name, packages=package_versions(),
                               commits=commits, version=__version__,
                               schema=str(recipe_schema().get("$id")))
    return document, warnings


def write_lock(plan: Plan, recipe: Path, profiles: Sequence[str], *, display: str,
               lookup: Lookup | None = hub_commit) -> tuple[Path, dict[str, Any], list[str]]:
    """Write the recipe's lock beside it (atomically); returns the path, the document and
    the warnings (hub references left unpinned)."""
    from llm_recipe.runtime.workspace import atomic_write_text

    document, warnings = current_lock(plan, recipe, lookup)
    path = lock_path(recipe, profiles)
    atomic_write_text(path, lock.lock_text(document, relock_command(display, profiles)))
    return path, document, warnings


def read_lock(path: Path, display: str) -> tuple[dict[str, Any], SourceMap]:
    """A lockfile's data and locations (read like a recipe: bounded, core YAML, no tags)."""
    from llm_recipe.compiler.load import read_file

    doc = read_file(path, display=display)
    if doc.data.get("lock_format") != lock.LOCK_FORMAT or not isinstance(
            doc.data.get("stages"), dict):
        raise doc.where.error(("lock_format",), "not a lockfile this llm-recipe can read",
                              expected=f"lock_format: {lock.LOCK_FORMAT} and stages",
                              hint="write it again with `recipe lock`")
    return doc.data, doc.where


@dataclass
class LockCheck:
    """A recipe's plan against its lock: ``exists`` False when there is no lock."""

    path: Path
    display: str
    exists: bool
    drifts: list[Drift] = field(default_factory=list)
    where: SourceMap | None = None
    unpinned: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return "missing" if not self.exists else "drifted" if self.drifts else "current"

    def to_dict(self) -> dict[str, Any]:
        """``extra.lock`` in ``recipe plan --json``."""
        return {"file": self.display, "state": self.state,
                "drift": [d.to_dict() for d in self.drifts], "unpinned": self.unpinned}


def check_lock(plan: Plan, recipe: Path, profiles: Sequence[str], *,
               lookup: Lookup | None = None) -> LockCheck:
    """Compare the plan with the recipe's lock (``lookup`` None: hub commits not asked)."""
    path = lock_path(recipe, profiles)
    display = str(path)
    if not path.is_file():
        return LockCheck(path, display, exists=False)
    locked, where = read_lock(path, display)
    current, _ = current_lock(plan, recipe, lookup)
    return LockCheck(path, display, True, lock.compare_locks(locked, current), where,
                     lock.unpinned(locked))


def drift_error(check: LockCheck, recipe: str, profiles: Sequence[str],
                recipe_where: SourceMap | None) -> RecipeError:
    """The error ``recipe run --locked`` stops with: every drift, each where it is written
    (the recipe's line, else the lock's), located at the first."""
    hint = (f"review the change (`recipe diff`), then accept it with "
            f"`{relock_command(recipe, profiles)}` and commit the lock")
    if not check.exists:
        return RecipeError(f"{recipe} has no lock: {check.display} does not exist",
                           location=Location(recipe, 1, 1),
                           hint=f"write it with `{relock_command(recipe, profiles)}`, review "
                                "and commit it")
    lines, first = [], None
    for drift in check.drifts:
        place = None
        if drift.recipe_path is not None and recipe_where is not None:
            place = recipe_where.locate(drift.recipe_path)
        if place is None and check.where is not None:
            place = check.where.locate(drift.lock_path)
        first = first or place
        lines.append(f"  - {drift.describe()}" + (f"  ({place})" if place else ""))
    count = len(check.drifts)
    return RecipeError(
        f"the recipe has drifted from its lock {check.display} "
        f"({count} difference{'s' if count != 1 else ''})",
        location=first, snippet="\n".join(lines), hint=hint)
