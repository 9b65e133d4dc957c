"""Validate pass: JSON Schema plus the rules a schema cannot say; every error at once.

jsonschema finds the errors; this module says them in the user's terms: an
unknown key is reported at the key with 'did you mean', a oneOf over sources
becomes 'exactly one of hub, path, init', a YAML-1.1 ``yes`` gets a hint.
The rules that span fields live in :mod:`llm_recipe.compiler.rules`; :func:`validate`
runs them with the schema.
"""

from __future__ import annotations

import difflib
from functools import cache
from typing import Any

from llm_recipe.compiler.load import parse_scalar
from llm_recipe.compiler.rules import non_finite_errors, semantic_errors
from llm_recipe.compiler.schema import known_keys, recipe_schema, schema_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError, RecipePath

_NAME_PATTERNS = {
    "^[A-Za-z][A-Za-z0-9_-]{0,63}$": "a letter, then up to 63 letters, digits, '_' or '-'",
    "^[A-Za-z_][A-Za-z0-9_]*$": "a letter or '_', then letters, digits or '_'",
}
_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


@cache
def _validators() -> tuple[Any, dict[str, Any]]:
    """A validator for the recipe with stages checked for ``kind`` only, and one per kind.

    Validating each stage against its own kind's schema (rather than through the
    nine ``if kind == ...`` branches) keeps planning linear and fast for long pipelines
    and yields the same errors.
    """
    from jsonschema import Draft202012Validator

    schema = recipe_schema()
    shell = dict(schema)
    shell["$defs"] = {**schema["$defs"], "stage": _kind_only(schema["$defs"]["stage"])}
    root = Draft202012Validator(shell)
    kinds = {
        kind: root.evolve(schema=schema["$defs"][f"stage_{kind}"])
        for kind in schema["$defs"]["stage"]["properties"]["kind"]["enum"]
    }
    return root, kinds


def _kind_only(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage.items() if k != "allOf"}


def _schema_errors(data: Any) -> list[tuple[RecipePath, Any]]:
    """(path prefix, jsonschema error) for the recipe and each stage of a known kind."""
    root, kinds = _validators()
    found: list[tuple[RecipePath, Any]] = [((), e) for e in root.iter_errors(data)]
    stages = data.get("stages") if isinstance(data, dict) else None
    for name, stage in (stages or {}).items() if isinstance(stages, dict) else ():
        kind = stage.get("kind") if isinstance(stage, dict) else None
        if isinstance(kind, str) and kind in kinds:
            found.extend((("stages", name), e) for e in kinds[kind].iter_errors(stage))
    return found


def validate(data: Any, where: SourceMap) -> list[RecipeError]:
    """Every schema and semantic error in a composed recipe."""
    errors = non_finite_errors(data, where)
    refused = {error.path for error in errors}
    seen: set[tuple[RecipePath, str]] = set()
    for prefix, error in _schema_errors(data):
        for converted in _convert(error, data, where, prefix):
            if converted.path in refused:  # said once, as 'a finite number'
                continue
            key = (converted.path, converted.message)
            if key not in seen:
                seen.add(key)
                errors.append(converted)
    errors.extend(semantic_errors(data, where))
    return errors


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"'{value}'" if len(value) < 60 else f"'{value[:57]}...'"
    return repr(value)


def _convert(error: Any, data: Any, where: SourceMap, prefix: RecipePath = ()) -> list[RecipeError]:
    path: RecipePath = (*prefix, *error.absolute_path)
    kind = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "propertyNames" in error.absolute_schema_path:
        return _bad_key(path, value, error, where)
    if kind in ("additionalProperties", "unevaluatedProperties"):
        return _unknown_keys(path, value, data, where)
    if kind == "required":
        missing = [k for k in error.validator_value if isinstance(value, dict) and k not in value]
        return [
            where.error(path, f"missing required key '{k}'", key=True, hint=_required_hint(path, k))
            for k in missing
        ]
    if kind == "oneOf" and all("required" in b or "not" in b for b in error.validator_value):
        # Sources: exactly one, or (a branch ``not: {anyOf: ...}``) at most one.
        sources = [b for b in error.validator_value if "required" in b]
        return [_one_of(path, value, sources, where)]
    if kind == "enum":
        choices = [str(c) for c in error.validator_value]
        # 'LoRA', 'DPO': the same word in another case first, then the closest spelling
        same = [c for c in choices if c.lower() == str(value).lower()]
        close = same or difflib.get_close_matches(str(value), choices, n=1)
        what = "stage kind" if path[-1:] == ("kind",) else "value"
        named = isinstance(value, str | int | float) and not isinstance(value, bool)
        return [
            where.error(
                path,
                f"unknown {what} {_describe(value)}" if named else f"got {_describe(value)}",
                expected=f"one of: {', '.join(choices)}",
                hint=f"did you mean '{close[0]}'?" if close else None,
            )
        ]
    if kind == "type":
        wanted = error.validator_value
        wanted = wanted if isinstance(wanted, list) else [wanted]
        expected = " or ".join(_TYPE_NAMES.get(w, w) for w in wanted)
        hint = _type_hint(path, value, wanted, schema)
        return [where.error(path, f"got {_describe(value)}", expected=expected, hint=hint)]
    if kind == "pattern":
        return [_pattern(path, value, schema, where)]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "more than",
            "exclusiveMaximum": "less than",
        }[kind]
        # The field's description says what the range means ("Fraction of each batch...").
        return [
            where.error(path, f"got {_describe(value)}", expected=f"{word} {error.validator_value}",
                        hint=schema.get("description"))
        ]
    if kind in ("minItems", "minProperties"):
        return [
            where.error(
                path,
                "must not be empty",
                expected=f"at least {error.validator_value} entr"
                f"{'y' if error.validator_value == 1 else 'ies'}",
            )
        ]
    if kind == "uniqueItems":
        return [where.error(path, "has repeated entries", hint="list each item once")]
    if kind == "anyOf":
        return [
            where.error(
                path, f"got {_describe(value)}", expected=_any_of_text(error.validator_value)
            )
        ]
    if kind == "const":
        return [where.error(path, f"got {_describe(value)}", expected=repr(error.validator_value))]
    return [where.error(path, error.message)]


def _type_hint(path: RecipePath, value: Any, wanted: list[str], schema: dict) -> str | None:
    if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        return "recipes use YAML 1.2: write true or false"
    if isinstance(value, str) and "${" in value:
        return "${env:...} references are only allowed in string settings"
    numeric = {"integer", "number"} & set(wanted)
    if isinstance(value, str) and numeric and isinstance(parse_scalar(value.strip()), int | float):
        return f"write the number without quotes: {value.strip()}"
    key = next((p for p in reversed(path) if isinstance(p, str)), None)
    if key is not None and "default" in schema and not isinstance(schema["default"], dict | list):
        default = schema["default"]
        shown = str(default).lower() if isinstance(default, bool) else default
        return f"e.g. {key}: {shown}"
    if numeric and isinstance(value, str):
        return "write a number, e.g. 8 or 1e-4"
    return None


def _bad_key(path: RecipePath, key: Any, error: Any, where: SourceMap) -> list[RecipeError]:
    """A key refused by ``propertyNames``: a name that breaks the pattern, or not in the enum."""
    if not isinstance(key, str):
        return []
    if error.validator == "enum":
        choices = [str(c) for c in error.validator_value]
        close = difflib.get_close_matches(key, choices, n=1)
        return [
            where.error(
                (*path, key),
                f"unknown key '{key}'",
                key=True,
                expected=f"one of: {', '.join(choices)}",
                hint=f"did you mean '{close[0]}'?" if close else None,
            )
        ]
    pattern = error.schema.get("pattern") if isinstance(error.schema, dict) else None
    return [
        where.error(
            (*path, key),
            f"'{key}' is not a valid name",
            key=True,
            expected=_NAME_PATTERNS.get(pattern, f"a name matching {pattern}"),
            hint="names are used in paths and shell scripts",
        )
    ]


def _unknown_keys(path: RecipePath, value: Any, data: Any, where: SourceMap) -> list[RecipeError]:
    schema = schema_at(path, data)
    if not isinstance(value, dict) or schema is None:
        return []
    allowed = known_keys(schema, value)
    out = []
    for key in value:
        if key in allowed:
            continue
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = (
            f"did you mean '{close[0]}'?"
            if close
            else "check the spelling, and the indentation: is it under the right parent?"
        )
        out.append(
            where.error(
                (*path, key),
                f"unknown key '{key}'",
                expected=f"one of: {', '.join(allowed)}" if len(allowed) <= 24 else None,
                hint=hint,
                key=True,
            )
        )
    return out


def _one_of(path: RecipePath, value: Any, branches: list[dict], where: SourceMap) -> RecipeError:
    options = [b["required"][0] for b in branches]
    present = [o for o in options if isinstance(value, dict) and o in value]
    names = ", ".join(options)
    if not present:
        return where.error(
            path,
            f"needs one of: {names}",
            expected=f"exactly one of {names}",
            hint=f"e.g. {options[0]}: ...",
        )
    return where.error(
        (*path, present[1]),
        f"'{present[0]}' and '{present[1]}' cannot be used together",
        expected=f"exactly one of {names}",
        key=True,
        hint=f"keep one; to replace a base file's '{present[0]}', set it to null",
    )


def _pattern(path: RecipePath, value: Any, schema: dict, where: SourceMap) -> RecipeError:
    if "[^\\n" in schema.get("pattern", ""):
        return where.error(path, "contains a line break or NUL", expected="a single-line path")
    return where.error(
        path,
        f"{_describe(value)} is not allowed here",
        expected=schema.get("description") or f"text matching {schema.get('pattern')}",
    )


def _any_of_text(branches: list[dict]) -> str:
    texts = []
    for branch in branches:
        if "const" in branch:
            texts.append(repr(branch["const"]))
        elif "enum" in branch:
            texts.append("one of " + ", ".join(map(str, branch["enum"])))
        elif "$ref" in branch:
            texts.append(branch["$ref"].rsplit("/", 1)[-1])
        elif "type" in branch:
            texts.append(_TYPE_NAMES.get(branch["type"], branch["type"]))
    return " or ".join(texts)


def _required_hint(path: RecipePath, key: str) -> str | None:
    if path == () and key == "recipe":
        return "add 'recipe: 1' at the top"
    if key == "kind":
        return "every stage says what it is, e.g. kind: sft"
    return None
