"""The workspace on disk: atomic writes, the manifest as completion marker, stage locks.

Nothing half-written is ever taken as complete: files and folders are written under a
temporary name in the same directory and renamed into place, and a stage's
``manifest.json`` is written last. A crash leaves at worst a stray temporary, which
the next run ignores and overwrites.

A lock file per stage directory stops two ``recipe run`` processes from writing the
same stage. It records pid, host and start time; a lock left by a dead process on this
host is taken over, anything else is reported with its holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_recipe.compiler.status import read_json
from llm_recipe.errors import RecipeError

LOCK_FILE = ".lock"
MANIFEST = "manifest.json"


class StageLockedError(RecipeError):
    """Another live process is writing this stage."""


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageLock:
    """An exclusive, stale-aware lock on one stage directory (use as a context manager)."""

    def __init__(self, stage_dir: Path) -> None:
        self.path = stage_dir / LOCK_FILE
        self.held = False

    def holder(self) -> dict[str, Any] | None:
        data = read_json(self.path)
        return data if isinstance(data, dict) else None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(UTC).isoformat(timespec="seconds")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_if_stale():
                    continue
                raise self._locked() from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise self._locked()

    def _take_over_if_stale(self) -> bool:
        holder = self.holder()
        if holder is None:
            # Torn or empty lock file: the writer died between create and write.
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0
            if age < 5:
                return False
        elif holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", 0))):
            return False
        self.path.unlink(missing_ok=True)
        return True

    def _locked(self) -> StageLockedError:
        holder = self.holder() or {}
        return StageLockedError(
            f"stage {self.path.parent.name} is being written by another run "
            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})",
            hint="wait for it to finish; if that process is gone from another host, "
            f"delete {self.path}",
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
