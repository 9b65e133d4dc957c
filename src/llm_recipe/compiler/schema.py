"""The packaged JSON Schema and the two things the compiler asks of it beyond validation.

1. What lives at a path (for ``--set`` and profiles: is ``stages.sft.train.lr`` a
   setting, what type is it, which keys could the user have meant?).
2. Defaults: the schema's ``default`` keywords are the only place defaults are
   written, and :func:`fill_defaults` applies them to a valid recipe.

Both walk the schema guided by the data, because a stage's parameters depend on
its ``kind`` (the schema's if/then branches).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from llm_recipe.errors import RecipePath

Schema = dict[str, Any]

SCHEMA_FILE = "recipe.schema.json"


@cache
def schema_text() -> str:
    """The schema exactly as shipped (what ``recipe schema`` prints)."""
    return resources.files("llm_recipe.schema").joinpath(SCHEMA_FILE).read_text("utf-8")


@cache
def recipe_schema() -> Schema:
    return json.loads(schema_text())


_DEREF: dict[int, Schema] = {}
_BRANCHES: dict[tuple[int, Any], list[Schema]] = {}


def _deref(schema: Schema) -> Schema:
    """Follow local ``$ref``s; sibling keywords (description, default) win over the target's.

    Memoised by object identity: schema objects come from the cached root (or from
    this cache), so they live as long as the process and their ids stay unique.
    """
    if "$ref" not in schema:
        return schema
    key = id(schema)
    if key not in _DEREF:
        _DEREF[key] = _follow(schema)
    return _DEREF[key]


def _follow(schema: Schema) -> Schema:
    root = recipe_schema()
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}
    return schema


def _branches(schema: Schema, data: Any) -> list[Schema]:
    """The schema and every subschema that applies to ``data`` (allOf, matching if/then)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    present = tuple(k for k in _if_required(schema) if k in data) if isinstance(data, dict) \
        else ()
    # What an ``if`` can look at: the kind (other kinds match no branch) and the keys
    # it requires (a dataset's ``mixture``).
    key = (id(schema), kind if isinstance(kind, str) else None, present)
    if key not in _BRANCHES:
        _BRANCHES[key] = _collect_branches(schema, data)
    return _BRANCHES[key]


_IF_REQUIRED: dict[int, tuple[str, ...]] = {}


def _if_required(schema: Schema) -> tuple[str, ...]:
    """Keys some ``if`` under this schema's allOf requires (memoised like :func:`_deref`)."""
    key = id(schema)
    if key not in _IF_REQUIRED:
        found: list[str] = []
        pending = [_deref(schema)]
        while pending:
            current = pending.pop()
            for sub in current.get("allOf", []):
                sub = _deref(sub)
                found += [k for k in sub.get("if", {}).get("required", []) if k not in found]
                if "if" not in sub:
                    pending.append(sub)
        _IF_REQUIRED[key] = tuple(found)
    return _IF_REQUIRED[key]


def _collect_branches(schema: Schema, data: Any) -> list[Schema]:
    out: list[Schema] = []
    pending = [_deref(schema)]
    while pending:
        current = pending.pop(0)
        out.append(current)
        for sub in current.get("allOf", []):
            sub = _deref(sub)
            if "if" in sub:
                if _matches_if(sub["if"], data) and "then" in sub:
                    pending.append(_deref(sub["then"]))
            else:
                pending.append(sub)
        for sub in current.get("anyOf", []):
            pending.append(_deref(sub))
    return out


def _matches_if(condition: Schema, data: Any) -> bool:
    """Enough of ``if`` for our schema: ``{properties: {kind: {const: X}}}``."""
    if not isinstance(data, dict):
        return False
    for key, sub in condition.get("properties", {}).items():
        if "const" in sub and data.get(key) != sub["const"]:
            return False
    return all(key in data for key in condition.get("required", []))


def child_schema(schema: Schema, key: str | int, data: Any) -> Schema | None:
    """The schema of ``data[key]`` given the schema of ``data``, or None if there is none."""
    for branch in _branches(schema, data):
        if isinstance(key, int):
            if "items" in branch and isinstance(branch["items"], dict):
                return _deref(branch["items"])
            continue
        if key in branch.get("properties", {}):
            return _deref(branch["properties"][key])
    for branch in _branches(schema, data):
        extra = branch.get("additionalProperties")
        if isinstance(key, str) and isinstance(extra, dict):
            return _deref(extra)
    return None


def known_keys(schema: Schema, data: Any) -> list[str]:
    """Keys the schema names at this point (for 'did you mean' hints)."""
    keys: list[str] = []
    for branch in _branches(schema, data):
        keys.extend(k for k in branch.get("properties", {}) if k not in keys)
    return keys


def is_open_mapping(schema: Schema, data: Any) -> bool:
    """True where any key is allowed (models, stages, vars, env...)."""
    return any(isinstance(b.get("additionalProperties"), dict) for b in _branches(schema, data))


def schema_at(path: RecipePath, data: Any) -> Schema | None:
    """The schema of the value at ``path`` in ``data`` (which may not exist yet)."""
    schema: Schema | None = recipe_schema()
    node = data
    for part in path:
        assert schema is not None
        schema = child_schema(schema, part, node)
        if schema is None:
            return None
        node = _get(node, part)
    return schema


def _get(node: Any, part: str | int) -> Any:
    if isinstance(node, dict) and isinstance(part, str):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def wants_string(schema: Schema) -> bool:
    """True when the only acceptable type here is a string (so ``--set x=1.0`` stays '1.0')."""
    schema = _deref(schema)
    if schema.get("type") == "string":
        return True
    enum = schema.get("enum")
    return bool(enum) and all(isinstance(v, str) for v in enum)


def fill_defaults(data: Any, schema: Schema | None = None) -> Any:
    """A copy of ``data`` with every missing key that has a schema default filled in.

    Only objects that exist are filled (an absent optional block such as
    ``adapter`` stays absent); nested blocks that exist get their defaults.
    """
    schema = recipe_schema() if schema is None else schema
    data = copy.deepcopy(data)
    _fill(data, schema)
    return data


def _fill(node: Any, schema: Schema) -> None:
    if isinstance(node, dict):
        for branch in _branches(schema, node):
            for key, sub in branch.get("properties", {}).items():
                sub = _deref(sub)
                if key not in node and "default" in sub:
                    node[key] = copy.deepcopy(sub["default"])
        for key, value in node.items():
            sub = child_schema(schema, key, node)
            if sub is not None:
                _fill(value, sub)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            sub = child_schema(schema, index, node)
            if sub is not None:
                _fill(value, sub)
