"""Where every value came from: the source map that lets any pass point at a line.

Values stay plain Python data (dicts, lists, scalars) so JSON Schema and the
plan can use them directly; their locations live beside them, keyed by recipe
path. Composition (extends, profiles, --set) moves values between documents, so
the source map offers the same moves: :meth:`SourceMap.graft` and
:meth:`SourceMap.drop`.
"""

from __future__ import annotations

from collections.abc import Iterable

from llm_recipe.errors import Location, RecipeError, RecipePath


class SourceMap:
    """Locations of values (and of the keys naming them), plus source texts for snippets."""

    def __init__(self) -> None:
        self.values: dict[RecipePath, Location] = {}
        self.keys: dict[RecipePath, Location] = {}
        self.texts: dict[str, str] = {}

    def add_text(self, file: str, text: str) -> None:
        self.texts[file] = text

    def locate(self, path: RecipePath, *, key: bool = False) -> Location | None:
        """The location of ``path``, or of its nearest ancestor that has one.

        With ``key=True`` prefer the key's position (``lrr:`` in an unknown-key
        error) over the value's.
        """
        probe = tuple(path)
        while True:
            if key and probe in self.keys:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if probe in self.keys:
                return self.keys[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def error(
        self,
        path: RecipePath,
        message: str,
        *,
        expected: str | None = None,
        hint: str | None = None,
        key: bool = False,
    ) -> RecipeError:
        """A :class:`RecipeError` located at ``path``, with the source line quoted."""
        location = self.locate(path, key=key)
        return RecipeError(
            message,
            location=location,
            path=tuple(path),
            expected=expected,
            hint=hint,
            snippet=self.snippet(location),
        )

    def snippet(self, location: Location | None) -> str | None:
        """The source line with a caret under the column, as compilers print it."""
        if location is None or location.file not in self.texts:
            return None
        lines = self.texts[location.file].splitlines()
        if not 1 <= location.line <= len(lines):
            return None
        text = lines[location.line - 1].rstrip()
        if len(text) > 160:
            return None
        gutter = f"{location.line:>5} | "
        return f"{gutter}{text}\n{' ' * (len(gutter) - 2)}| {' ' * (location.col - 1)}^"

    def drop(self, prefix: RecipePath) -> None:
        """Forget the locations at and under ``prefix`` (the value there is replaced)."""
        n = len(prefix)
        for table in (self.values, self.keys):
            for path in [p for p in table if p[:n] == prefix]:
                del table[path]

    def graft(self, prefix: RecipePath, other: SourceMap, other_prefix: RecipePath = ()) -> None:
        """Copy ``other``'s locations under ``other_prefix`` to live under ``prefix`` here."""
        n = len(other_prefix)
        for mine, theirs in ((self.values, other.values), (self.keys, other.keys)):
            for path, location in list(theirs.items()):
                if path[:n] == other_prefix:
                    mine[prefix + path[n:]] = location
        self.texts.update(other.texts)

    def set(self, path: RecipePath, location: Location, *, key: Location | None = None) -> None:
        self.values[path] = location
        if key is not None:
            self.keys[path] = key

    def paths(self) -> Iterable[RecipePath]:
        return self.values.keys()
