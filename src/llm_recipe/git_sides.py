"""The sides of ``recipe diff``: a recipe file, or a recipe file at a git revision.

``recipes/abel.yaml@HEAD~1`` is the recipe as committed at ``HEAD~1``. A recipe is more
than its file: ``extends`` names base files, datasets and DeepSpeed configs are paths
relative to it, and local files are fingerprinted by content. So the revision's whole
tree is extracted into a temporary folder (``git archive REV``, read-only for the
repository: no worktree is registered, no index or ref is touched) and the recipe is
compiled there, from the folder that mirrors the working directory, so paths in both
plans read the same. The folder is removed once the plan (plain data) is built.

What a revision does not have is missing there: files that are not committed (ignored
data, generated files), submodules, and Git LFS content (an archive holds the pointers).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from llm_recipe.compiler import Plan, compile_recipe
from llm_recipe.errors import Location, RecipeError, RecipeErrors

GIT_TIMEOUT_S = 60


def split_side(spec: str) -> tuple[str, str | None]:
    """``path@REV`` -> (path, REV); a path that exists as written is a plain file.

    The first ``@`` after a non-empty path splits, so revisions may hold one
    (``recipes/abel.yaml@HEAD@{1}``).
    """
    if Path(spec).exists() or "@" not in spec[1:]:
        return spec, None
    index = spec.index("@", 1)
    path, rev = spec[:index], spec[index + 1:]
    return (path, rev) if rev else (spec, None)


def compile_side(spec: str, *, profiles: Sequence[str] = (), cwd: Path | None = None) -> Plan:
    """Compile one side of a diff: a file (as ``recipe plan`` would) or ``path@REV``."""
    cwd = cwd or Path.cwd()
    path, rev = split_side(spec)
    if rev is None:
        return compile_recipe(Path(path), profiles=profiles, cwd=cwd, require_files=False)
    top = _toplevel(Path(path) if Path(path).is_absolute() else cwd / path, spec)
    inside = _inside(cwd / path, top, spec)
    commit = _git(top, ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], spec,
                  f"unknown revision {rev!r}",
                  "a commit, branch or tag: `git log --oneline` lists them").strip()
    with tempfile.TemporaryDirectory(prefix="recipe-diff-") as tmp:
        tree = Path(tmp) / "tree"
        _extract(top, commit, tree, spec)
        file = tree / inside
        if not file.is_file():
            raise RecipeError(f"{inside.as_posix()} does not exist at {rev}",
                              hint=f"`git ls-tree -r --name-only {rev}` lists its files")
        here = Path(os.path.realpath(cwd))
        mirror = tree / here.relative_to(top) if here.is_relative_to(top) else tree
        mirror.mkdir(parents=True, exist_ok=True)
        try:
            plan = compile_recipe(file, profiles=profiles, cwd=mirror, require_files=False)
        except RecipeError as error:
            raise _relabel(error, tree, rev) from None
    return dataclasses.replace(plan, recipe={**plan.recipe, "file": spec})


def _toplevel(path: Path, spec: str) -> Path:
    """The repository holding ``path`` (asked from its nearest existing folder)."""
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    out = _git(folder, ["rev-parse", "--show-toplevel"], spec, "not inside a git repository",
               "`path@REV` reads a committed recipe; run it inside the repository")
    return Path(os.path.realpath(out.strip()))


def _inside(path: Path, top: Path, spec: str) -> Path:
    """``path`` relative to the repository root (symbolic links in folders resolved)."""
    folder, rest = path.absolute().parent, [path.name]
    while not folder.is_dir() and folder != folder.parent:
        folder, rest = folder.parent, [folder.name, *rest]
    real = Path(os.path.realpath(folder)).joinpath(*rest)
    if not real.is_relative_to(top):
        raise RecipeError(f"{spec}: the file is outside the repository {top}",
                          hint="name a recipe inside the repository")
    return real.relative_to(top)


def _git(folder: Path, args: list[str], spec: str, message: str, hint: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise RecipeError(f"{spec}: git is not installed", hint="install git, or diff "
                          "two recipe files") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        raise RecipeError(f"{spec}: {message}" + (f" ({said[-1]})" if said else ""), hint=hint)
    return done.stdout


def _extract(top: Path, commit: str, into: Path, spec: str) -> None:
    """The commit's tree under ``into``, streamed from ``git archive`` (tar's data filter:
    no absolute paths, no links out of the folder, no device files)."""
    into.mkdir()
    with subprocess.Popen(["git", "-C", str(top), "archive", "--format=tar", commit],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.11.4+
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            archive.extractall(into, **safe)
        error = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
    if proc.returncode != 0:
        raise RecipeError(f"{spec}: git archive failed ({error})",
                          hint="check the revision with `git log`")


def _relabel(error: RecipeError, tree: Path, rev: str) -> RecipeError:
    """Name files in the temporary tree as ``path@REV``, as the user wrote them."""
    if isinstance(error, RecipeErrors):
        return RecipeErrors([_relabel(e, tree, rev) for e in error.errors])
    location = error.location
    if location is None or not Path(location.file).is_relative_to(tree):
        return error
    name = f"{Path(location.file).relative_to(tree).as_posix()}@{rev}"
    return dataclasses.replace(error, location=Location(name, location.line, location.col))
