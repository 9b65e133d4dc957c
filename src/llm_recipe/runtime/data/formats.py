"""What a row of each dataset ``format`` is, and the checks that say which row is wrong.

Every source ends as rows in the canonical shape of its ``format``:

=================  ==============================================
text               ``{"text"}``
prompt_completion  ``{"prompt", "completion"}``
messages           ``{"messages": [{"role", "content"}, ...]}``
gsm8k              ``{"question", "answer"}`` (answer ends ``#### N``)
preference         ``{"prompt", "chosen", "rejected"}``
rollouts           ``{"question", "reference", "samples": [...]}``
=================  ==============================================

``columns`` in a dataset entry maps canonical names to the source's column names. A
missing column or a malformed row is reported with the source and the row number
(counting rows, from 1), once, for the first bad row: :func:`check_rows` for Python
rows, :func:`table_problem` for an Arrow table, with the same words, so a row is named
alike whichever path read it.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.errors import RecipeError

FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "gsm8k": ("question", "answer"),
    "preference": ("prompt", "chosen", "rejected"),
    "rollouts": ("question", "reference", "samples"),
}
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


class DataError(RecipeError):
    """A dataset that cannot be read as its declared format."""


def render_builtin(row: dict[str, Any], generator: str, fmt: str) -> dict[str, Any]:
    """A builtin row in the requested format (arithmetic can be gsm8k, prompt/completion, text)."""
    if generator == "corpus":
        if fmt != "text":
            raise DataError(f"builtin corpus is text, not {fmt}", hint="use format: text")
        return row
    if fmt == "gsm8k":
        return row
    if fmt == "prompt_completion":
        return {"prompt": PROMPT_TEMPLATE.format(question=row["question"]),
                "completion": " " + row["answer"]}
    if fmt == "text":
        return {"text": f"{PROMPT_TEMPLATE.format(question=row['question'])} {row['answer']}"}
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": row["answer"]}]}
    raise DataError(f"builtin {generator} cannot be rendered as {fmt}",
                    hint="use format gsm8k, prompt_completion, messages or text")


def rename(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """``row`` with each canonical field copied from its source column (which stays)."""
    if not columns:
        return row
    out = dict(row)
    for canonical, source in columns.items():
        if source in row:
            out[canonical] = row[source]
    return out


def check_rows(rows: list[dict[str, Any]], fmt: str, source: str) -> None:
    """Every row has the format's fields with the right shape; report the first bad row."""
    for number, row in enumerate(rows, start=1):
        check_row(row, number, fmt, source)


def check_row(row: dict[str, Any], number: int, fmt: str, source: str) -> None:
    """One row (``number`` counts from 1) against its format."""
    needed = FIELDS[fmt]
    missing = [f for f in needed if f not in row or row[f] is None]
    if missing:
        raise missing_column(source, number, fmt, missing[0], [k for k, v in row.items()
                                                                if v is not None])
    bad = _shape_problem(row, fmt)
    if bad:
        raise shape_error(source, number, fmt, bad)


def missing_column(source: str, number: int, fmt: str, field: str,
                   present: list[str] | None) -> DataError:
    """Row ``number`` lacks ``field``; ``present`` lists the columns it has, if known."""
    has = f"; the row has {', '.join(present) or 'none'}" if present is not None else ""
    return DataError(
        f"{source}: row {number:,} has no column '{field}' (format {fmt})",
        expected=f"columns {', '.join(FIELDS[fmt])}{has}",
        hint="map your column names with the dataset's `columns:`, "
        f"e.g. columns: {{{field}: your_column}}")


def shape_error(source: str, number: int, fmt: str, problem: str) -> DataError:
    return DataError(f"{source}: row {number:,}: {problem}", hint=f"see the {fmt} format")


def _shape_problem(row: dict[str, Any], fmt: str) -> str | None:
    if fmt == "messages":
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and m.get("role") is not None
                and m.get("content") is not None for m in messages):
            return "messages must be a list of {role, content}"
        return None
    for key in FIELDS[fmt]:
        if key != "samples" and not isinstance(row[key], str):
            return f"'{key}' must be text, got {type(row[key]).__name__}"
    return None


_ARROW_PYTHON = (("int", "int"), ("uint", "int"), ("float", "float"), ("double", "float"),
                 ("bool", "bool"), ("list", "list"), ("large_list", "list"),
                 ("struct", "dict"), ("timestamp", "datetime"), ("date", "date"),
                 ("binary", "bytes"), ("large_binary", "bytes"))


def python_name(arrow_type: Any) -> str:
    """The Python type name a value of this Arrow type reads as (for error messages)."""
    text = str(arrow_type)
    for prefix, name in _ARROW_PYTHON:
        if text.startswith(prefix):
            return name
    return text


def table_problem(table: Any, fmt: str, source: str) -> DataError | None:
    """The error :func:`check_rows` would raise for the first bad row of an Arrow table.

    Vectorised with pyarrow compute: a column the format needs must exist, be text (or,
    for messages, a list of {role, content}) and hold a value in every row. A null is
    reported as a missing column (a JSON row without the key reads as null in Arrow).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.schema.names
    for field in FIELDS[fmt]:
        if field not in names:
            return missing_column(source, 1, fmt, field, list(names))
        column = table.column(field)
        if column.null_count:
            first = _first_true(pc.is_null(column))
            return missing_column(source, first + 1, fmt, field, None)
        kind = column.type
        if fmt == "messages":
            problem = _messages_problem(column)
            if problem is not None:
                return shape_error(source, problem + 1, fmt,
                                   "messages must be a list of {role, content}")
            continue
        if field == "samples":
            continue
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            if table.num_rows == 0:
                continue
            return shape_error(source, 1, fmt,
                               f"'{field}' must be text, got {python_name(kind)}")
    return None


def _messages_problem(column: Any) -> int | None:
    """Index of the first row whose messages are not a list of {role, content}, or None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if len(column) == 0:
        return None
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return 0
    item = kind.value_type
    if pa.types.is_null(item):  # every list is empty
        return None
    if not pa.types.is_struct(item):
        return 0
    fields = {item.field(i).name for i in range(item.num_fields)}
    if not {"role", "content"} <= fields:
        return 0
    offset = 0
    for chunk in getattr(column, "chunks", [column]):
        values = chunk.flatten()
        parents = pc.list_parent_indices(chunk)
        bad = pc.or_(pc.or_(pc.is_null(values), pc.is_null(pc.struct_field(values, "role"))),
                     pc.is_null(pc.struct_field(values, "content")))
        if pc.any(bad).as_py():
            return offset + int(parents[_first_true(bad)].as_py())
        offset += len(chunk)
    return None


def _first_true(mask: Any) -> int:
    """Index of the first true value of a boolean array or chunked array."""
    import pyarrow.compute as pc

    return int(pc.index(mask, True).as_py())
