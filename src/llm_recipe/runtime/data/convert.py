"""Conversion of one source to an Arrow file of its canonical rows, checked.

Conversion has two paths:

- **fast**: pyarrow's own readers (multi-threaded, block by block: ``pyarrow.json``,
  ``pyarrow.csv`` with every column read as text, parquet record batches; txt split in
  16 MiB blocks), written batch by batch, so memory stays bounded whatever the size;
- **exact**: when pyarrow refuses the file (malformed JSON or CSV, bytes that are not
  UTF-8, a column whose type changes between rows, a column that first appears after
  the first block), the defensive readers of :mod:`.files` read it again one row at a
  time (two passes: one for the schema of every column, one to write), which names the
  file, the line and the problem, never an Arrow traceback. Two refusals are ours,
  where pyarrow would read on: every batch is validated in full (its JSON reader lets
  bytes that are not UTF-8 into text), and a csv file with an odd number of ``"`` (a
  quote never closed, which it reads to the end of the file as one field) goes to the
  exact reader, which is strict about quotes.

After writing, the table is checked with pyarrow compute: the format's columns
(:func:`.formats.table_problem`) and the bytes of text per row against
``files.MAX_ROW_BYTES`` (a row over it makes the defensive reader scan the file to name
its line). Rows after ``limit`` are not read, so neither are their problems. Only the
top-level text columns are counted against ``MAX_ROW_BYTES`` on the fast path (a line
that is long only in JSON syntax, or in a nested list, is not refused there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.runtime import builtin
from llm_recipe.runtime.data import files
from llm_recipe.runtime.data.formats import (
    FIELDS,
    DataError,
    check_row,
    rename,
    render_builtin,
    shape_error,
    table_problem,
)

if TYPE_CHECKING:
    from llm_recipe.runtime.data.arrow import Source

CONVERTER_VERSION = 1
"""Bump when conversion changes what an entry holds: old entries then miss."""
BATCH_ROWS = 10_000
"""Rows per record batch on the exact path (and per written batch for builtins)."""
TXT_BLOCK = 16 * 1024 * 1024



def convert(source: Source, target: Path) -> int:
    """Write the canonical rows of ``source`` to ``target`` (Arrow IPC stream); row count."""
    entry = source.entry
    located = source.file
    if "builtin" in entry and located is None:
        raw = builtin.generate(entry["builtin"], split=entry.get("split", "train"),
                               n=entry.get("n"), seed=entry.get("seed", 0))
        rows = [render_builtin(row, entry["builtin"], source.format) for row in raw]
        written = _write_exact(target, lambda: iter(rows), source, renamed=True)
    elif located is None:
        written = _write(target, _hub_batches(source), source)
    else:
        path, file_format = located
        kind = files.file_kind(path, file_format)
        written = None
        if kind != "json":
            try:
                written = _write(target, fast_batches(path, kind), source)
            except DataError:
                raise
            except Exception:  # any refusal of pyarrow's readers: read it exactly
                target.unlink(missing_ok=True)
        if written is None:
            rows_of: Callable[[], Iterator[dict[str, Any]]]
            if kind == "json":
                document = files.read_json(path)
                rows_of = lambda: iter(document)  # noqa: E731
            else:
                rows_of = lambda: files.iter_rows(path, kind)  # noqa: E731
            written = _write_exact(target, rows_of, source)
    _check_written(target, source)
    return written


def _check_written(target: Path, source: Source) -> None:
    """The size and format checks of the module doc, on the written table."""
    import pyarrow as pa

    with pa.memory_map(str(target)) as handle:
        table = pa.ipc.open_stream(handle).read_all()
        longest = _longest_row(table)
        if longest is not None:
            index, size = longest
            located = source.file
            if located is not None:  # the defensive reader names the line
                for _ in files.iter_rows(*located):
                    pass
            raise DataError(
                f"{source.where}: row {index + 1:,} holds {size:,} bytes of text, over "
                f"{files.MAX_ROW_BYTES:,} bytes",
                expected=f"rows of at most {files.MAX_ROW_BYTES:,} bytes (MAX_ROW_BYTES)",
                hint="split the document into several rows of at most a few thousand tokens")
        problem = table_problem(table, source.format, source.where)
        if problem is not None:
            raise problem


def _longest_row(table: Any) -> tuple[int, int] | None:
    """(row index, bytes) of the first row whose top-level text is over MAX_ROW_BYTES."""
    import pyarrow as pa
    import pyarrow.compute as pc

    total = None
    for column in table.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        lengths = pc.fill_null(pc.binary_length(column), 0).cast(pa.int64())
        total = lengths if total is None else pc.add(total, lengths)
    if total is None or len(total) == 0:
        return None
    over = pc.greater(total, files.MAX_ROW_BYTES)
    if not pc.any(over).as_py():
        return None
    index = int(pc.index(over, True).as_py())
    return index, int(total[index].as_py())


def _write(target: Path, batches: Iterable[Any], source: Source) -> int:
    """Write record batches (renamed, cut at ``limit``) as one Arrow stream; row count."""
    import pyarrow as pa

    columns = source.entry.get("columns") or {}
    limit = source.entry.get("limit")
    writer = None
    written = 0
    try:
        for batch in batches:
            batch = _renamed(batch, columns)
            if limit is not None and written + batch.num_rows > limit:
                batch = batch.slice(0, limit - written)
            if writer is None:
                writer = pa.ipc.new_stream(str(target), batch.schema)
            writer.write_batch(batch)
            written += batch.num_rows
            if limit is not None and written >= limit:
                break
        if writer is None:
            writer = pa.ipc.new_stream(str(target), empty_schema(source.format))
    finally:
        if writer is not None:
            writer.close()
    return written


def empty_schema(fmt: str) -> Any:
    """The schema of a dataset with no rows: the format's fields (messages as turns)."""
    import pyarrow as pa

    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([(f, pa.list_(turn) if f in ("messages", "samples") else pa.string())
                      for f in FIELDS[fmt]])


def _renamed(batch: Any, columns: dict[str, str]) -> Any:
    """``columns:`` on a record batch: each canonical field a copy of its source column."""
    import pyarrow as pa

    if not columns:
        return batch
    names = list(batch.schema.names)
    arrays = list(batch.columns)
    for canonical, source_name in columns.items():
        if source_name not in names:
            continue
        column = batch.column(names.index(source_name))
        if canonical in names:
            arrays[names.index(canonical)] = column
        else:
            names.append(canonical)
            arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def fast_batches(path: Path, kind: str) -> Iterator[Any]:
    """Record batches from pyarrow's readers, each validated in full (pyarrow's JSON
    reader lets bytes that are not UTF-8 into text columns); raises what pyarrow raises."""
    for batch in _reader_batches(path, kind):
        batch.validate(full=True)
        yield batch


def _reader_batches(path: Path, kind: str) -> Iterator[Any]:
    import pyarrow as pa

    block = max(TXT_BLOCK, 2 * files.MAX_ROW_BYTES + 1024)
    if kind == "jsonl":
        import pyarrow.json as pj

        yield from pj.open_json(str(path), read_options=pj.ReadOptions(block_size=block))
    elif kind == "csv":
        import pyarrow.csv as pcsv

        header = files.csv_header(path)
        if not header:
            return
        if _odd_quotes(path):
            raise ValueError("a quote is never closed")  # pyarrow would read to the end
        if len(set(header)) != len(header):
            raise ValueError("duplicate column names")  # the exact path keeps the last
        reader = pcsv.open_csv(
            str(path), read_options=pcsv.ReadOptions(block_size=block),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False, quoted_strings_can_be_null=False))
        yield from reader
    elif kind == "txt":
        yield from _txt_batches(path, block)
    elif kind == "parquet":
        yield from files.parquet_batches(path)
    else:
        raise ValueError(kind)


def _odd_quotes(path: Path) -> bool:
    """Whether a file has an odd number of ``"``: in valid CSV quotes come in pairs, and an
    unclosed one makes pyarrow read the rest of the file as one field without a word."""
    count = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(TXT_BLOCK), b""):
            count += block.count(b'"')
    return count % 2 == 1


def _txt_batches(path: Path, block: int) -> Iterator[Any]:
    """One ``text`` row per non-blank line, decoded and split a block at a time.

    ``str.splitlines`` on whole blocks splits where :func:`.files.iter_txt` does; a block
    is cut after its last line break, and a carry longer than two limits without one
    stops the fast path (the exact reader refuses the line without reading it whole).
    """
    import pyarrow as pa

    carry = b""
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(TXT_BLOCK)
            data = carry + chunk
            if not chunk:
                lines, carry = data, b""
            else:
                cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
                if cut < 0:
                    if len(data) > block:
                        raise ValueError("a line longer than the block")
                    carry = data
                    continue
                if data[cut:cut + 1] == b"\r" and cut == len(data) - 1:
                    cut -= 1  # a \r at the end may be half of \r\n: keep it for later
                    if cut < 0:
                        carry = data
                        continue
                lines, carry = data[:cut + 1], data[cut + 1:]
            text = lines.decode("utf-8")  # UnicodeDecodeError: the exact path names it
            rows = [line for line in text.splitlines() if line.strip()]
            if rows:
                yield pa.RecordBatch.from_arrays([pa.array(rows, pa.string())], ["text"])
            if not chunk:
                return


def _hub_batches(source: Source) -> Iterator[Any]:
    """Record batches of a hub dataset (downloaded and cached by ``datasets`` itself)."""
    from llm_recipe.runtime.models import hub_error, prepare_hub_environment

    prepare_hub_environment()
    import datasets

    entry = source.entry
    try:
        data = datasets.load_dataset(entry["hub"], entry.get("subset"),
                                     split=entry.get("split", "train"),
                                     revision=entry.get("revision"))
    except (OSError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise hub_error("dataset", source.name, entry["hub"], entry.get("revision"),
                        exc) from exc
    yield from data.data.to_batches(max_chunksize=BATCH_ROWS)


def _write_exact(target: Path, rows_of: Callable[[], Iterator[dict[str, Any]]],
                 source: Source, *, renamed: bool = False) -> int:
    """Rows read one at a time, in two passes: every column's type, then the writing.

    The first pass checks each row against the format (:func:`.formats.check_row`) and
    names the first row where a column changes type; the second writes record batches
    with the schema of every column.
    """
    import pyarrow as pa

    schema = _scan_schema(rows_of(), source, renamed)
    writer = pa.ipc.new_stream(str(target), schema or empty_schema(source.format))
    written = 0
    try:
        for batch in _batches(rows_of(), source, renamed):
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
            written += len(batch)
    finally:
        writer.close()
    return written


def _batches(rows: Iterator[dict[str, Any]], source: Source,
             renamed: bool) -> Iterator[list[dict[str, Any]]]:
    """Renamed rows in lists of BATCH_ROWS, cut at ``limit``."""
    columns = {} if renamed else source.entry.get("columns") or {}
    limit = source.entry.get("limit")
    batch: list[dict[str, Any]] = []
    for count, row in enumerate(rows):
        if limit is not None and count >= limit:
            break
        batch.append(rename(row, columns))
        if len(batch) == BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


_KINDS = {str: "text", int: "a number", float: "a number", bool: "a boolean",
          dict: "an object", list: "a list"}


def _scan_schema(rows: Iterator[dict[str, Any]], source: Source, renamed: bool) -> Any:
    """The Arrow schema of every column over all rows, or a DataError at the first row
    that cannot share it."""
    import pyarrow as pa

    kinds: dict[str, tuple[str, int]] = {}
    schema = None
    number = 0
    for batch in _batches(rows, source, renamed):
        first = number + 1
        for row in batch:
            number += 1
            check_row(row, number, source.format, source.where)
            for key, value in row.items():
                if value is None:
                    continue
                kind = _KINDS.get(type(value), type(value).__name__)
                seen = kinds.setdefault(key, (kind, number))
                if seen[0] != kind:
                    raise shape_error(
                        source.where, number, source.format,
                        f"column '{key}' is {kind} here but {seen[0]} in row {seen[1]:,}; "
                        "a column holds one type in every row")
        try:
            found = pa.Table.from_pylist(batch).schema
            schema = found if schema is None else pa.unify_schemas(
                [schema, found], promote_options="permissive")
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise DataError(
                f"{source.where}: rows {first:,}-{number:,} hold values whose shapes differ "
                f"({files._short(exc)})",
                expected="each column with one shape of value in every row (nested lists "
                "and objects included)",
                hint="check the nested values of those rows") from None
    return schema
