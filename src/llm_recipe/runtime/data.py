"""Datasets from a plan: builtin generators, local files, the hub and stage outputs.

Every source ends as a list of rows in the canonical shape of its ``format``:

=================  ==============================================
text               ``{"text"}``
prompt_completion  ``{"prompt", "completion"}``
messages           ``{"messages": [{"role", "content"}, ...]}``
gsm8k              ``{"question", "answer"}`` (answer ends ``#### N``)
preference         ``{"prompt", "chosen", "rejected"}``
rollouts           ``{"question", "reference", "samples": [...]}``
=================  ==============================================

``columns`` in a dataset entry maps canonical names to the source's column names. A
missing column or a malformed row is reported with the file and row number.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import builtin

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


def load_rows(name: str, entry: dict[str, Any], *, producer_path: str | None = None) -> list[dict]:
    """The rows of dataset ``name`` (a plan ``datasets:`` entry or a stage output)."""
    fmt = entry["format"]
    if producer_path is not None:
        rows = read_jsonl(Path(producer_path))
        source = producer_path
    elif "builtin" in entry:
        raw = builtin.generate(entry["builtin"], split=entry.get("split", "train"),
                               n=entry.get("n"), seed=entry.get("seed", 0))
        return _limit([render_builtin(row, entry["builtin"], fmt) for row in raw], entry)
    elif "path" in entry:
        source = entry["path"]
        rows = read_file(Path(source), entry.get("file_format"))
    else:
        rows = read_hub(name, entry)
        source = f"hub {entry['hub']}"
    rows = [_rename(row, entry.get("columns") or {}) for row in rows]
    check_rows(rows, fmt, source)
    return _limit(rows, entry)


def _limit(rows: list[dict], entry: dict[str, Any]) -> list[dict]:
    limit = entry.get("limit")
    return rows[:limit] if limit else rows


def _rename(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    if not columns:
        return row
    out = dict(row)
    for canonical, source in columns.items():
        if source in row:
            out[canonical] = row[source]
    return out


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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist",
                        hint="check the dataset's path (relative to the recipe file)") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}: row {number} is not valid JSON ({exc.msg})",
                            hint="each line of a .jsonl file is one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number} is a {type(row).__name__}, not an object")
        rows.append(row)
    return rows


def read_file(path: Path, file_format: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local jsonl / json / csv / parquet / txt file."""
    kind = file_format or path.suffix.lstrip(".").lower()
    if not path.exists():
        raise DataError(f"data file {path} does not exist",
                        hint="check the dataset's path (relative to the recipe file)")
    if kind == "jsonl":
        return read_jsonl(path)
    if kind == "json":
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows (or {{\"data\": [...]}})")
        return data
    if kind == "csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if kind == "txt":
        return [{"text": line} for line in path.read_text("utf-8").splitlines() if line.strip()]
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unknown file format '{kind}'",
                    hint="set file_format: jsonl, json, csv, parquet or txt")


def read_hub(name: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    from llm_recipe.runtime.models import hub_error, prepare_hub_environment

    prepare_hub_environment()
    import datasets

    try:
        data = datasets.load_dataset(entry["hub"], entry.get("subset"),
                                     split=entry.get("split", "train"),
                                     revision=entry.get("revision"))
    except (OSError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise hub_error("dataset", name, entry["hub"], entry.get("revision"), exc) from exc
    return list(data)


def check_rows(rows: list[dict[str, Any]], fmt: str, source: str) -> None:
    """Every row has the format's fields with the right shape; report the first bad row."""
    needed = FIELDS[fmt]
    for number, row in enumerate(rows, start=1):
        missing = [f for f in needed if f not in row]
        if missing:
            raise DataError(
                f"{source}: row {number} has no column '{missing[0]}' (format {fmt})",
                expected=f"columns {', '.join(needed)}; the row has {', '.join(row) or 'none'}",
                hint="map your column names with the dataset's `columns:`, "
                f"e.g. columns: {{{missing[0]}: your_column}}")
        bad = _shape_problem(row, fmt)
        if bad:
            raise DataError(f"{source}: row {number}: {bad}", hint=f"see the {fmt} format")


def _shape_problem(row: dict[str, Any], fmt: str) -> str | None:
    if fmt == "messages":
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            return "messages must be a list of {role, content}"
        return None
    for key in FIELDS[fmt]:
        if key != "samples" and not isinstance(row[key], str):
            return f"'{key}' must be text, got {type(row[key]).__name__}"
    return None
