"""Tokenization through ``datasets.map``: batched, in worker processes, cached by content.

What a training stage feeds its trainer is a function of the rows, the tokenizer and a
few settings, so it is built once and reused: a re-run, a forced re-run or another stage
over the same data and tokenizer finds it under
``<workspace>/.cache/tokenized/<kind>-<key>/`` (:func:`cached`). The key hashes the
data's content key (:func:`.arrow.dataset_key`, plus the validation split's part), the
tokenizer's content (:func:`tokenizer_digest`), what renders rows into text (format,
prompt template, loss masking), ``max_seq_len``, packing and the versions of the code
that does it. Entries are published in one rename like every cache entry, so a kill
mid-build leaves none that is trusted. ``train.log`` says which happened::

    [data] tokenized 1,234 rows into 456 blocks of 512 (cache ab12cd34: built in 3.2 s)
    [data] tokenized 1,234 rows into 456 blocks of 512 (cache ab12cd34: reused)

The shapes built on this machinery: pretrain blocks (:mod:`.blocks`) and sft examples
(:mod:`.examples`); the tokenized head of a stream (:func:`.inputs.first_blocks`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.runtime.cache import cache_problem, publish, record_info
from llm_recipe.runtime.data.arrow import DATA_FILE, HASH_BELOW, open_file

TOKENIZE_VERSION = 1
"""Bump when what tokenization builds changes: old cache entries then miss."""
MAP_BATCH = 1000
"""Rows per ``datasets.map`` batch: one tokenizer call, one Arrow write."""
PARALLEL_ROWS = 10_000
"""Below this many rows a map runs in the stage's process: starting worker processes
(about 2 s to import datasets and the tokenizer) costs more than they save."""


def default_workers() -> int:
    """``compute.data_workers`` when the recipe leaves it out: min(4, CPUs)."""
    return max(1, min(4, os.cpu_count() or 1))


def workers_of(compute: dict[str, Any]) -> int:
    """Worker processes for tokenization (``compute.data_workers``, else min(4, CPUs))."""
    value = compute.get("data_workers")
    return int(value) if value else default_workers()


def tokenizer_digest(tokenizer: Any) -> str:
    """A content hash of everything in a tokenizer that changes the ids it produces.

    A fast tokenizer's whole ``tokenizer.json`` (vocabulary, merges, normalizer,
    pre-tokenizer, post-processor, added tokens), its special tokens, chat template and
    the flags that add tokens; a slow one is saved and its files hashed. Where the
    tokenizer came from (trained here, the hub, a stage's output) does not matter, only
    what it is.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in (tokenizer.special_tokens_map or {}).items()},
        "chat_template": _text(getattr(tokenizer, "chat_template", None)),
        "flags": {k: _text(getattr(tokenizer, k, None)) for k in (
            "add_bos_token", "add_eos_token", "add_prefix_space", "padding_side",
            "truncation_side", "clean_up_tokenization_spaces")},
    }
    if backend is not None:
        parts["tokenizer.json"] = hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
    else:
        import tempfile

        from llm_recipe.compiler.fingerprint import file_table

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            parts["files"] = {k: v["sha256"] for k, v in file_table(Path(tmp), Path(tmp)).items()}
    return digest(parts)


def _text(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def versions() -> dict[str, str]:
    """The library versions a tokenized entry depends on."""
    out = {}
    for name in ("datasets", "tokenizers", "transformers", "trl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "none"
    return out


# ---------------------------------------------------------------------- the cache


def cached(cache: Path | None, kind: str, key: dict[str, Any],
           build: Callable[[Path], dict[str, Any]], log: Callable[[str], None],
           describe: Callable[[dict[str, Any]], str]) -> tuple[Any, dict[str, Any]]:
    """(dataset, info) for ``key``: the cached entry, or ``build(tmp)`` published first.

    ``build`` writes ``tmp/data.arrow`` and returns what to record (row and token counts);
    ``describe(info)`` is the start of the ``[data]`` line. Without a cache folder the
    entry is built in a temporary folder each time (tests, one-off tools).
    """
    key = {**key, "tokenize": TOKENIZE_VERSION, "versions": versions()}
    name = digest(key)
    short = name[:8]
    if cache is None:
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="llm-recipe-tokenized-"))
        info = build(tmp)
        return open_file(tmp / DATA_FILE), info
    folder = cache / "tokenized" / f"{kind}-{name[:16]}"
    problem = cache_problem(folder, hash_below=HASH_BELOW)
    if problem is None:
        info = record_info(folder)
        log(f"[data] {describe(info)} (cache {short}: reused)")
        return open_file(folder / DATA_FILE), info
    if folder.exists():
        log(f"[data] the cache {folder} is damaged ({problem}); rebuilding")
    started = time.monotonic()
    found: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        found.update(build(tmp))

    publish(folder, key, write, info=lambda _tmp: found)
    log(f"[data] {describe(found)} (cache {short}: built in "
        f"{time.monotonic() - started:.1f} s)")
    return open_file(folder / DATA_FILE), found


@contextmanager
def quiet() -> Iterator[None]:
    """datasets' progress bars off: the stage's log says what was built."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def map_batched(dataset: Any, function: Callable, tmp: Path, name: str, workers: int,
         fingerprint: str, **kwargs: Any) -> Any:
    """``dataset.map`` batched over ``workers`` processes, its files written under ``tmp``.

    Each worker tokenizes on one thread (``TOKENIZERS_PARALLELISM=false``):
    ``data_workers`` processes on as many cores, not processes x Rust threads fighting
    over them. Workers are spawned, not forked: a fork of a stage process carries torch
    and the model (hundreds of MB each worker would hold, shared but counted in every
    RSS), a spawned worker imports only datasets, pyarrow and the tokenizer.
    """
    parallel = workers > 1 and len(dataset) >= max(PARALLEL_ROWS, 2 * MAP_BATCH)
    with quiet(), _environment("TOKENIZERS_PARALLELISM", "false" if parallel else None), \
            _spawned(parallel):
        return dataset.map(
            function, batched=True, batch_size=MAP_BATCH,
            num_proc=workers if parallel else None,
            cache_file_name=str(tmp / f"{name}.arrow"), load_from_cache_file=False,
            new_fingerprint=fingerprint, **kwargs)


@contextmanager
def _spawned(parallel: bool) -> Iterator[None]:
    """datasets' worker pool (``multiprocess``) started with spawn for the block."""
    if not parallel:
        yield
        return
    import multiprocess

    before = multiprocess.get_start_method(allow_none=True)
    multiprocess.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocess.set_start_method(before, force=True)


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (nothing when value is None)."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def drop_files(tmp: Path, name: str) -> None:
    """Remove a map's files (``name.arrow`` or its per-process shards) from the entry."""
    for path in glob.glob(str(tmp / f"{glob.escape(name)}*.arrow")):
        os.unlink(path)


def copy_to(dataset: Any, target: Path) -> int:
    """Write a dataset's rows (through its indices) as one Arrow stream file."""
    import pyarrow as pa

    writer = None
    rows = 0
    try:
        for start in range(0, len(dataset), 65_536):
            table = dataset.with_format("arrow")[start:start + 65_536]
            for batch in table.to_batches():
                if writer is None:
                    writer = pa.ipc.new_stream(str(target), batch.schema)
                writer.write_batch(batch)
                rows += batch.num_rows
        if writer is None:
            schema = dataset.features.arrow_schema
            writer = pa.ipc.new_stream(str(target), schema)
    finally:
        if writer is not None:
            writer.close()
    return rows
