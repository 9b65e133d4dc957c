"""Checkpoints for resume: which one is the last *complete* one, and which is best.

The Hugging Face Trainer saves ``checkpoints/checkpoint-<step>/`` (model, optimizer,
scheduler, RNG states and the trainer state with the data position). A kill during a
save leaves a partial folder, so the folder's existence proves nothing. After each
save completes, :class:`CheckpointCallback` writes ``checkpoints/latest`` (and
``checkpoints/best``) atomically; those pointer files are the only thing resume trusts.
``best`` is the checkpoint with the lowest validation loss, or the latest one when the
stage has no validation data.

A pointer proves that a save completed, not that its files are still intact: a disk
error or a stray process can truncate them later. Each completed save also records its
files' sizes (``checkpoint-N/files.json``), and :func:`resume_candidates` checks a
checkpoint before it is resumed from (recorded sizes, then each file's own structure:
the safetensors header against the file's length, the CRCs of torch's zip archives,
JSON that parses), falling back to the newest intact one. Nothing is unpickled to do so.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from llm_recipe.compiler.status import CHECKPOINT_NAME, read_json, read_pointer_data
from llm_recipe.runtime.workspace import atomic_write_json

FILES = "files.json"
_OTHER_RANK_RNG = re.compile(r"^rng_state_[1-9][0-9]*\.pth$")

LATEST = "latest"
BEST = "best"


def write_pointer(checkpoints: Path, name: str, target: Path, **info: Any) -> None:
    atomic_write_json(checkpoints / name, {"checkpoint": target.name, **info})


def read_pointer(checkpoints: Path, name: str) -> Path | None:
    """The checkpoint folder a pointer names, if the pointer and the folder both exist."""
    data = read_pointer_data(checkpoints / name)
    if data is None:
        return None
    target = checkpoints / data["checkpoint"]
    return target if target.is_dir() else None


def pointer_step(checkpoints: Path, name: str = LATEST) -> int | None:
    data = read_pointer_data(checkpoints / name)
    return data.get("step") if data else None


def record_files(checkpoint: Path) -> None:
    """Write ``files.json`` (name -> size) for a checkpoint whose save just completed.

    Other ranks' RNG states are left out: rank 0 runs this callback and those ranks may
    still be writing them (their archives are still checked on resume).
    """
    sizes = {p.relative_to(checkpoint).as_posix(): p.stat().st_size
             for p in sorted(checkpoint.rglob("*"))
             if p.is_file() and p.name != FILES and not _OTHER_RANK_RNG.match(p.name)}
    atomic_write_json(checkpoint / FILES, sizes)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (naming the damaged file), or None.

    A complete save has ``files.json`` (written after it) or, from a Trainer,
    ``trainer_state.json``; stages that save their own checkpoints (rollout batches)
    write ``files.json`` with :func:`record_files`.
    """
    if not (checkpoint / FILES).is_file() and not (checkpoint / "trainer_state.json").is_file():
        return "trainer_state.json is missing"
    recorded = read_json(checkpoint / FILES)
    if isinstance(recorded, dict):
        for name, size in recorded.items():
            path = checkpoint / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size:,} bytes; the save wrote {size:,}"
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            problem = _file_problem(path)
            if problem:
                return f"{path.relative_to(checkpoint).as_posix()} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    """A structural check of one checkpoint file by its type; None when it looks whole."""
    suffix = path.suffix
    try:
        if suffix == ".safetensors":
            return _safetensors_problem(path)
        if suffix in (".pt", ".pth", ".bin"):
            if not zipfile.is_zipfile(path):
                return "is not a complete torch archive"
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            return f"is corrupt (member {bad} fails its CRC)" if bad else None
        if suffix == ".json":
            json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        return f"is unreadable ({type(exc).__name__})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """The header's tensor offsets must end exactly where the file ends."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "is truncated (no header)"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return "is truncated (header longer than the file)"
        header = json.loads(handle.read(length))
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"is truncated ({size:,} bytes; its header describes {expected:,})"
    return None


def resume_candidates(checkpoints: Path) -> list[Path]:
    """Checkpoints to try, newest first: the ``latest`` pointer, then older complete saves.

    Only folders that ``latest`` named or that hold a completed save's ``files.json``
    (written after the save finished) count; a folder a kill left half-written has none.
    """
    latest = read_pointer(checkpoints, LATEST)
    if latest is None:
        return []
    found = {latest}
    for folder in checkpoints.glob("checkpoint-*"):
        if (CHECKPOINT_NAME.match(folder.name) and folder.is_dir()
                and (folder / FILES).is_file() and _step_of(folder.name) is not None
                and _step_of(folder.name) < (_step_of(latest.name) or 0)):
            found.add(folder)
    return sorted(found, key=lambda p: _step_of(p.name) or 0, reverse=True)


def checkpoint_callback(checkpoints: Path) -> Any:
    """A transformers TrainerCallback that maintains the latest/best pointers."""
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            saved = checkpoints / f"checkpoint-{state.global_step}"
            if not (saved / "trainer_state.json").exists():
                return
            record_files(saved)
            write_pointer(checkpoints, LATEST, saved, step=state.global_step)
            best = state.best_model_checkpoint
            if best:
                write_pointer(checkpoints, BEST, Path(best), step=_step_of(best),
                              metric=state.best_metric)
            elif getattr(args.eval_strategy, "value", args.eval_strategy) == "no":
                # Nothing to compare by: the best model is the one trained longest.
                write_pointer(checkpoints, BEST, saved, step=state.global_step, metric=None)

    return CheckpointCallback()


def record_step(folder: Path) -> int:
    """The step a ``checkpoint-N`` folder was saved at (0 when the name says nothing)."""
    return _step_of(folder.name) or 0


def _step_of(path: str) -> int | None:
    tail = Path(path).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text("utf-8"))
