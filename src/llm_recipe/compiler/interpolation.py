"""``${vars.x}`` interpolation: the last compose step, run on its own by a matrix.

A whole-value ``${vars.NAME}`` keeps the variable's type; embedded references are
stringified; variables may refer to each other (loops are refused). ``${env:NAME}`` is
left as written: secrets are resolved only inside the launched job, never into a plan
or script. ``$${`` is a literal ``${``.

Kept apart from :mod:`llm_recipe.compiler.compose` (extends, profiles, ``--set``)
because it is a separate pass over a finished document: a matrix composes without it,
sets each variant's values, then interpolates each variant (compiler/matrix_plan.py),
and the authoring schema reads :data:`_VAR` to know what a reference looks like.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from llm_recipe.compiler.load import Document
from llm_recipe.errors import RecipePath

_VAR = re.compile(r"\$\{vars\.([A-Za-z][A-Za-z0-9_-]*)\}")
_REF = re.compile(r"\$\{([^}]*)\}")
_ENV = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")


def interpolate(doc: Document) -> None:
    """Replace ``${vars.x}`` everywhere; check every ``${...}`` is vars or env."""
    variables = doc.data.get("vars") or {}
    if not isinstance(variables, dict):
        raise doc.where.error(
            ("vars",),
            "vars must be a mapping of name -> value",
            expected="a mapping, e.g. vars: {steps: 100}",
            hint="values are used as ${vars.NAME}",
        )
    resolved: dict[str, Any] = {}

    def var(name: str, path: RecipePath, trail: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        if name not in variables:
            close = difflib.get_close_matches(name, list(variables), n=1)
            raise doc.where.error(
                path,
                f"unknown variable '${{vars.{name}}}'",
                expected=f"one of: {', '.join(variables)}" if variables else "a name under vars:",
                hint=f"did you mean '{close[0]}'?" if close else "define it under vars:",
            )
        if name in trail:
            raise doc.where.error(
                ("vars", name), "vars refer to each other in a loop: " + " -> ".join((*trail, name))
            )
        value = substitute(variables[name], ("vars", name), (*trail, name))
        resolved[name] = value
        return value

    def substitute(value: Any, path: RecipePath, trail: tuple[str, ...] = ()) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value
        if "$${" in value:
            parts = value.split("$${")
            return "${".join(str(substitute(part, path, trail)) for part in parts)
        whole = _VAR.fullmatch(value)
        if whole:
            return var(whole.group(1), path, trail)
        for match in _REF.finditer(value):
            inner = match.group(1)
            if not (_ENV.match(inner) or _VAR.fullmatch(match.group(0))):
                raise doc.where.error(
                    path,
                    f"cannot interpolate '{match.group(0)}'",
                    expected="${vars.NAME} or ${env:NAME}",
                    hint="write $${...} for a literal '${'",
                )
        return _VAR.sub(lambda m: str(var(m.group(1), path, trail)), value)

    def walk(node: Any, path: RecipePath) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        return substitute(node, path)

    doc.data = walk(doc.data, ())
