"""The workspace on disk: atomic writes and the manifest as completion marker.

Nothing half-written is ever taken as complete: files and folders are written under a
temporary name in the same directory and renamed into place, and a stage's
``manifest.json`` is written last. A crash leaves at worst a stray temporary, which
the next run ignores and overwrites.

Stage locks live in :mod:`llm_recipe.runtime.locks`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        # Name the file the caller meant (a full disk reports neither otherwise).
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target`` in one rename.

    On an exception the temporary folder is removed and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _tmp_name(target) if target.exists() else None
    if old is not None:
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_manifest(stage_dir: Path, manifest: dict[str, Any]) -> None:
    """The completion marker: written last, atomically."""
    atomic_write_json(stage_dir / MANIFEST, manifest)


def clear_manifest(stage_dir: Path) -> None:
    """Before a stage is (re)written: its old outputs no longer vouch for anything."""
    (stage_dir / MANIFEST).unlink(missing_ok=True)

