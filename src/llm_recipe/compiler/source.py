"""Where every value came from: the source map that lets any pass point at a line.

Values stay plain Python data (dicts, lists, scalars) so JSON Schema and the
plan can use them directly; their locations live beside them, keyed by recipe
path. Composition (extends, profiles, --set) moves values between documents, so
the source map offers the same moves: :meth:`SourceMap.graft` and
:meth:`SourceMap.drop`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from llm_recipe.errors import Location, RecipeError, RecipePath

SECRET_KEY = re.compile(
    r"(?:^|_)(?:token|secret|password|passwd|api_?key|access_?key|credentials?)(?:_|$)", re.I
)
"""A key whose value is a secret (``HF_TOKEN``, ``wandb_api_key``; not ``tokenizer``)."""
ENV_ONLY = re.compile(r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*\}$")
"""The only value a secret-looking key may have: a reference resolved by the job."""
MASK = "****"
_ENTRY = re.compile(r"""(?:^|(?<=[\s{,"'-]))(?P<key>[A-Za-z0-9_.-]+)["']?[ \t]*:[ \t]+(?=\S)""")
_ENV_VALUE = re.compile(r"""["']?\$\{env:[A-Za-z_][A-Za-z0-9_]*\}["']?[ \t]*(?:[,}\]#]|$)""")


def mask_secrets(line: str) -> str:
    """A source line with the value of its first secret-looking key replaced by ``****``.

    Error messages quote source lines; a line that holds an inline secret (refused,
    but written all the same) must not be echoed to a terminal or CI log. The key
    stays so the user sees which line; the rest of the line is hidden, since where a
    flow-style value ends cannot be told without parsing it.
    """
    for match in _ENTRY.finditer(line):
        if SECRET_KEY.search(match.group("key")) and not _ENV_VALUE.match(line, match.end()):
            return line[: match.end()] + MASK
    return line


def mask_override(text: str) -> str:
    """``--set`` text with the value hidden when the setting's key looks like a secret."""
    key, sep, value = text.partition("=")
    last = key.strip().rsplit(".", 1)[-1]
    if sep and SECRET_KEY.search(last) and not ENV_ONLY.match(value.strip()):
        return f"{key}={MASK}"
    return text


class SourceMap:
    """Locations of values (and of the keys naming them), plus source texts for snippets."""

    def __init__(self) -> None:
        self.values: dict[RecipePath, Location] = {}
        self.keys: dict[RecipePath, Location] = {}
        self.texts: dict[str, str] = {}

    def add_text(self, file: str, text: str) -> None:
        self.texts[file] = text

    def anchor(self, path: RecipePath, cwd: Path) -> Path:
        """The folder a relative path at ``path`` is relative to: the directory of the
        file that wrote it (a base file of ``extends``, or the recipe), or ``cwd`` for a
        ``--set`` value."""
        location = self.locate(path)
        if location is None or location.file.startswith("--set"):
            return cwd
        return Path(location.file).parent.resolve()

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
        conceal: bool = False,
    ) -> RecipeError:
        """A :class:`RecipeError` located at ``path``, with the source line quoted.

        ``conceal``: the value at ``path`` is a secret, so the quoted line shows
        ``****`` from its column on (it may sit on a line without its key).
        """
        location = self.locate(path, key=key)
        return RecipeError(
            message,
            location=location,
            path=tuple(path),
            expected=expected,
            hint=hint,
            snippet=self.snippet(location, conceal=conceal),
        )

    def snippet(self, location: Location | None, *, conceal: bool = False) -> str | None:
        """The source line with a caret under the column, as compilers print it.

        Secrets never appear: the value of a secret-looking key is masked on every
        line quoted (see :func:`mask_secrets`), and with ``conceal`` everything from
        the column on.
        """
        if location is None or location.file not in self.texts:
            return None
        lines = self.texts[location.file].splitlines()
        if not 1 <= location.line <= len(lines):
            return None
        text = lines[location.line - 1].rstrip()
        if len(text) > 160:
            return None
        if conceal:
            text = text[: location.col - 1] + MASK
        text = mask_secrets(text)
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
