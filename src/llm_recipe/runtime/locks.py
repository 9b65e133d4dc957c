"""Stage locks: one writer per stage directory, on one machine or across hosts.

A stage directory has a lock folder (``.locks/``). A run that wants the stage
*announces* itself with a lease file of its own, then *checks* the others:

1. create ``.locks/<pid>-<random>.lease`` with ``O_EXCL`` (a name nobody else uses);
2. take ``flock`` on it (per open file description: the kernel drops it when the
   holder dies, whatever its pid or host name, containers included);
3. write the record ``{pid, host, boot_id, started, lease_s, flock}`` in place;
4. judge every other lease in the folder: a live one means back off (remove our
   lease, wait a little at random, try again a few times, then refuse naming it);
   a dead one is removed;
5. check that our own lease still exists and is still our inode (someone may have
   judged it dead between steps 1 and 2), else start over.

Two claimants that see each other both back off; one that checked before the other
created its lease is seen by the other. So at most one passes, on one kernel or
between hosts where ``flock`` is not coherent (NFS, Lustre without ``-o flock``).

A lease is judged by its record's ``boot_id`` (``/proc/sys/kernel/random/boot_id``,
shared by containers with their host; the host name where it cannot be read):

- same kernel: by ``flock`` alone. If we can take it, the holder is gone (dead at
  once, even a container's pid 1 with another host name), and we remove the lease
  while holding its flock.
- another kernel: by heartbeat. The holder's daemon thread touches its lease's mtime
  (``os.utime`` on the open fd, never replacing the file, which would drop the flock)
  every ``heartbeat_s``; a lease whose mtime is older than the ``lease_s`` it records
  is dead. A flock that someone holds also counts as live (coherent network locks).
- no readable record (its writer died or is between steps 1 and 3): by mtime, with
  the default lease.

Cross-host leases assume clocks agree to well under ``lease_s`` (NTP) and a shared
file system whose directory listings show new files to other hosts (Lustre; NFS's
close-to-open revalidation). A holder paused longer than its lease loses it; the
heartbeat thread notices and sets :attr:`StageLock.lost`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import random
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError

LOCK_DIR = ".locks"
LEASE_SUFFIX = ".lease"
LEASE_S = 120.0
HEARTBEAT_S = 10.0
ATTEMPTS = 5
BACKOFF_S = 0.02
_RECORD_MAX = 64 * 1024
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# Leases this process holds (path -> record). A judge in this process never opens
# them: on NFS, flock is emulated with POSIX locks, which a process loses when it
# closes *any* descriptor of the file, so judging our own lease would release it.
_HELD: dict[str, dict[str, Any]] = {}
_HELD_FDS: dict[str, int] = {}
_HELD_GUARD = threading.Lock()


class StageLockedError(RecipeError):
    """Another live process is writing this stage."""


@functools.cache
def boot_id() -> str:
    """This kernel's boot id (containers share their host's); the host name if unreadable."""
    try:
        value = _BOOT_ID.read_text("ascii").strip()
    except (OSError, ValueError):
        value = ""
    return value or f"host:{socket.gethostname()}"


def _forget_after_fork() -> None:
    # A forked child (a dataloader worker) must not keep the stage locked after its
    # parent died, nor remove the parent's lease: close its copies, forget them.
    for fd in _HELD_FDS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()
    _HELD_FDS.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _flock(fd: int) -> bool | None:
    """Try an exclusive flock, not waiting: True taken, False held elsewhere, None unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None
    return True


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, _RECORD_MAX, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("boot_id"), str) else None


def _lease_s(record: dict[str, Any] | None) -> float:
    try:
        value = float((record or {}).get("lease_s", LEASE_S))
    except (TypeError, ValueError):
        return LEASE_S
    return value if value > 0 else LEASE_S


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def judge(path: Path, *, remove: bool = False) -> tuple[bool, dict[str, Any] | None]:
    """Whether the lease at ``path`` is live, and its record; a dead one is removed if asked.

    A lease that vanished while we looked is dead (``False, None``).
    """
    with _HELD_GUARD:
        own = _HELD.get(str(path))
    if own is not None:
        return True, own
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # flock by heartbeat only
        except FileNotFoundError:
            return False, None
    try:
        locked = _flock(fd)
        record = _read_record(fd)
        if locked is False:
            return True, record
        if (record is not None and record["boot_id"] == boot_id() and locked
                and record.get("flock", True)):
            live = False  # same kernel and nobody holds its flock: the holder is gone
        else:
            age = time.time() - os.fstat(fd).st_mtime
            live = age <= _lease_s(record)
        if not live and remove:
            _unlink(path)  # while holding its flock, where we have it
        return live, record
    finally:
        os.close(fd)


class StageLock:
    """An exclusive lock on one stage directory (use as a context manager)."""

    def __init__(self, stage_dir: Path, *, lease_s: float = LEASE_S,
                 heartbeat_s: float | None = None) -> None:
        self.stage_dir = Path(stage_dir)
        self.folder = self.stage_dir / LOCK_DIR
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s else min(HEARTBEAT_S, lease_s / 6)
        self.held = False
        self.lost = threading.Event()
        self.path: Path | None = None
        self._fd: int | None = None
        self._pid = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def holder(self) -> dict[str, Any] | None:
        """The live holder's record (with ``lease``, its file name), or None."""
        for path in self._leases():
            live, record = judge(path)
            if live:
                return {**(record or {}), "lease": path.name}
        return None

    def acquire(self) -> None:
        seen: dict[str, Any] | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF_S * attempt * random.uniform(0.2, 1.0))
            found = self._try_once()
            if found is None:
                return
            if found:
                seen = found
        raise self._locked(self.holder() or seen)

    def _try_once(self) -> dict[str, Any] | None:
        """None when we hold the lock, else the live lease seen ({} for none named)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{os.getpid()}-{secrets.token_hex(8)}{LEASE_SUFFIX}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o644)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(),
                  "started": datetime.now(UTC).isoformat(timespec="seconds"),
                  "lease_s": self.lease_s}
        with _HELD_GUARD:
            _HELD[str(path)] = record
            _HELD_FDS[str(path)] = fd
        try:
            locked = None
            for _ in range(20):  # a judge holds our flock for microseconds at most
                locked = _flock(fd)
                if locked is not False:
                    break
                time.sleep(0.001)
            if locked is False:
                self._drop(path, fd)
                return {}
            record["flock"] = locked is True
            data = json.dumps(record).encode("utf-8")
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            for other in self._leases():
                if other == path:
                    continue
                live, found = judge(other, remove=True)
                if live:
                    self._drop(path, fd)
                    return {**(found or {}), "lease": other.name}
            if not self._still_mine(path, fd):
                self._drop(path, fd)
                return {}
        except BaseException:
            self._drop(path, fd)
            raise
        self.path, self._fd, self._pid, self.held = path, fd, os.getpid(), True
        self.lost.clear()
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {path.name}",
                                      daemon=True)
        self._beat.start()
        return None

    def _leases(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []
        return [self.folder / name for name in names if name.endswith(LEASE_SUFFIX)]

    @staticmethod
    def _still_mine(path: Path, fd: int) -> bool:
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _drop(path: Path, fd: int) -> None:
        if StageLock._still_mine(path, fd):
            _unlink(path)
        with _HELD_GUARD:
            _HELD.pop(str(path), None)
            _HELD_FDS.pop(str(path), None)
        os.close(fd)

    def _heartbeat(self) -> None:
        fd, path = self._fd, self.path
        assert fd is not None and path is not None
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(fd if os.utime in os.supports_fd else path)
            if not self._still_mine(path, fd):
                self.lost.set()  # judged dead (paused past its lease?): someone may write now

    def _locked(self, holder: dict[str, Any] | None) -> StageLockedError:
        holder = holder or {}
        hint = "wait for it to finish: its lock ends with that process"
        if holder.get("boot_id") != boot_id():
            hint += (f", or {_lease_s(holder):.0f}s after the last heartbeat of its lease "
                     f"{self.folder / str(holder.get('lease', ''))} if that machine is gone")
        return StageLockedError(
            f"stage {self.stage_dir.name} is being written by another run "
            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('started', '?')})",
            hint=hint,
        )

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        path, fd = self.path, self._fd
        self.path = self._fd = None
        if path is None or fd is None or os.getpid() != self._pid:
            return
        self._drop(path, fd)

    def __enter__(self) -> StageLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
