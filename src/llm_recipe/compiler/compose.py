"""Compose pass: one recipe document from a file, its ``extends`` chain, profiles and --set.

Order, each step over the previous one's result:

1. ``extends``: base files first (relative to the file naming them), merged in order;
   mappings merge key by key, anything else replaces, ``null`` deletes a key.
2. ``profiles`` named on the command line, in order. A profile maps dotted paths to
   values and each entry *sets* its path, exactly like ``--set``.
3. ``--set a.b=c`` overrides, values typed by YAML and the schema.
4. ``${vars.x}`` interpolation. ``${env:NAME}`` is left as written: secrets are
   resolved only inside the launched job, never into a plan or script.

Every value keeps its source location through all four steps. Step 4 lives in
:mod:`llm_recipe.compiler.interpolation` (re-exported here).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llm_recipe.compiler.interpolation import _VAR as _VAR  # re-exported: authoring, tests
from llm_recipe.compiler.interpolation import interpolate
from llm_recipe.compiler.load import Document, _Composer, read_file
from llm_recipe.compiler.schema import (
    child_schema,
    is_open_mapping,
    known_keys,
    recipe_schema,
    schema_at,
    wants_string,
)
from llm_recipe.compiler.source import SourceMap, mask_override
from llm_recipe.errors import Location, RecipeError, RecipePath, UsageError, format_path

FORMAT_VERSION = 1
_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)((?:\[[0-9]+\])*)$")


def compose(
    path: Path,
    *,
    profiles: Sequence[str] = (),
    overrides: Sequence[str] = (),
    display: str | None = None,
    interpolated: bool = True,
) -> Document:
    """Load ``path`` and apply extends, the named profiles and ``--set`` overrides.

    ``interpolated=False`` stops before ``${vars.x}``: a ``matrix`` applies each
    variant's settings first, so that a variant can change a variable and every use
    follows (compiler/matrix.py interpolates each variant itself).
    """
    doc = _with_extends(path, display or str(path), chain=())
    available = doc.data.pop("profiles", None) or {}
    if not isinstance(available, dict):
        raise doc.where.error(("profiles",), "profiles must be a mapping of name -> overrides")
    for name in profiles:
        apply_profile(doc, available, name)
    for text in overrides:
        apply_override(doc, text)
    if interpolated:
        interpolate(doc)
    return doc


def check_version(doc: Document) -> None:
    """Refuse a format this version cannot read before anything else looks at it."""
    version = doc.data.get("recipe")
    if version is None:
        raise doc.where.error(
            (),
            "missing the format version",
            expected=f"'recipe: {FORMAT_VERSION}' as the first key",
            hint=f"add 'recipe: {FORMAT_VERSION}' at the top of the file",
        )
    if version != FORMAT_VERSION or not isinstance(version, int) or isinstance(version, bool):
        raise doc.where.error(
            ("recipe",),
            f"unsupported recipe format version {version!r}",
            expected=f"recipe: {FORMAT_VERSION}",
            hint="this llm-recipe reads format 1; upgrade llm-recipe for newer formats",
        )


def _with_extends(path: Path, display: str, chain: tuple[Path, ...]) -> Document:
    doc = read_file(path, display=display)
    check_version(doc)
    bases = doc.data.pop("extends", None)
    if bases is None:
        return doc
    entries = [bases] if isinstance(bases, str) else bases
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise doc.where.error(
            ("extends",),
            "extends must be a file name or a list of file names",
            expected="e.g. extends: base.yaml, or extends: [base.yaml, gpu.yaml]",
            hint="paths are relative to this file; remove extends to use no base",
        )
    merged: Document | None = None
    me = path.resolve()
    for index, entry in enumerate(entries):
        where_path: RecipePath = ("extends",) if isinstance(bases, str) else ("extends", index)
        target = (path.parent / entry).resolve()
        if target in (*chain, me):
            names = " -> ".join(p.name for p in (*chain, me, target))
            raise doc.where.error(
                where_path,
                f"extends loop: {names}",
                hint="a recipe cannot extend itself, directly or through others",
            )
        if not target.is_file():
            raise doc.where.error(
                where_path,
                f"extends names a missing file: {entry}",
                hint="paths in extends are relative to the file that names them",
            )
        base = _with_extends(target, _display(display, path, entry), (*chain, me))
        merged = base if merged is None else merge(merged, base)
    assert merged is not None
    return merge(merged, doc)


def _display(parent_display: str, parent: Path, entry: str) -> str:
    """Show base files relative to where the user pointed, e.g. recipes/base.yaml."""
    return str(Path(parent_display).parent / entry).replace("\\", "/")


def merge(base: Document, over: Document) -> Document:
    """``over`` merged onto ``base``: mappings merge, other values replace, null deletes."""
    where = SourceMap()
    where.graft((), base.where)
    where.texts.update(over.where.texts)
    data = _merge_into(base.data, over.data, (), where, over.where)
    return Document(data, where, over.file)


def _merge_into(
    base: Any, over: Any, path: RecipePath, where: SourceMap, over_where: SourceMap
) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            child = (*path, key)
            if value is None:
                out.pop(key, None)
                where.drop(child)
            elif key in out:
                out[key] = _merge_into(out[key], value, child, where, over_where)
            else:
                out[key] = value
                where.graft(child, over_where, child)
        if path in over_where.values:
            where.values[path] = over_where.values[path]
        return out
    where.drop(path)
    where.graft(path, over_where, path)
    return over


def split_path(text: str, location: Location) -> RecipePath:
    """``stages.sft.train.lr`` or ``phases[0].steps`` -> a recipe path."""
    parts: list[str | int] = []
    for segment in text.split("."):
        if segment.isdigit() and parts:
            parts.append(int(segment))
            continue
        match = _SEGMENT.match(segment)
        if not match:
            raise RecipeError(
                f"'{text}' is not a settings path",
                location,
                expected="dotted keys such as stages.sft.train.lr",
                hint="keys are letters, digits, '_' and '-'; list items are [0] or .0",
            )
        parts.append(match.group(1))
        parts.extend(int(i) for i in re.findall(r"\[([0-9]+)\]", match.group(2)))
    return tuple(parts)


def apply_profile(doc: Document, available: dict[str, Any], name: str) -> None:
    if name not in available:
        close = difflib.get_close_matches(name, list(available), n=1)
        location = doc.where.locate(("profiles",), key=True) if available else None
        raise UsageError(
            f"unknown profile '{name}'",
            location=location or Location(doc.file, 1, 1),
            path=("profiles",) if available else (),
            expected=f"one of: {', '.join(sorted(available))}"
            if available
            else "a profile defined under profiles: (this recipe has none)",
            hint=f"did you mean '{close[0]}'?"
            if close
            else "see the profiles: section"
            if available
            else "add a profiles: section mapping names to overrides",
            snippet=doc.where.snippet(location),
        )
    entries = available[name]
    if not isinstance(entries, dict):
        raise doc.where.error(
            ("profiles", name),
            "a profile must be a mapping of path -> value",
            hint="e.g. tiny: {compute.launcher: local}",
        )
    for key, value in entries.items():
        at: RecipePath = ("profiles", name, key)
        location = doc.where.locate(at, key=True) or Location(doc.file, 1, 1)
        target = split_path(key, location)
        set_value(doc, target, value, location, source=(doc.where, at))


def apply_override(doc: Document, text: str) -> None:
    """Apply one ``--set path=value``; the value is YAML (``1e-4``, ``[a, b]``, ``{r: 8}``).

    Errors name the override by its text, with a secret-looking key's value masked:
    an inline ``--set compute.env.HF_TOKEN=hf_...`` is refused without echoing it.
    """
    name = f"--set {mask_override(text)}"
    if "=" not in text:
        raise UsageError(
            f"--set needs path=value, got '{text}'",
            Location(name, 1, 1),
            expected="PATH=VALUE",
            hint="e.g. --set stages.sft.train.lr=1e-4",
        )
    key, raw = text.split("=", 1)
    location = Location(name, 1, 1)
    target = split_path(key.strip(), location)
    _check_settable(doc, target, location)
    where = SourceMap()
    where.add_text(name, text)
    try:
        value = _Composer(name, where).run(raw) if raw.strip() else None
    except RecipeError as error:
        raise UsageError(
            error.message,
            Location(name, 1, len(key) + 2),
            path=target,
            expected=error.expected,
            hint=error.hint
            if error.hint and not error.message.startswith("invalid YAML")
            else "the value is YAML (1e-4, [a, b], {r: 8}); quote text that YAML cannot read",
        ) from None
    value_loc = Location(name, 1, len(key) + 2)
    schema = schema_at(target, doc.data)
    typed = not isinstance(value, str | dict | list) and (value is not None or not raw.strip())
    if schema is not None and wants_string(schema) and typed:  # 1.0 stays '1.0'; null deletes
        value = raw
    shifted = SourceMap()
    for path, loc in where.values.items():
        shifted.values[path] = Location(name, 1, loc.col + len(key) + 1)
    shifted.values[()] = value_loc
    set_value(doc, target, value, value_loc, source=(shifted, ()))


def set_value(
    doc: Document,
    target: RecipePath,
    value: Any,
    location: Location,
    source: tuple[SourceMap, RecipePath],
) -> None:
    """Set ``target`` to ``value``, refusing paths the schema does not have."""
    _check_settable(doc, target, location)
    node = doc.data
    for depth, part in enumerate(target[:-1]):
        nxt = node[part] if _has(node, part) else None
        if nxt is None:
            if isinstance(part, int):
                raise _no_index(target[: depth + 1], location)
            nxt = node[part] = {}
        if not isinstance(nxt, dict | list):
            raise RecipeError(
                f"cannot set inside '{format_path(target[: depth + 1])}': it is a value",
                location,
                path=target,
            )
        node = nxt
    last = target[-1]
    if isinstance(node, list):
        if not _has(node, last):
            raise _no_index(target, location)
    elif value is None:
        node.pop(last, None)
    if value is not None or isinstance(node, list):
        node[last] = value
    doc.where.drop(target)
    src_map, src_path = source
    doc.where.graft(target, src_map, src_path)
    doc.where.values[target] = src_map.values.get(src_path, location)


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _no_index(path: RecipePath, location: Location) -> RecipeError:
    return RecipeError(
        f"'{format_path(path)}' is not in the list",
        location,
        path=path,
        hint="list items can be changed, not added; set the whole list instead",
    )


def _check_settable(doc: Document, target: RecipePath, location: Location) -> None:
    schema: Any = recipe_schema()
    node: Any = doc.data
    parent: tuple[Any, Any] | None = None
    for depth, part in enumerate(target):
        sub = child_schema(schema, part, node)
        if sub is None or (depth == 0 and part in ("extends", "profiles")):
            raise _not_a_setting(target, depth, schema, node, parent, location)
        parent = (schema, node)
        schema = sub
        node = (
            node.get(part) if isinstance(node, dict) else (node[part] if _has(node, part) else None)
        )


def _not_a_setting(
    target: RecipePath,
    depth: int,
    schema: Any,
    node: Any,
    parent: tuple[Any, Any] | None,
    location: Location,
) -> UsageError:
    """Say why ``target[depth]`` is not a setting: a typo, a missing entry or a plain value."""
    here = target[:depth]
    keys = [k for k in known_keys(schema, node) if here or k not in ("extends", "profiles")]
    close = difflib.get_close_matches(str(target[depth]), keys, n=1)
    expected = None
    if keys and not is_open_mapping(schema, node):
        under = f"a setting of {format_path(here)}" if here else "a top-level setting"
        expected = f"{under}: {', '.join(keys)}"
    if node is not None and not isinstance(node, dict | list):
        expected = None
        hint = f"'{format_path(here)}' is a single value, not a section"
    elif close:
        hint = f"did you mean '{format_path((*here, close[0]))}'?"
    elif node is None and parent is not None and is_open_mapping(*parent):
        entries = list(parent[1]) if isinstance(parent[1], dict) else []
        near = difflib.get_close_matches(str(here[-1]), entries, n=1)
        expected = f"an existing entry of {format_path(here[:-1])}" if entries else None
        hint = f"there is no '{format_path(here)}' in the recipe" + (
            f"; did you mean '{format_path((*here[:-1], near[0]))}'?" if near else ""
        )
    else:
        hint = "check the spelling of each part of the path"
    return UsageError(
        f"'{format_path(target)}' is not a recipe setting",
        location,
        path=target,
        expected=expected,
        hint=hint,
    )
