"""Bounded reading of user files: at most MAX_BYTES, and never a wait without end.

A recipe path is whatever the user typed, so it can name something that is not a
regular file: ``/dev/zero``, ``/dev/stdin`` fed by ``yes`` or a ``/proc`` file reports a
size of 0 and never ends, and a FIFO with no writer blocks ``open`` and ``read``
forever. ``stat`` cannot be trusted to say how big the input is, so the limit is
enforced on the bytes actually *read*: one byte over :data:`MAX_BYTES` is an error.

Files are opened non-blocking, so opening a FIFO that no writer has opened does not
hang. Regular files are read directly; pipes, FIFOs and character devices are read
as data arrives, each read waiting in ``poll()`` for at most :data:`READ_TIMEOUT`
seconds, so piped input (``cat recipe.yaml | recipe plan /dev/stdin``) works while a
pipe with no writer, or one that stops sending, is a clear error instead of a hang.
"""

from __future__ import annotations

import os
import select
import stat
from pathlib import Path

from llm_recipe.errors import Location, RecipeError

MAX_BYTES = 1_000_000
READ_TIMEOUT = 10.0
"""Seconds to wait for data from a pipe or device before giving up (tests lower it)."""


def read_bytes(path: Path, name: str) -> bytes:
    """At most :data:`MAX_BYTES` of ``path``, or a RecipeError; never blocks forever.

    The file is opened non-blocking, so a FIFO without a writer does not hang in
    ``open``; pipes and character devices are then read as data arrives, waiting at
    most :data:`READ_TIMEOUT` seconds for each chunk. Piped input
    (``cat recipe.yaml | recipe plan /dev/stdin``) works; an endless one is cut off
    at ``MAX_BYTES + 1`` bytes and refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise RecipeError(
            f"no such file: {name}", hint="check the path; recipes usually live in recipes/"
        ) from None
    except IsADirectoryError:
        raise RecipeError(f"{name} is a directory, not a recipe file") from None
    except OSError as exc:
        raise RecipeError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise RecipeError(f"{name} is a directory, not a recipe file")
        streaming = not stat.S_ISREG(info.st_mode)
        try:
            raw = _read_stream(fd, name) if streaming else _read_regular(fd)
        except OSError as exc:
            raise RecipeError(f"cannot read {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        if streaming:
            message = f"{name} gives more than {MAX_BYTES:,} bytes, over the limit"
        elif info.st_size > MAX_BYTES:
            message = f"recipe file is {info.st_size:,} bytes, over the {MAX_BYTES:,}-byte limit"
        else:  # grew while being read
            message = f"recipe file is over the {MAX_BYTES:,}-byte limit"
        raise RecipeError(
            message,
            location=Location(name, 1, 1),
            expected=f"at most {MAX_BYTES:,} bytes",
            hint="a recipe describes a pipeline; keep data in datasets, not inline",
        )
    return raw


def _read_regular(fd: int) -> bytes:
    """Up to ``MAX_BYTES + 1`` bytes of a regular file (one more tells it is too big)."""
    chunks: list[bytes] = []
    left = MAX_BYTES + 1
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_stream(fd: int, name: str) -> bytes:
    """Up to ``MAX_BYTES + 1`` bytes of a pipe or device, waiting for data with a timeout.

    A non-blocking read of a FIFO that no writer has opened yet returns b"" (EOF), so
    each read waits for poll() first: poll reports neither data nor hang-up until a
    writer has come and gone, which is what the timeout is for.
    """
    poller = select.poll() if hasattr(select, "poll") else None
    if poller is not None:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    chunks: list[bytes] = []
    left = MAX_BYTES + 1
    while left > 0:
        if poller is not None and not poller.poll(READ_TIMEOUT * 1000):
            if not chunks:
                raise RecipeError(
                    f"nothing to read from {name}: a pipe with no writer?",
                    location=Location(name, 1, 1),
                    expected="a recipe file, or YAML piped in (cat recipe.yaml | recipe ...)",
                    hint=f"no data arrived within {READ_TIMEOUT:g} seconds; "
                    "pass the recipe file itself",
                )
            raise RecipeError(
                f"{name} stopped sending data before its end",
                location=Location(name, 1, 1),
                expected="a writer that finishes and closes the pipe",
                hint=f"no data arrived for {READ_TIMEOUT:g} seconds; pass the recipe file itself",
            )
        try:
            chunk = os.read(fd, min(left, 1 << 16))
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
