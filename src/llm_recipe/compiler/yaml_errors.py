"""YAML syntax errors explained: libyaml's messages -> a located, actionable RecipeError.

The loader (:mod:`llm_recipe.compiler.load`) turns YAML events into data; this module
only runs when libyaml gives up. Its messages name the parser's state, not the author's
mistake, and sometimes point at the wrong line (a mis-indented first key is reported at
the key after it), so each explanation here re-reads the recipe text around the mark to
say what went wrong and where. Kept apart from the loader because none of it is needed
to load a valid file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import Location, RecipeError


@dataclass(frozen=True)
class _Mark:
    """A position in the recipe text (0-based line and column), like a yaml Mark."""

    line: int
    column: int


def _at(mark: Any, message: str, name: str, where: SourceMap, hint: str | None) -> RecipeError:
    """An error at a yaml mark in ``name``, quoting the line with a caret."""
    location = Location(name, mark.line + 1, mark.column + 1)
    return RecipeError(
        message,
        location=location,
        path=(),
        expected=None,
        hint=hint,
        snippet=where.snippet(location),
    )


def reader_error(exc: yaml.YAMLError, text: str, name: str) -> RecipeError:
    """A character YAML refuses (NUL, other control characters), located by its offset."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        return RecipeError(f"invalid YAML: {exc}", Location(name, 1, 1))
    line = text.count("\n", 0, position) + 1
    col = position - text.rfind("\n", 0, position)
    character = getattr(exc, "character", None)
    what = f"#x{character:04x}" if isinstance(character, int) else repr(character)
    return RecipeError(
        f"invalid YAML: unacceptable character {what}: {getattr(exc, 'reason', exc)}",
        Location(name, line, col),
        expected="printable text",
        hint="remove the control character (often pasted from a terminal or binary file)",
    )


def syntax_error(exc: yaml.MarkedYAMLError, name: str, where: SourceMap) -> RecipeError:
    """libyaml's syntax error in ``name`` (whose text ``where`` holds), explained."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "syntax error"
    context = exc.context_mark
    if exc.problem and exc.context and context and mark and context.line < mark.line:
        problem += f" ({exc.context} that starts at line {context.line + 1})"
    hint = "check indentation and quoting on this line or the one above"
    if tab_at(mark, name, where):
        problem = "a tab character in the indentation"
        hint = "indent with spaces; YAML does not allow tabs"
    elif "\\t" in problem or "tab" in problem:
        hint = "indent with spaces; YAML does not allow tabs"
    elif "mapping values are not allowed" in problem:
        hint = "a value containing ': ' must be quoted"
    elif "found undefined alias" in problem:
        hint = "define the anchor (&name) before using it (*name)"
    if mark is None:
        return RecipeError(f"invalid YAML: {problem}", Location(name, 1, 1), hint=hint)
    misplaced = overindented_first_key(exc, name, where)
    if misplaced is not None:
        return misplaced
    return _at(mark, f"invalid YAML: {problem}", name, where, hint)


def overindented_first_key(
    exc: yaml.MarkedYAMLError, name: str, where: SourceMap
) -> RecipeError | None:
    """The line where indentation went wrong when a block's first key is indented
    deeper than the keys after it.

    YAML takes a block's first key's column as the block's, so libyaml reports the
    *next* key ("did not find expected key" at a sibling that is indented right). When
    that first key is alone at its column and the lines after the reported one keep
    the reported column, the mistake is the first key: point at it.
    """
    mark = exc.problem_mark
    if mark is None or exc.problem != "did not find expected key":
        return None
    lines = where.texts.get(name, "").splitlines()
    if mark.line >= len(lines):
        return None

    def indent(n: int) -> int:
        return len(lines[n]) - len(lines[n].lstrip(" "))

    content = [n for n, text in enumerate(lines)
               if text.strip() and not text.lstrip().startswith("#")]
    right = indent(mark.line)
    above = [n for n in content if n < mark.line]
    run: list[int] = []  # the content lines just above, deeper than the reported one
    for n in reversed(above):
        if indent(n) <= right:
            parent = n
            break
        run.insert(0, n)
    else:
        return None
    if not run or not lines[parent].rstrip().endswith(":") or indent(parent) >= right:
        return None
    first, wrong = run[0], indent(run[0])
    if [n for n in run if indent(n) == wrong] != [first]:
        return None
    below = [n for n in content if n > mark.line]
    continues = bool(below) and indent(below[0]) == right
    if not continues:
        return None
    return _at(
        _Mark(first, wrong), f"invalid YAML: this key is indented {wrong} spaces, the "
        f"keys after it {right} (line {mark.line + 1})", name, where,
        hint=f"indent it {right} spaces, like the keys below it")


def tab_at(mark: Any, name: str, where: SourceMap) -> bool:
    """True when the error is at a tab in a line's indentation (libyaml does not say so)."""
    if mark is None:
        return False
    lines = where.texts.get(name, "").splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    return "\t" in indent and mark.column <= len(indent)
