"""The published schema: what a recipe file may say *as written*, for editors and ``recipe schema``.

The compiler validates a recipe after composition (``extends``, profiles, ``--set``,
``${vars.x}``) against the hand-written schema, ``schema/recipe.schema.json``: the one
source of truth for keys, types, enums and defaults. An editor sees the file before
any of that, so this module derives from it, mechanically, the schema a file is
checked against as it is typed:

* **interpolation**: wherever a value position (a property, a map value, a list item)
  refuses the string ``${vars.NAME}`` but accepts a scalar, it also accepts a
  reference: exactly one ``${vars.NAME}`` where the value is not a string (a number,
  a boolean: the variable's value and type replace it), a string containing one
  where strings are accepted (an enum, a pattern: the text is inserted).
  ``${env:NAME}`` gets no alternative: the compiler never resolves it, so it is
  accepted exactly where a string is, as in the compiler;
* **extends**: a file with ``extends`` is merged over its bases, so it is checked as a
  *partial* recipe: every ``$defs`` entry has a ``partial_`` twin where no key is
  required (except ``recipe``), which-source constraints ("exactly one of hub, path,
  init") are left to the composed recipe, any mapping value may be ``null`` (it
  deletes the base's key), and a stage without ``kind`` may carry the keys of any kind;
* **strict validators**: ajv's strict mode (``strictRequired``) wants every key a
  ``required`` names to be declared beside it, so presence-only branches such as
  ``{required: [hub]}`` declare ``properties: {hub: {}}`` (which changes nothing).

Nothing here loosens what the compiler reports: it keeps validating the composed,
interpolated recipe against the strict schema. The result is committed as
``schema/recipe.authoring.schema.json`` for the recipes' modelines; a test checks
that the file equals :func:`authoring_schema_text`.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from llm_recipe.compiler.compose import _VAR
from llm_recipe.compiler.schema import Schema, recipe_schema

AUTHORING_FILE = "recipe.authoring.schema.json"
AUTHORING_ID = "urn:llm-recipe:recipe-authoring:1"

_INTERPOLATION = "interpolation"
_INTERPOLATED_STRING = "interpolated_string"
_PARTIAL = "partial_"
_FULL_ROOT = "recipe"
_PROBE = "${vars.probe}"
_SCALARS = {"string", "number", "integer", "boolean"}
_ANNOTATIONS = ("title", "description", "default", "examples")
# Keywords whose value is one subschema / a list of subschemas / a map of subschemas.
_ONE = ("additionalProperties", "items", "not", "then", "else", "contains",
        "unevaluatedProperties", "unevaluatedItems")
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "dependentSchemas")


@cache
def authoring_schema() -> Schema:
    """The schema editors and ``recipe schema`` use (see the module docstring)."""
    strict = recipe_schema()
    probe = _Probe(strict)
    defs = {name: _interpolate(copy.deepcopy(sub), probe) for name, sub in strict["$defs"].items()}
    root = {k: v for k, v in strict.items() if k not in ("$schema", "$id", "$defs", "title")}
    version = root["properties"]["recipe"]  # read before anything is interpolated
    root = _interpolate(copy.deepcopy(root), probe)
    root["properties"]["recipe"] = copy.deepcopy(version)
    partial_defs = {
        _PARTIAL + name: _nullable(_partial(copy.deepcopy(sub))) for name, sub in defs.items()
    }
    partial_root = _partial(copy.deepcopy(root))
    partial_root["required"] = ["recipe"]
    partial_root["description"] = (
        "A recipe file with extends: merged over its bases, so no key but recipe is "
        "required, and null deletes a base's key."
    )
    all_defs: dict[str, Any] = {
        _FULL_ROOT: root,
        _PARTIAL + _FULL_ROOT: partial_root,
        **defs,
        **partial_defs,
        _INTERPOLATION: {
            "type": "string",
            "pattern": f"^{_VAR.pattern}$",
            "description": "A ${vars.NAME} reference: the variable's value (and type) "
            "replaces it before the recipe is validated.",
        },
        _INTERPOLATED_STRING: {
            "type": "string",
            "pattern": f"(?<!\\$){_VAR.pattern}",
            "description": "Text with a ${vars.NAME} reference: the variable's value is "
            "inserted before the recipe is validated.",
        },
    }
    out = {
        "$schema": strict["$schema"],
        "$id": AUTHORING_ID,
        "title": strict["title"],
        "description": (
            f"{strict['description']} Generated from the compiler's schema for editors: "
            "a recipe as written, with ${vars.NAME} references in typed settings and "
            "partial files that extend others."
        ),
        "type": "object",
        "if": {"required": ["extends"]},
        "then": {"$ref": f"#/$defs/{_PARTIAL}{_FULL_ROOT}"},
        "else": {"$ref": f"#/$defs/{_FULL_ROOT}"},
        "$defs": all_defs,
    }
    _declare_required(out)
    return out


def authoring_schema_text() -> str:
    """The authoring schema as ``recipe schema`` prints it and the committed file holds."""
    return json.dumps(authoring_schema(), indent=2) + "\n"


# -- interpolation ---------------------------------------------------------------------


class _Probe:
    """Does a subschema of the strict schema accept ``${vars.probe}``? (jsonschema decides)"""

    def __init__(self, root: Schema) -> None:
        from jsonschema import Draft202012Validator

        self._root = Draft202012Validator(root)

    def accepts_reference(self, schema: Any) -> bool:
        if isinstance(schema, bool):
            return schema
        return self._root.evolve(schema=schema).is_valid(_PROBE)


def _interpolate(schema: Any, probe: _Probe) -> Any:
    """``schema`` with an interpolation alternative at every value position that needs one."""
    if not isinstance(schema, dict):
        return schema
    for key in ("properties", "patternProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = {k: _value(v, probe) for k, v in schema[key].items()}
    for key in ("additionalProperties", "unevaluatedProperties", "items", "unevaluatedItems"):
        if isinstance(schema.get(key), dict):
            schema[key] = _value(schema[key], probe)
    if isinstance(schema.get("prefixItems"), list):
        schema["prefixItems"] = [_value(v, probe) for v in schema["prefixItems"]]
    # Value positions inside combinators and conditional branches. Never inside ``if``
    # (a condition on the kind must not match a reference), ``not`` (an alternative
    # there would refuse more) or ``propertyNames`` (keys are never interpolated).
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            schema[key] = [_interpolate(v, probe) for v in schema[key]]
    for key in ("then", "else"):
        if isinstance(schema.get(key), dict):
            schema[key] = _interpolate(schema[key], probe)
    return schema


def _value(schema: Any, probe: _Probe) -> Any:
    """A value position: recurse, then add the reference alternative if it is needed."""
    if not isinstance(schema, dict):
        return schema
    alternative = None
    if not probe.accepts_reference(schema):
        types = _possible_types(schema)
        if types & _SCALARS:
            alternative = _INTERPOLATED_STRING if "string" in types else _INTERPOLATION
    inner = _interpolate(schema, probe)
    if alternative is None:
        return inner
    return _wrap(inner, {"$ref": f"#/$defs/{alternative}"})


def _possible_types(schema: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """JSON types a subschema can accept (an over-approximation is fine)."""
    if not isinstance(schema, dict):
        return set(_SCALARS) | {"object", "array", "null"} if schema is not False else set()
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in seen:
            return set()
        target: Any = recipe_schema()
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return _possible_types(target, seen | {ref})
    found: set[str] | None = None
    if "type" in schema:
        found = set(schema["type"] if isinstance(schema["type"], list) else [schema["type"]])
        if "number" in found:
            found.add("integer")
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values is not None:
        found = {_json_type(v) for v in values} if found is None else \
            found & {_json_type(v) for v in values}
    for key in ("anyOf", "oneOf"):
        if key in schema:
            union = set().union(*(_possible_types(b, seen) for b in schema[key]))
            found = union if found is None else found & union
    for branch in schema.get("allOf", []):
        types = _possible_types(branch, seen)
        found = types if found is None else found & types
    return set(_SCALARS) | {"object", "array", "null"} if found is None else found


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


def _wrap(schema: Schema, alternative: Schema) -> Schema:
    """``anyOf: [schema, alternative]``, keeping the annotations on top for hovers."""
    if _is_wrapper(schema):
        schema["anyOf"].append(alternative)
        return schema
    wrapper: Schema = {k: schema[k] for k in _ANNOTATIONS if k in schema}
    wrapper["anyOf"] = [schema, alternative]
    wrapper["x-wrapper"] = True
    return wrapper


def _is_wrapper(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("x-wrapper") is True


# -- partial recipes (files with extends) ----------------------------------------------


def _partial(schema: Any) -> Any:
    """A partial twin: refs to partial defs, nothing required, null allowed as a value."""
    if isinstance(schema, list):
        return [_partial(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: Schema = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            name = value.removeprefix("#/$defs/")
            keep = name in (_INTERPOLATION, _INTERPOLATED_STRING)
            out[key] = value if keep else f"#/$defs/{_PARTIAL}{name}"
        elif key == "required":
            continue
        elif key in ("oneOf", "anyOf") and all(_presence_only(b) for b in value):
            continue  # which sources, at least one of: decided on the composed recipe
        elif key in ("if", "not"):
            out[key] = value  # a condition, a negation: loosening them would not loosen
        elif key in ("properties", "patternProperties"):
            out[key] = {k: _nullable(_partial(v)) for k, v in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _nullable(_partial(value))
        elif key in _ONE or key in _MANY or key in _MAP:
            out[key] = _partial(value)
        else:
            out[key] = value
    discriminated = _discriminator(schema)
    if discriminated is not None:
        key, thens = discriminated
        out["allOf"] = [
            *out["allOf"],
            {"if": {"not": {"required": [key]}}, "then": {"anyOf": _partial(thens)}},
        ]
    return out


def _presence_only(schema: Any) -> bool:
    """A branch that only says which keys are present: ``{required: [hub]}``, ``not``..."""
    if not isinstance(schema, dict) or not schema:
        return False
    for key, value in schema.items():
        if key == "required":
            continue
        if key == "not" and _presence_only(value):
            continue
        if key in ("anyOf", "oneOf", "allOf") and all(_presence_only(b) for b in value):
            continue
        return False
    return True


def _discriminator(schema: Schema) -> tuple[str, list[Schema]] | None:
    """``allOf: [{if: {properties: {kind: {const: X}}}, then: ...}, ...]``: (kind, thens)."""
    branches = schema.get("allOf")
    if not isinstance(branches, list) or not branches:
        return None
    keys: set[str] = set()
    thens = []
    for branch in branches:
        condition = branch.get("if") if isinstance(branch, dict) else None
        props = condition.get("properties", {}) if isinstance(condition, dict) else {}
        consts = [k for k, v in props.items() if isinstance(v, dict) and "const" in v]
        if len(consts) != 1 or "then" not in branch:
            return None
        keys.add(consts[0])
        thens.append(branch["then"])
    return (keys.pop(), thens) if len(keys) == 1 else None


def _nullable(schema: Any) -> Any:
    """A mapping value in a partial file: ``null`` deletes the base's key.

    ``null`` joins the type or enum where there is one, so that errors stay where they
    are; a bare ``$ref`` is left alone (every partial def accepts ``null`` itself).
    """
    if not isinstance(schema, dict) or _accepts_anything(schema):
        return schema
    if _is_wrapper(schema):
        return _wrap(schema, {"type": "null"})
    if "const" in schema:
        return _wrap(schema, {"type": "null"})
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema["type"] = [*types, "null"] if "null" not in types else types
        if "enum" in schema and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if "enum" in schema:
        if None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
        return schema
    if "$ref" in schema:
        return schema
    return _wrap(schema, {"type": "null"})


def _accepts_anything(schema: Schema) -> bool:
    return all(k in _ANNOTATIONS for k in schema)


# -- strict validators -----------------------------------------------------------------


def _declare_required(schema: Any) -> None:
    """Declare every key a ``required`` names in the same subschema (ajv strictRequired);
    drop the wrappers' private marker."""
    if isinstance(schema, list):
        for item in schema:
            _declare_required(item)
        return
    if not isinstance(schema, dict):
        return
    schema.pop("x-wrapper", None)
    required = schema.get("required")
    if isinstance(required, list):
        props = schema.setdefault("properties", {})
        closed = schema.get("additionalProperties") is False
        for key in required:
            if key not in props and not closed:
                props[key] = {}
    for key, value in schema.items():
        if key in _ONE or key in _MANY or key == "if":
            _declare_required(value)
        elif key in _MAP and isinstance(value, dict):
            for sub in value.values():
                _declare_required(sub)
