"""Local data files read defensively, one row at a time: the exact (and slow) path.

A data file is whatever someone downloaded, so these readers bound what they hold and
name what is wrong:

- jsonl, txt and csv files are streamed one line at a time in binary, with a bounded
  ``readline``, and never read whole. A line (for csv, a record, which quoted line
  breaks can spread over several lines) longer than ``MAX_ROW_BYTES`` (8 MiB) is refused
  with its file and line number as soon as the limit is passed, before the rest of it is
  read. One row is one training document, and tokenizing it costs many times its size
  (a single 100 MB line took 16 GB of memory); a model sees a few thousand tokens of it
  at most anyway. A line that long is nearly always a broken file (a missing line break,
  a binary file, an unclosed csv quote) or a corpus that should be split into documents.
- a ``.json`` file is one JSON document that has to be parsed whole, so one over
  ``MAX_JSON_BYTES`` (1 GiB) is refused with a hint to use jsonl.
- bytes that are not UTF-8, malformed JSON or CSV, a top level that is not a list of
  rows, JSON nested too deeply, a directory or an unreadable file are a
  :class:`DataError` with the file, the line (or element), what was expected and a hint,
  never a raw traceback.

:mod:`.arrow` converts files with pyarrow's multi-threaded readers first and comes back
here only when they fail, to find and name the line; :mod:`.stream` reads streamed
datasets through the generators here (``iter_rows``), so a stream fails the same way.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from llm_recipe.runtime.data.formats import DataError

MAX_ROW_BYTES = 8 * 1024 * 1024
"""The longest line (csv: record) a jsonl, txt or csv file may have; see the module doc."""
MAX_JSON_BYTES = 1024 * 1024 * 1024
"""The largest ``.json`` file read (it is parsed whole); bigger data belongs in jsonl."""
FORMATS = "jsonl, json, csv, parquet or txt"
KINDS = ("jsonl", "json", "csv", "parquet", "txt")
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}


def file_kind(path: Path, file_format: str | None = None) -> str:
    """The reader a local file needs (``file_format`` or its suffix), checked to exist."""
    kind = file_format or path.suffix.lstrip(".").lower()
    if not path.exists():
        raise DataError(f"data file {path} does not exist",
                        hint="check the dataset's path (relative to the recipe file)")
    if path.is_dir() and kind != "parquet":
        raise _directory(path)
    if kind not in KINDS:
        raise DataError(f"{path}: unknown file format '{kind}'",
                        hint=f"set file_format: {FORMATS}")
    return kind


def read_file(path: Path, file_format: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local jsonl / json / csv / parquet / txt file (small files, tests)."""
    return list(iter_rows(path, file_format))


def iter_rows(path: Path, file_format: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a local file one at a time, with every check of the module doc."""
    kind = file_kind(path, file_format)
    if kind == "jsonl":
        return iter_jsonl(path)
    if kind == "json":
        return iter(read_json(path))
    if kind == "csv":
        return iter_csv(path)
    if kind == "txt":
        return iter_txt(path)
    return iter_parquet(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines file (one object per line)."""
    return list(iter_jsonl(path))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON Lines file, streamed line by line."""
    with _open(path) as handle:
        for number, raw in _raw_lines(path, handle):
            line = _decode(path, number, raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}: row {number} is not valid JSON "
                                f"({exc.msg} at column {exc.colno})",
                                hint="each line of a .jsonl file is one JSON object") from None
            except RecursionError:
                raise _too_deep(path, f"row {number}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {number} is {_json_type(row)}, not an object",
                                hint='one object per line, e.g. {"text": "..."}')
            yield row


def iter_txt(path: Path) -> Iterator[dict[str, Any]]:
    """One ``{"text"}`` row per non-blank line, streamed line by line."""
    with _open(path) as handle:
        for number, raw in _raw_lines(path, handle):
            # splitlines keeps the behaviour of str.splitlines on the whole file.
            for part in _decode(path, number, raw).splitlines():
                if part.strip():
                    yield {"text": part}


def iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a parquet file or folder, one record batch at a time."""
    for batch in parquet_batches(path):
        try:
            rows = batch.to_pylist()
        except (ValueError, UnicodeDecodeError) as exc:  # e.g. text that is not UTF-8
            raise DataError(f"{path}: cannot be read as parquet ({_short(exc)})",
                            hint="check the file; text columns must be UTF-8") from None
        yield from rows


def parquet_batches(path: Path, batch_size: int = 10_000) -> Iterator[Any]:
    """Record batches of a parquet file (or a folder of them); a DataError if unreadable."""
    import pyarrow
    import pyarrow.dataset as pads

    try:
        source = pads.dataset(str(path), format="parquet")
        yield from source.to_batches(batch_size=batch_size)
    except (pyarrow.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be read as parquet ({_short(exc)})",
                        hint=f"check the file, or set file_format: {FORMATS}") from None


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, without Arrow's source locations."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def read_json(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSON document: a list of objects, or ``{"data": [objects]}``."""
    too_big = DataError(f"{path}: a .json file is parsed whole and this one is over "
                        f"{MAX_JSON_BYTES:,} bytes",
                        expected=f"a .json file of at most {MAX_JSON_BYTES:,} bytes",
                        hint="write the rows as JSON Lines (one object per line, .jsonl), "
                        "which is read one row at a time")
    with _open(path) as handle:
        if os.fstat(handle.fileno()).st_size > MAX_JSON_BYTES:
            raise too_big
        raw = handle.read(MAX_JSON_BYTES + 1)  # bounded where the size lies (pipes, /dev)
    if len(raw) > MAX_JSON_BYTES:
        raise too_big
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        raise _not_utf8(path, line, raw[start:exc.start + 1], exc.start - start) from None
    del raw
    try:
        data = json.loads(text)
    except ValueError as exc:
        hint = "check the JSON at that position"
        if exc.msg == "Extra data":
            hint = ("a .json file holds one JSON value; for one object per line, "
                    "name the file .jsonl or set file_format: jsonl")
        raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: "
                        f"not valid JSON ({exc.msg})",
                        expected='a JSON list of objects, or {"data": [objects]}',
                        hint=hint) from None
    except RecursionError:
        raise _too_deep(path, "the document") from None
    del text
    where = "the list"
    if isinstance(data, dict) and "data" in data:
        data, where = data["data"], 'the "data" list'
        if not isinstance(data, list):
            raise DataError(f'{path}: "data" is {_json_type(data)}, not a list of rows',
                            expected='{"data": [objects]}, one object per row',
                            hint='make "data" a list of objects, e.g. {"data": [{"text": "..."}]}')
    if not isinstance(data, list):
        extra = ' without a "data" list' if isinstance(data, dict) else ""
        raise DataError(f"{path}: the top level is {_json_type(data)}{extra}, not a list of rows",
                        expected='a JSON list of objects, or {"data": [objects]}',
                        hint='one object per row, e.g. [{"text": "..."}]; from pandas, '
                        "write df.to_json(path, orient='records', lines=True) to a .jsonl")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: element {index} of {where} (counting from 0) is "
                            f"{_json_type(row)}, not an object",
                            expected="every element is an object: one row, keyed by column",
                            hint='write each row as an object, e.g. {"text": "..."}')
    return data


def csv_header(path: Path) -> list[str]:
    """The first record of a csv file (its header), read with the checks of :func:`iter_csv`."""
    for header in _csv_records(path, header_only=True):
        return header
    return []


def iter_csv(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a csv file keyed by its header, streamed record by record."""
    header: list[str] | None = None
    for fields in _csv_records(path):
        if header is None:
            header = fields
            continue
        yield dict(zip(header, fields, strict=True))


def _csv_records(path: Path, *, header_only: bool = False) -> Iterator[list[str]]:
    with _open(path) as handle:
        source = _CsvLines(path, _raw_lines(path, handle))
        # strict: a quote never closed, or text after a closing quote, is an error
        reader = csv.reader(source, strict=True)
        header: list[str] | None = None
        header_line = 0
        while True:
            source.new_record(reader.line_num + 1)
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise _csv_error(path, source.start, reader.line_num, exc) from None
            if not fields:
                continue  # a blank line
            if header is None:
                header, header_line = fields, source.start
                yield fields
                if header_only:
                    return
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"{path}: line {source.start} has {len(fields)} field"
                    f"{'s' if len(fields) != 1 else ''}, the header has {len(header)}",
                    expected=f"{len(header)} comma-separated fields, like the header "
                    f"on line {header_line}",
                    hint='quote a field that holds a comma, a quote (written "") or a line '
                    'break: "like, this"')
            yield fields


class _CsvLines:
    """Decoded lines for csv.reader that bound the size of one record (which may span lines)."""

    def __init__(self, path: Path, lines: Iterator[tuple[int, bytes]]) -> None:
        self.path, self.lines = path, lines
        self.start, self.size = 1, 0

    def new_record(self, line: int) -> None:
        self.start, self.size = line, 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        number, raw = next(self.lines)
        self.size += len(raw)
        if self.size > MAX_ROW_BYTES:
            raise DataError(
                f"{self.path}: the record starting on line {self.start} is over "
                f"{MAX_ROW_BYTES:,} bytes by line {number}",
                expected=f"csv records of at most {MAX_ROW_BYTES:,} bytes (MAX_ROW_BYTES)",
                hint="a quote that is never closed runs to the end of the file: check the "
                "quotes on that line; otherwise split the document into several rows")
        return _decode(self.path, number, raw)


def _csv_error(path: Path, start: int, line: int, exc: csv.Error) -> DataError:
    where = f"line {start}" if line <= start else f"the record on lines {start}-{line}"
    if "field larger than field limit" in str(exc):
        limit = csv.field_size_limit()
        return DataError(f"{path}: {where} has a field over csv's limit of {limit:,} characters",
                         expected=f"csv fields of at most {limit:,} characters",
                         hint="a quote that is never closed makes the rest of the file one "
                         "field: check the quotes; long documents belong in a .jsonl file")
    return DataError(f"{path}: {where} is not valid CSV ({exc})",
                     expected="comma-separated fields, quoted with \" where needed",
                     hint="check the quoting on that line")


@contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """The file opened for binary reading, or a DataError saying why it cannot be."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist",
                        hint="check the dataset's path (relative to the recipe file)") from None
    except IsADirectoryError:
        raise _directory(path) from None
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}",
                        hint="check the file's permissions") from None
    with handle:
        yield handle


def _raw_lines(path: Path, handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes with the line ending) for ``\\n``, ``\\r\\n`` and ``\\r`` endings.

    Reads at most ``MAX_ROW_BYTES`` + 2 bytes at a time, so a longer line is refused
    without being read whole.
    """
    number = 0
    limit = MAX_ROW_BYTES
    for chunk in iter(lambda: handle.readline(limit + 2), b""):
        if len(chunk) > limit and len(chunk.rstrip(b"\n").removesuffix(b"\r")) > limit:
            old_mac = b"\r" in chunk
            raise DataError(
                f"{path}: line {number + 1} is longer than {limit:,} bytes",
                expected=f"lines of at most {limit:,} bytes (MAX_ROW_BYTES): "
                "one row, one document, per line",
                hint=("the file seems to end its lines with \\r alone (old Mac style); "
                      "convert them to \\n, e.g. tr '\\r' '\\n' < IN > OUT"
                      if old_mac else
                      "split the document into several rows of at most a few thousand "
                      "tokens each (a model reads no more of one row than its context)"))
        if b"\r" in chunk and b"\r" in chunk.removesuffix(b"\r\n"):  # lone \r ends lines
            for piece in _LONE_CR.split(chunk):
                if piece:
                    number += 1
                    yield number, piece
        else:
            number += 1
            yield number, chunk


def _decode(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, number, raw[:exc.start + 1], exc.start) from None


def _not_utf8(path: Path, line: int, prefix: bytes, offset: int) -> DataError:
    """``prefix`` is the line up to and including the bad byte, at byte ``offset``."""
    column = len(prefix[:offset].decode("utf-8", "replace")) + 1
    return DataError(f"{path}: line {line} is not valid UTF-8 "
                     f"(byte 0x{prefix[offset]:02x} at column {column})",
                     expected="text encoded as UTF-8",
                     hint="save the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT")


def _too_deep(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what} is JSON nested too deeply to read",
                     expected="rows of plain objects, lists and values",
                     hint="flatten the data; training rows need a few levels at most")


def _directory(path: Path) -> DataError:
    return DataError(f"{path} is a directory, not a data file",
                     expected=f"one {FORMATS} file (a directory only for parquet)",
                     hint="name one file in the directory as the dataset's path")


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
