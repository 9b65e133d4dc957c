"""Fingerprints: what decides whether a stage's outputs are still valid.

A stage's fingerprint hashes its kind and kind version, its resolved config
without cosmetic fields, the compute settings that change the math (precision
and the number of processes, which sets the global batch) and its inputs'
fingerprints. An input is a stage (its fingerprint, so changes cascade), a
hub entry (id, revision and options: pin a commit to see upstream changes), a
local file or folder (content hashes) or an ``init``/``builtin`` spec.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_recipe.compiler.world import precision_mode, replicas

COSMETIC_STAGE_KEYS = frozenset({"description", "after", "compute", "tracking", "gate",
                                 "push_to_hub"})
"""Keys that do not change a stage's outputs (a gate is judged from the manifest's metrics;
pushing to the Hub copies the output elsewhere)."""
COSMETIC_TRAIN_KEYS = frozenset({"dataloader_workers"})
"""``train`` keys that do not change the numbers: worker processes only load the batches
the sampler chose, in the same order."""
CONFIG_FILES = ("deepspeed_config", "fsdp_config")
"""compute.distributed files whose path and content (``<key>_sha256``) change the run."""
COSMETIC_ENTRY_KEYS = frozenset({"description", "examples"})
_SMALL_FILE = 64 * 1024 * 1024


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of ``value``."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stage_fingerprint(
    kind: str, version: int, config: dict[str, Any], compute: dict[str, Any], inputs: dict[str, str]
) -> str:
    """The fingerprint of one stage; ``inputs`` maps input field paths to input fingerprints."""
    relevant = {k: v for k, v in config.items() if k not in COSMETIC_STAGE_KEYS}
    if isinstance(relevant.get("train"), dict):
        relevant["train"] = {k: v for k, v in relevant["train"].items()
                             if k not in COSMETIC_TRAIN_KEYS}
    math: dict[str, Any] = {"precision": precision_mode(compute), "processes": replicas(compute)}
    distributed = compute.get("distributed") or {}
    files = {key: {"path": distributed[key], "sha256": distributed.get(f"{key}_sha256")}
             for key in CONFIG_FILES if key in distributed}
    if files:  # only then: the fingerprints of stages without one stay what they were
        math["files"] = files
    return digest(
        {"kind": kind, "version": version, "config": relevant, "compute": math, "inputs": inputs}
    )


def entry_fingerprint(entry: dict[str, Any], base_dir: Path) -> str:
    """The fingerprint of a models: or datasets: entry; local paths hash their content."""
    relevant = {k: v for k, v in entry.items() if k not in COSMETIC_ENTRY_KEYS}
    if "path" in entry:
        relevant["content"] = path_digest(base_dir / entry["path"])
        relevant.pop("path")
    return digest(relevant)


def path_digest(path: Path) -> str:
    """Content hash of a file, or of every file in a folder (names, sizes, contents).

    Files over 64 MiB are hashed by size and modification time instead of content
    so planning stays fast next to multi-gigabyte weights.
    """
    if path.is_file():
        return _file_digest(path)
    if path.is_dir():
        parts = [
            (str(p.relative_to(path)), _file_digest(p))
            for p in sorted(path.rglob("*"))
            if p.is_file()
        ]
        return digest(parts)
    return "missing"


_memo: dict[tuple[str, int, int, int], str] | None = None


@contextmanager
def shared_file_digests() -> Iterator[None]:
    """Hash each local file once while several plans of one recipe are built.

    A ``matrix`` plans its recipe once per variant (up to 256), and every plan hashes
    the same local datasets and models; inside this block a file whose path, size,
    modification time and inode are unchanged is not read again. Outside it nothing
    is remembered, so a long-lived process never trusts an old hash.
    """
    global _memo
    outer = _memo
    _memo = {} if outer is None else outer
    try:
        yield
    finally:
        _memo = outer


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > _SMALL_FILE:
        return digest({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    if _memo is None:
        return file_sha256(path)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _memo:
        _memo[key] = file_sha256(path)
    return _memo[key]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_table(path: Path, base: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {size, sha256}}`` for an output file or every file in an output folder.

    Names are relative to ``base``, by default the output's parent folder
    (``model/config.json``, ``report.json``), so one table describes a file or a folder
    the same way. This is
    what a manifest records of a stage's output: sizes for the cheap freshness check
    on every plan, sha256 for the full check before a downstream stage consumes it.
    Unlike :func:`path_digest`, large files are hashed by content too.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    base = path.parent if base is None else base
    return {
        p.relative_to(base).as_posix(): {"size": p.stat().st_size,
                                                "sha256": file_sha256(p)}
        for p in files
    }
