"""Caches under ``<workspace>/.cache``: keyed by content, published whole, checked on use.

A cache entry is a folder named by a key that hashes the content of everything that
determines it (for a trained tokenizer: the tokenizer spec, the training data's content
fingerprint and the tokenizers version; for a dataset converted to Arrow or tokenized:
see :mod:`llm_recipe.runtime.data`), so a changed input is a different entry, never a
stale hit. An entry appears in one rename (:func:`publish`), with ``cache.json``
recording each file's size and sha256 and the sha256 of that table itself;
:func:`cache_problem` checks them before the entry is used, so a damaged entry is named
and rebuilt instead of trusted. A build that is killed leaves a temporary folder
(``.<entry>.tmp-<pid>-<ns>``), which is never read as an entry and is swept by the next
build once its writer is gone (:func:`sweep_stale`).

Small entries (tokenizers) are hashed whole on every use. Data entries can be GiBs, and
hashing them on every use would cost as much as rebuilding: files above
``hash_below`` bytes are checked by size only (a truncated or partly written file has
the wrong size; a flipped bit in place is not caught), smaller files and the record
itself by sha256.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import digest, file_sha256, file_table
from llm_recipe.compiler.status import read_json
from llm_recipe.runtime.workspace import atomic_dir, atomic_write_json

RECORD = "cache.json"
STALE_AFTER_S = 3600.0
"""A temporary build folder whose writer is not alive here is swept after this long (a
writer on another host of a shared disk is not visible to ``kill 0``)."""
_TEMPORARY = re.compile(r"^\.(?P<entry>.+)\.tmp-(?P<pid>\d+)-\d+$")


def cache_problem(folder: Path, *, hash_below: int | None = None) -> str | None:
    """Why the entry at ``folder`` cannot be used (missing, unrecorded, damaged), or None.

    ``hash_below``: files of that many bytes or more are checked by size only (None:
    every file is hashed).
    """
    if not folder.is_dir():
        return "it does not exist"
    record = read_json(folder / RECORD)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{RECORD} is missing or unreadable (an interrupted or older writer)"
    recorded = record.get("files_sha256")
    if recorded is not None and recorded != digest(files):
        return f"{RECORD} does not match its own checksum (edited or torn)"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if not isinstance(expected, dict) or size != expected.get("size"):
            return f"{name} has {size:,} bytes, not the recorded size"
        if hash_below is not None and size >= hash_below:
            continue
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def publish(folder: Path, key: dict[str, Any], write: Callable[[Path], None],
            info: Callable[[Path], dict[str, Any]] | None = None) -> None:
    """Build an entry with ``write(tmp)`` and move it into place with its record.

    ``key`` (what the entry's name hashes) is stored in the record too, so a reader can
    see what an entry was built from; ``info(tmp)`` adds what the build found out (row
    counts, timings) under ``info``.
    """
    sweep_stale(folder.parent)
    try:
        with atomic_dir(folder) as tmp:
            write(tmp)
            files = file_table(tmp, base=tmp)
            record: dict[str, Any] = {"key": key, "files": files,
                                      "files_sha256": digest(files)}
            if info is not None:
                record["info"] = info(tmp)
            atomic_write_json(tmp / RECORD, record)
    except FileNotFoundError:
        # Two writers of the same entry (ranks of one stage) moved it at the same moment:
        # the other one's entry is in place, built from the same key.
        if not (folder / RECORD).is_file():
            raise


def record_info(folder: Path) -> dict[str, Any]:
    """What :func:`publish` recorded under ``info`` for an entry ({} when nothing)."""
    record = read_json(folder / RECORD)
    info = record.get("info") if isinstance(record, dict) else None
    return info if isinstance(info, dict) else {}


def sweep_stale(parent: Path) -> None:
    """Remove temporary build folders left by writers that are gone.

    A temporary folder is removed when its writer's pid is not alive on this host and it
    has not changed for :data:`STALE_AFTER_S`: a concurrent build (another rank, another
    run) is never removed under its writer.
    """
    if not parent.is_dir() or parent.is_symlink():
        return
    now = time.time()
    for entry in parent.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        try:
            if now - entry.lstat().st_mtime < STALE_AFTER_S:
                continue
        except OSError:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
