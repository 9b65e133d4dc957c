"""Checkpoints for resume: which one is the last *complete* one, and which is best.

The Hugging Face Trainer saves ``checkpoints/checkpoint-<step>/`` (model, optimizer,
scheduler, RNG states and the trainer state with the data position). A kill during a
save leaves a partial folder, so the folder's existence proves nothing. After each
save completes, :class:`CheckpointCallback` writes ``checkpoints/latest`` (and
``checkpoints/best``) atomically; those pointer files are the only thing resume trusts.
``best`` is the checkpoint with the lowest validation loss, or the latest one when the
stage has no validation data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_recipe.compiler.status import read_json
from llm_recipe.runtime.workspace import atomic_write_json

LATEST = "latest"
BEST = "best"


def write_pointer(checkpoints: Path, name: str, target: Path, **info: Any) -> None:
    atomic_write_json(checkpoints / name, {"checkpoint": target.name, **info})


def read_pointer(checkpoints: Path, name: str) -> Path | None:
    """The checkpoint folder a pointer names, if the pointer and the folder both exist."""
    data = read_json(checkpoints / name)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoint"), str):
        return None
    target = checkpoints / data["checkpoint"]
    return target if target.is_dir() else None


def pointer_step(checkpoints: Path, name: str = LATEST) -> int | None:
    data = read_json(checkpoints / name)
    return data.get("step") if isinstance(data, dict) else None


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
            write_pointer(checkpoints, LATEST, saved, step=state.global_step)
            best = state.best_model_checkpoint
            if best:
                write_pointer(checkpoints, BEST, Path(best), step=_step_of(best),
                              metric=state.best_metric)
            elif getattr(args.eval_strategy, "value", args.eval_strategy) == "no":
                # Nothing to compare by: the best model is the one trained longest.
                write_pointer(checkpoints, BEST, saved, step=state.global_step, metric=None)

    return CheckpointCallback()


def _step_of(path: str) -> int | None:
    tail = Path(path).name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text("utf-8"))
