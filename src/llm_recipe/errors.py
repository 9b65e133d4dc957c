"""One error family for everything a user can get wrong.

Every error the compiler raises on bad input is a :class:`RecipeError` that knows
where it happened (file, line, column and the recipe path such as
``stages.dpo.data``), what was expected and a hint. The CLI maps the family to
exit code 2; anything else is a bug and maps to 1. Keeping the location on the
error (not in the message) lets tests, the JSON output and editors use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PathPart = str | int
RecipePath = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """Render a recipe path the way users write it: ``stages.sft.train.lr``, ``models[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


@dataclass(frozen=True)
class Location:
    """A place in a source: file name and 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class RecipeError(Exception):
    """Bad input: a recipe, an override or a command line that cannot be compiled."""

    message: str
    location: Location | None = None
    path: RecipePath = ()
    expected: str | None = None
    hint: str | None = None
    snippet: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.render()

    def render(self) -> str:
        """The message as printed: ``file:line:col: error: path: message`` plus details."""
        where = f"{self.location}: " if self.location else ""
        what = f"{format_path(self.path)}: " if self.path else ""
        lines = [f"{where}error: {what}{self.message}"]
        if self.expected:
            lines.append(f"  expected: {self.expected}")
        if self.snippet:
            lines.append(self.snippet)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """The JSON shape used by ``--json`` output."""
        loc = self.location
        return {
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "col": loc.col if loc else None,
            "path": format_path(self.path) if self.path else None,
            "message": self.message,
            "expected": self.expected,
            "hint": self.hint,
        }


class RecipeErrors(RecipeError):
    """Several errors reported together, so a user fixes them in one round."""

    def __init__(self, errors: Iterable[RecipeError]) -> None:
        self.errors = sorted(errors, key=_sort_key)
        first = self.errors[0]
        super().__init__(first.message, first.location, first.path, first.expected, first.hint)

    def render(self) -> str:
        body = "\n".join(error.render() for error in self.errors)
        count = len(self.errors)
        return f"{body}\n{count} error{'s' if count != 1 else ''}"

    def to_dict(self) -> dict[str, object]:
        return {"errors": [error.to_dict() for error in self.errors]}


def _sort_key(error: RecipeError) -> tuple[str, int, int, str]:
    loc = error.location
    if loc is None:
        return ("", 0, 0, error.message)
    return (loc.file, loc.line, loc.col, error.message)


def raise_all(errors: Sequence[RecipeError]) -> None:
    """Raise nothing, the single error, or all of them together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise RecipeErrors(errors)


class UsageError(RecipeError):
    """A command line that cannot be carried out (unknown profile, bad --set syntax)."""


def errors_json(error: RecipeError) -> dict[str, object]:
    """``{"errors": [...]}`` for one error or several (the ``--json`` shape)."""
    data = error.to_dict()
    return data if "errors" in data else {"errors": [data]}
