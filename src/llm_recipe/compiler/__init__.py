"""The recipe compiler: load -> compose -> validate -> resolve -> plan, all torch-free.

Each pass is a function from one explicit value to the next. :func:`compile_recipe`
chains them; :func:`validate_recipe` also checks every profile a recipe defines. A
recipe with a ``matrix`` is checked and planned once per variant, and the variants'
plans are merged into one (compiler/matrix.py, compiler/matrix_plan.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llm_recipe.compiler import matrix
from llm_recipe.compiler.chat_templates import chat_template_errors
from llm_recipe.compiler.compose import compose, interpolate
from llm_recipe.compiler.continual_rules import continual_errors
from llm_recipe.compiler.data_rules import data_errors
from llm_recipe.compiler.distributed_files import config_file_errors
from llm_recipe.compiler.gate_rules import gate_errors
from llm_recipe.compiler.load import Document
from llm_recipe.compiler.local_files import missing_file_errors
from llm_recipe.compiler.matrix_plan import checked_variants, merge_plans
from llm_recipe.compiler.mixtures import mixture_errors
from llm_recipe.compiler.plan import build_plan
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.resolve import Resolution, resolve
from llm_recipe.compiler.rl_rules import rl_errors
from llm_recipe.compiler.train_rules import train_errors
from llm_recipe.compiler.validate import validate
from llm_recipe.errors import RecipeError, raise_all

__all__ = ["Plan", "check", "compile_recipe", "profile_names", "validate_recipe"]


def check(doc: Document, cwd: Path | None = None, *, require_files: bool = True
          ) -> Resolution:
    """Validate and resolve a composed document; raise every error found at once.

    ``cwd`` is the project directory local model paths are read from (default: here).
    ``require_files``: a local data or model path that a stage reads must exist (see
    :mod:`llm_recipe.compiler.local_files`); False where a workspace is only looked at.
    """
    errors = validate(doc.data, doc.where)
    resolution, resolve_errors = resolve(doc.data, doc.where)
    if not errors:  # these rules read fields the schema has vouched for
        recipe_dir = Path(doc.file).parent
        errors = [*rl_errors(doc.data, resolution, doc.where, recipe_dir),
                  *continual_errors(doc.data, doc.where, cwd or Path.cwd()),
                  *gate_errors(doc.data, doc.where),
                  *data_errors(doc.data, doc.where),
                  *mixture_errors(doc.data, doc.where),
                  *chat_template_errors(doc.data, doc.where),
                  *train_errors(doc.data, doc.where),
                  *config_file_errors(doc.data, doc.where, cwd or Path.cwd())]
        if require_files:
            errors += missing_file_errors(doc.data, resolution, doc.where, cwd or Path.cwd())
    raise_all(_dedupe([*errors, *resolve_errors]))
    return resolution


def _dedupe(errors: list[RecipeError]) -> list[RecipeError]:
    seen = set()
    out = []
    for error in errors:
        key = (error.location, error.message)
        if key not in seen:
            seen.add(key)
            out.append(error)
    return out


def compile_recipe(
    path: Path | str,
    *,
    profiles: Sequence[str] = (),
    overrides: Sequence[str] = (),
    cwd: Path | None = None,
    require_files: bool = True,
) -> Plan:
    """Compile a recipe file into a Plan (raises :class:`RecipeError` on bad input).

    ``require_files=False`` for commands that only look at a workspace (status, clean,
    logs, a diff of a git revision): a missing local file is then a plan warning.
    """
    display = str(path)
    file = Path(path)
    doc = compose(file, profiles=profiles, overrides=overrides, display=display,
                  interpolated=False)

    def plan_of(composed: Document) -> Plan:
        return build_plan(
            composed.data,
            check(composed, cwd, require_files=require_files),
            composed.where,
            display=display,
            profiles=tuple(profiles),
            overrides=tuple(overrides),
            cwd=cwd,
        )

    spec = matrix.take(doc)
    if spec is None:
        interpolate(doc)
        return plan_of(doc)
    expansion, planned = checked_variants(doc, spec, plan_of, overrides)
    return merge_plans(expansion, [d for d, _ in planned], [p for _, p in planned],
                       cwd or Path.cwd())


def profile_names(path: Path | str) -> list[str]:
    """The profiles a recipe (with its extends chain) defines."""
    from llm_recipe.compiler.compose import _with_extends

    doc = _with_extends(Path(path), str(path), chain=())
    profiles = doc.data.get("profiles")
    return list(profiles) if isinstance(profiles, dict) else []


def validate_recipe(path: Path | str) -> list[str]:
    """Validate a recipe as written and under each of its profiles; returns the profiles checked."""
    file = Path(path)
    _check_composed(compose(file, display=str(path), interpolated=False))
    names = profile_names(file)
    for name in names:
        _check_composed(compose(file, profiles=[name], display=str(path), interpolated=False))
    return names


def _check_composed(doc: Document) -> None:
    """Check a composed, not yet interpolated document, each matrix variant on its own.

    Validation is of the recipe as text, for CI and editors: the local data files it
    names need not be here (``recipe plan`` and ``recipe run`` require them)."""

    def static_check(composed: Document) -> Resolution:
        return check(composed, require_files=False)

    spec = matrix.take(doc)
    if spec is None:
        interpolate(doc)
        static_check(doc)
    else:
        checked_variants(doc, spec, static_check)
