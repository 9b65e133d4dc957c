"""Load pass: recipe text -> plain data plus a source map, refusing anything unsafe.

The loader walks YAML *events* with an explicit stack instead of using a YAML
constructor, for three reasons: no tag can construct an object (only the YAML
1.2 core types exist), nesting depth and alias expansion are bounded without
relying on Python recursion, and every key and value gets its file:line:col as
it is read. Plain scalars follow the YAML 1.2 core schema: ``1e-4`` is a float
and ``yes`` is a string, which is what people who write configs expect.

A file's bytes come from :mod:`llm_recipe.compiler.reading`, which bounds what is
read (pipes, devices and FIFOs included); this module turns text into data. When
libyaml itself gives up, :mod:`llm_recipe.compiler.yaml_errors` explains why.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_recipe.compiler.reading import MAX_BYTES, read_bytes
from llm_recipe.compiler.source import SourceMap
from llm_recipe.compiler.yaml_errors import reader_error, syntax_error
from llm_recipe.errors import Location, RecipeError, RecipePath

MAX_DEPTH = 64
MAX_NODES = 200_000

_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_CONFLICT = re.compile(r"^(?:<{7}|={7}|>{7})(?: |$)")

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null")}
_COLLECTION_TAGS = {f"{_CORE}map", f"{_CORE}seq"}


@dataclass
class Document:
    """A loaded (or composed) recipe: plain data and where each value came from."""

    data: Any
    where: SourceMap
    file: str


def read_file(path: Path, *, display: str | None = None) -> Document:
    """Load one recipe file; ``display`` is the name errors use (as the user typed it).

    Every recipe file (a base of ``extends`` too) is read through :func:`read_bytes`,
    which bounds what is *read*, not what ``stat`` says: ``/dev/zero``, ``/dev/stdin``
    fed by ``yes`` and ``/proc`` files report a size of 0 and never end.
    """
    name = display or str(path)
    raw = read_bytes(path, name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            "file is not valid UTF-8", location=Location(name, line, 1), hint="save it as UTF-8"
        ) from None
    return load_text(text, name)


def load_text(text: str, name: str) -> Document:
    """Load recipe text; the root must be a mapping."""
    where = SourceMap()
    where.add_text(name, text)
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise RecipeError(f"recipe is over the {MAX_BYTES:,}-byte limit", Location(name, 1, 1))
    _check_conflict_markers(text, name, where)
    data = _Composer(name, where).run(text)
    if data is None:
        raise RecipeError(
            "the recipe is empty",
            location=Location(name, 1, 1),
            expected="a mapping with recipe, name and stages",
            hint="start from recipes/quickstart.yaml",
        )
    if not isinstance(data, dict):
        raise where.error(
            (),
            f"the top level is a {_type_name(data)}",
            expected="a mapping (key: value lines) with recipe, name and stages",
            hint="a recipe starts with 'recipe: 1' and 'name: ...' at column 1",
        )
    return Document(data, where, name)


def load_yaml(text: str, name: str) -> tuple[Any, SourceMap]:
    """Any YAML document (not only a recipe) under the recipe loader's rules: the core
    schema, no tags, bounded depth and aliases, errors located in ``name``. Used for the
    files a recipe points at, such as an FSDP settings file."""
    where = SourceMap()
    where.add_text(name, text)
    return _Composer(name, where).run(text), where


def parse_scalar(value: str) -> Any:
    """Resolve a plain (unquoted) scalar by the YAML 1.2 core schema."""
    if _NULL.match(value):
        return None
    if value in _BOOL:
        return _BOOL[value]
    if _INT.match(value):
        return int(value)
    if _OCT.match(value):
        return int(value[2:], 8)
    if _HEX.match(value):
        return int(value[2:], 16)
    if _FLOAT.match(value) or _INF.match(value) or _NAN.match(value):
        return float(
            value.replace(".inf", "inf")
            .replace(".Inf", "inf")
            .replace(".INF", "inf")
            .replace(".nan", "nan")
            .replace(".NaN", "nan")
            .replace(".NAN", "nan")
        )
    return value


def _check_conflict_markers(text: str, name: str, where: SourceMap) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if _CONFLICT.match(line):
            location = Location(name, number, 1)
            raise RecipeError(
                "merge-conflict marker in the recipe",
                location=location,
                expected="a resolved file",
                hint="keep one side and delete the <<<<<<< ======= >>>>>>> lines",
                snippet=where.snippet(location),
            )


def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


class _Frame:
    """An open mapping or sequence while walking events."""

    __slots__ = ("anchor", "explicit", "key", "key_loc", "merges", "path", "value")

    def __init__(self, value: Any, path: RecipePath, anchor: str | None) -> None:
        self.value = value
        self.path = path
        self.anchor = anchor
        self.key: str | None = None
        self.key_loc: Location | None = None
        self.merges: list[tuple[dict, RecipePath]] = []
        self.explicit: set[str] = set()


class _Composer:
    """Builds plain data from YAML events with a source map, bounded depth and size."""

    def __init__(self, name: str, where: SourceMap) -> None:
        self.name = name
        self.where = where
        self.nodes = 0
        self.anchors: dict[str, tuple[Any, RecipePath, int]] = {}
        self.root: Any = None
        self.documents = 0

    def loc(self, mark: Any) -> Location:
        return Location(self.name, mark.line + 1, mark.column + 1)

    def fail(
        self,
        mark: Any,
        message: str,
        hint: str | None = None,
        expected: str | None = None,
        path: RecipePath = (),
    ) -> RecipeError:
        location = self.loc(mark)
        return RecipeError(
            message,
            location=location,
            path=path,
            expected=expected,
            hint=hint,
            snippet=self.where.snippet(location),
        )

    def run(self, text: str) -> Any:
        stack: list[_Frame] = []
        try:
            for event in yaml.parse(text, Loader=_Parser):
                self.handle(event, stack)
        except yaml.MarkedYAMLError as exc:
            raise syntax_error(exc, self.name, self.where) from None
        except yaml.YAMLError as exc:
            raise reader_error(exc, text, self.name) from None
        return self.root

    def handle(self, event: Any, stack: list[_Frame]) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise self.fail(
                    event.start_mark,
                    "more than one YAML document in the recipe",
                    hint="a recipe is one document: remove the '---' separator",
                )
        elif isinstance(event, yaml.ScalarEvent):
            self.scalar(event, stack)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self.open(event, stack)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            self.close(stack)
        elif isinstance(event, yaml.AliasEvent):
            self.alias(event, stack)

    def count(self, mark: Any, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise self.fail(
                mark,
                f"the recipe expands to more than {MAX_NODES:,} values",
                expected=f"at most {MAX_NODES:,} values, counting each alias expanded",
                hint="aliases (*name) repeating large anchors multiply; a recipe never needs this",
            )

    def next_path(self, stack: list[_Frame], mark: Any) -> RecipePath:
        if not stack:
            return ()
        top = stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        if top.key is None:
            raise self.fail(
                mark,
                "a key must be a plain string",
                hint="lists and mappings cannot be keys; quote the key",
            )
        return (*top.path, top.key)

    def open(self, event: Any, stack: list[_Frame]) -> None:
        if event.tag and event.tag not in _COLLECTION_TAGS and event.tag != "!":
            raise self.refused_tag(event)
        if len(stack) >= MAX_DEPTH:
            raise self.fail(
                event.start_mark,
                f"nesting deeper than {MAX_DEPTH} levels",
                expected=f"at most {MAX_DEPTH} levels of lists and mappings",
                hint="a recipe is a few levels deep; check for runaway brackets",
            )
        self.count(event.start_mark)
        path = self.next_path(stack, event.start_mark)
        container: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
        self.where.set(path, self.loc(event.start_mark), key=stack[-1].key_loc if stack else None)
        stack.append(_Frame(container, path, event.anchor))

    def close(self, stack: list[_Frame]) -> None:
        frame = stack.pop()
        for merged, source in frame.merges:
            for key, value in merged.items():
                if key not in frame.value:
                    frame.value[key] = value
                    self.where.graft((*frame.path, key), self.where, (*source, key))
        if frame.merges:
            self.where.drop((*frame.path, "<<"))
        self.place(frame.value, frame.anchor, frame.path, stack)

    def place(self, value: Any, anchor: str | None, path: RecipePath, stack: list[_Frame]) -> None:
        if anchor:
            size = sum(1 for p in self.where.values if p[: len(path)] == path) if stack else 0
            self.anchors[anchor] = (value, path, max(size, 1))
        if not stack:
            self.root = value
            return
        top = stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
            return
        key, top.key, top.key_loc = top.key, None, None
        if key == "<<" and key not in top.explicit:
            merges = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
            for index, merged in merges:
                if not isinstance(merged, dict):
                    raise self.where.error(path, "'<<' merges a mapping or a list of mappings")
                top.merges.append((merged, path if index is None else (*path, index)))
            return
        top.value[key] = value

    def scalar(self, event: Any, stack: list[_Frame]) -> None:
        top = stack[-1] if stack else None
        if top is not None and isinstance(top.value, dict) and top.key is None:
            self.key(event, top)
            return
        if event.tag and event.tag not in _SCALAR_TAGS and event.tag != "!":
            raise self.refused_tag(event)
        self.count(event.start_mark)
        value = self.construct(event)
        path = self.next_path(stack, event.start_mark)
        self.where.set(path, self.loc(event.start_mark), key=top.key_loc if top else None)
        self.place(value, event.anchor, path, stack)

    def key(self, event: Any, frame: _Frame) -> None:
        if event.tag and event.tag not in _SCALAR_TAGS and event.tag != "!":
            raise self.refused_tag(event)
        key = event.value
        if key in frame.explicit:
            first = self.where.keys.get((*frame.path, key))
            raise self.fail(
                event.start_mark,
                f"duplicate key '{key}'"
                + (f" (first defined at line {first.line})" if first else ""),
                path=(*frame.path, key),
                expected="each key once in a mapping",
                hint="YAML keeps only the last of duplicate keys; remove or rename one",
            )
        if key != "<<":
            frame.explicit.add(key)
        frame.key = key
        frame.key_loc = self.loc(event.start_mark)

    def construct(self, event: Any) -> Any:
        plain = event.implicit[0] and not event.style
        tag = event.tag
        value = event.value
        if tag in (None, "!") and plain:
            return parse_scalar(value)
        if tag in (None, "!", f"{_CORE}str"):
            return value
        typed = parse_scalar(value)
        wanted = {
            f"{_CORE}int": int,
            f"{_CORE}float": (int, float),
            f"{_CORE}bool": bool,
            f"{_CORE}null": type(None),
        }[tag]
        if not isinstance(typed, wanted) or (tag != f"{_CORE}bool" and isinstance(typed, bool)):
            raise self.fail(event.start_mark, f"'{value}' is not a valid {tag.rsplit(':', 1)[-1]}")
        return float(typed) if tag == f"{_CORE}float" else typed

    def alias(self, event: Any, stack: list[_Frame]) -> None:
        if event.anchor not in self.anchors:
            raise self.fail(
                event.start_mark,
                f"unknown alias *{event.anchor}",
                hint="define the anchor (&name) before using it (*name)",
            )
        value, source, size = self.anchors[event.anchor]
        self.count(event.start_mark, size)
        top = stack[-1] if stack else None
        if top is not None and isinstance(top.value, dict) and top.key is None:
            raise self.fail(event.start_mark, "an alias cannot be a key")
        path = self.next_path(stack, event.start_mark)
        self.where.graft(path, self.where, source)
        self.where.set(path, self.loc(event.start_mark), key=top.key_loc if top else None)
        self.place(copy.deepcopy(value), None, path, stack)

    def refused_tag(self, event: Any) -> RecipeError:
        tag = event.tag
        if tag.startswith(_CORE):
            tag = "!!" + tag.removeprefix(_CORE)
        return self.fail(
            event.start_mark,
            f"YAML tag '{tag}' is not allowed",
            expected="plain YAML data: strings, numbers, booleans, null, lists and mappings",
            hint="remove the tag: recipes are data, and tags that build objects are refused",
        )
