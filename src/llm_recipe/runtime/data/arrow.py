"""Datasets as memory-mapped Arrow: converted once per content, cached, checked on use.

Every non-streamed source (a local file, a stage's output, a builtin generator, a hub
dataset) becomes one Arrow file of its canonical rows (``columns:`` applied, ``limit``
applied, the format checked; see :mod:`.convert`) that ``datasets.Dataset.from_file``
memory-maps: a 10 GiB corpus costs page cache, not Python objects. The conversion runs
once per content and is cached under ``<workspace>/.cache/datasets/<name>-<key>/``
(:func:`dataset_key`: the input's content fingerprint from the plan, the format,
columns, limit and the versions of the converter, datasets and pyarrow), published in
one rename with its ``cache.json`` (:mod:`llm_recipe.runtime.cache`), so a kill during
conversion leaves nothing that is later trusted.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.runtime.cache import cache_problem, publish, record_info
from llm_recipe.runtime.data import files
from llm_recipe.runtime.data.convert import CONVERTER_VERSION, convert

DATA_FILE = "data.arrow"
HASH_BELOW = 64 * 1024 * 1024
"""Data cache files of this size or more are checked by size on use, not hashed."""


@dataclass(frozen=True)
class Source:
    """One dataset to read: a ``datasets:`` entry (paths absolute) or a stage's output."""

    name: str
    entry: dict[str, Any]
    producer_path: str | None = None

    @property
    def format(self) -> str:
        return str(self.entry["format"])

    @property
    def where(self) -> str:
        """How errors name the source: its path, ``hub <id>`` or ``builtin <generator>``."""
        if self.producer_path is not None:
            return self.producer_path
        if "path" in self.entry:
            return str(self.entry["path"])
        if "hub" in self.entry:
            return f"hub {self.entry['hub']}"
        return f"builtin {self.entry.get('builtin')}"

    @property
    def file(self) -> tuple[Path, str | None] | None:
        """(path, file_format) of a local file or stage output; None for builtin and hub."""
        if self.producer_path is not None:
            return Path(self.producer_path), "jsonl"
        if "path" in self.entry:
            return Path(self.entry["path"]), self.entry.get("file_format")
        return None


@dataclass
class Loaded:
    """A dataset as loaded: the rows and how the cache was used (for the log)."""

    dataset: Any
    key: str
    """The digest of :func:`dataset_key`: what tokenization caches build on."""
    folder: Path | None
    reused: bool
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def dataset_key(source: Source, fingerprint: str) -> dict[str, Any]:
    """Everything the converted rows depend on: the input's content fingerprint and how it
    is read (stage outputs are keyed by their content, see :func:`source_fingerprint`)."""
    import datasets
    import pyarrow

    entry = source.entry
    return {"kind": "dataset", "version": CONVERTER_VERSION, "input": fingerprint,
            "format": source.format, "columns": entry.get("columns") or {},
            "limit": entry.get("limit"), "file_format": entry.get("file_format"),
            "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}


def source_fingerprint(source: Source, plan_fingerprint: str) -> str:
    """The content fingerprint to key a source by.

    A stage's output is keyed by its bytes, not by the producer's fingerprint: a forced
    re-run of a sampling stage writes other rows under the same fingerprint.
    """
    if source.producer_path is None:
        return plan_fingerprint
    from llm_recipe.compiler.fingerprint import file_sha256

    path = Path(source.producer_path)
    if not path.is_file():
        files.file_kind(path, "jsonl")  # names a missing file or a directory
    return "sha256:" + file_sha256(path)


def load(source: Source, fingerprint: str, cache: Path | None,
         log: Callable[[str], None] | None = None) -> Loaded:
    """The canonical rows of ``source`` as a memory-mapped ``datasets.Dataset``.

    ``cache`` is ``<workspace>/.cache``; None converts into a temporary folder that lives
    as long as the returned dataset is referenced by :func:`load_rows` only (rows are read
    into Python and the folder removed).
    """
    key = dataset_key(source, source_fingerprint(source, fingerprint))
    name = digest(key)
    if cache is None:
        raise ValueError("load() needs a cache folder; use load_rows() without one")
    folder = cache / "datasets" / f"{source.name}-{name[:16]}"
    problem = cache_problem(folder, hash_below=HASH_BELOW)
    if problem is None:
        return Loaded(open_file(folder / DATA_FILE), name, folder, True,
                      info=record_info(folder))
    if folder.exists() and log is not None:
        log(f"[data] the cache {folder} is damaged ({problem}); rebuilding")
    started = time.monotonic()
    publish(folder, key, lambda tmp: convert(source, tmp / DATA_FILE),
            info=lambda tmp: {"rows": _rows_in(tmp / DATA_FILE)})
    return Loaded(open_file(folder / DATA_FILE), name, folder, False,
                  time.monotonic() - started, record_info(folder))


def load_rows(source: Source, fingerprint: str = "", cache: Path | None = None) -> list[dict]:
    """The rows of ``source`` as Python dicts, through the same conversion and checks.

    Without a cache folder the Arrow file is written to a temporary folder and removed
    once read: what tokenizer training and tests use outside a stage.
    """
    if cache is not None:
        return load(source, fingerprint, cache).dataset.to_list()
    with tempfile.TemporaryDirectory(prefix="llm-recipe-data-") as tmp:
        target = Path(tmp) / DATA_FILE
        convert(source, target)
        dataset = open_file(target)
        rows = dataset.to_list()
        del dataset
    return rows


def open_file(path: Path) -> Any:
    """A memory-mapped ``datasets.Dataset`` of one Arrow stream file."""
    from datasets import Dataset

    return Dataset.from_file(str(path))


def _rows_in(path: Path) -> int:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().num_rows
