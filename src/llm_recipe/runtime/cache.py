"""Caches under ``<workspace>/.cache``: keyed by content, published whole, checked on use.

A cache entry is a folder named by a key that hashes the content of everything that
determines it (for a trained tokenizer: the tokenizer spec, the training data's content
fingerprint and the tokenizers version), so a changed input is a different entry, never
a stale hit. An entry appears in one rename (:func:`publish`), with ``cache.json``
recording each file's size and sha256; :func:`cache_problem` checks them before the
entry is used, so a damaged entry is named and rebuilt instead of trusted. Entries are
small next to models (tokenizers now; tokenized datasets later), so hashing them on
every use is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_recipe.compiler.fingerprint import file_sha256, file_table
from llm_recipe.compiler.status import read_json
from llm_recipe.runtime.workspace import atomic_dir, atomic_write_json

RECORD = "cache.json"


def cache_problem(folder: Path) -> str | None:
    """Why the entry at ``folder`` cannot be used (missing, unrecorded, damaged), or None."""
    if not folder.is_dir():
        return "it does not exist"
    record = read_json(folder / RECORD)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{RECORD} is missing or unreadable (an interrupted or older writer)"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(expected, dict) or path.stat().st_size != expected.get("size"):
            return f"{name} has {path.stat().st_size:,} bytes, not the recorded size"
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def publish(folder: Path, key: dict[str, Any], write: Callable[[Path], None]) -> None:
    """Build an entry with ``write(tmp)`` and move it into place with its record.

    ``key`` (what the entry's name hashes) is stored in the record too, so a reader can
    see what an entry was built from.
    """
    with atomic_dir(folder) as tmp:
        write(tmp)
        atomic_write_json(tmp / RECORD, {"key": key, "files": file_table(tmp, base=tmp)})
