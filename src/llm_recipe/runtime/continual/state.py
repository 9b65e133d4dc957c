"""Checkpoints of a continual run, for exact resume after a kill.

The ledger holds the patches that matter to people; a checkpoint holds what a resumed run
needs besides them, in ``checkpoints/checkpoint-<global step>/``:

- ``patch.safetensors``: the student patch (the ledger may not have this exact state);
- ``optimizer.pt``: the phase's optimizer state dict; ``rng_state.pth``: torch's RNG
  states (tensors only, read back with ``torch.load(weights_only=True)``);
- ``continual_state.json`` (:class:`Progress`): where the run stands.

The folder is written under a temporary name and renamed into place, then
``files.json`` is recorded and the ``latest`` pointer moved
(:func:`llm_recipe.runtime.checkpoints.write_pointer`), which is what the executor's resume
machinery reads; ``keep_checkpoints`` newest folders are kept. The batches of a step are
a function of the seed and the step (:mod:`.data`), so no data position is saved.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from llm_recipe.runtime.checkpoints import LATEST, record_files, record_step, write_pointer
from llm_recipe.runtime.workspace import atomic_dir

STATE = "continual_state.json"
PATCH = "patch.safetensors"


@dataclass
class Progress:
    """Where a run stands after global step ``step``.

    ``phase_idx``/``phase_step``: the phase being trained and the steps of it done
    (``phase_idx == len(phases)``: every phase is committed). ``good``: the entry the
    current phase rolls back to (``{name, step, metrics}``: its start or last good
    snapshot). ``teacher``: the ledger entry of the teacher patch (None: the base).
    ``lr_mult``/``kl_mult``: the rollback responses applied in this phase so far.
    ``ledger_count``: index rows written. ``pending``: the sums of the metrics since the
    last log row. ``last``: the last log row. ``rollbacks``: rollbacks so far.
    """

    step: int = 0
    phase_idx: int = 0
    phase_step: int = 0
    good: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None
    lr_mult: float = 1.0
    kl_mult: float = 1.0
    ledger_count: int = 0
    rollbacks: int = 0
    pending: dict[str, Any] = field(default_factory=lambda: {"sums": {}, "count": 0})
    last: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        return cls(**data)


def save(checkpoints: Path, progress: Progress, patch: dict[str, torch.Tensor],
         optimizer: Any, keep: int) -> Path:
    """Write ``checkpoint-<step>`` whole, then files.json and the ``latest`` pointer;
    keep the ``keep`` newest step folders."""
    from safetensors.torch import save_file

    folder = checkpoints / f"checkpoint-{progress.step}"
    with atomic_dir(folder) as tmp:
        save_file(patch, str(tmp / PATCH))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        torch.save(rng, tmp / "rng_state.pth")
        (tmp / STATE).write_text(json.dumps(progress.to_json(), indent=2, sort_keys=True)
                                 + "\n", "utf-8")
        record_files(tmp)
    write_pointer(checkpoints, LATEST, folder, step=progress.step)
    saved = sorted(checkpoints.glob("checkpoint-*"), key=record_step, reverse=True)
    for old in saved[max(1, keep):]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def read(checkpoint: Path) -> tuple[Progress, dict[str, torch.Tensor]]:
    """(progress, student patch tensors) of a checkpoint."""
    from safetensors.torch import load_file

    data = json.loads((checkpoint / STATE).read_text("utf-8"))
    return Progress.from_json(data), load_file(str(checkpoint / PATCH))


def restore_optimizer(checkpoint: Path, optimizer: Any, device: Any) -> None:
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device,
                                         weights_only=True))


def restore_rng(checkpoint: Path) -> None:
    states = torch.load(checkpoint / "rng_state.pth", map_location="cpu", weights_only=True)
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"]))
