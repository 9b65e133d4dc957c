"""The ledger: patch-only snapshots of a continual stage, ``<stage dir>/ledger/``.

Entry names follow the seed, with the phase's index (three digits) and name::

    000_wikitext_start.safetensors                  the patch when phase 0 starts
    000_wikitext_good_step000001000.safetensors     a probe pass (global step, 9 digits)
    000_wikitext_rollback_step000001234.safetensors a regression: the patch rolled back to
    000_wikitext_commit.safetensors                 the patch at the end of the phase

An entry is one safetensors file holding only the patch's tensors; its header's
metadata (strings) says ``format``, ``type`` (start/good/rollback/commit),
``phase_idx``, ``phase``, ``global_step``, ``metrics`` (JSON: the probe losses of the
patch it holds; for a rollback, also the regressed ones) and ``info`` (JSON: e.g. the
entry a rollback restored). Nothing is pickled.

``index.jsonl`` lists every entry, one JSON object a line in the order written:
``{name, file, type, phase_idx, phase, step, metrics, bytes}``. An entry file is written
atomically (temporary + rename) and its index row appended after, so every row names a
complete file. A resumed run first cuts the index back to the rows its checkpoint had
seen (:meth:`Ledger.truncate`), deleting files written after it, so the ledger holds one
history.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.log import append_text
from llm_recipe.runtime.workspace import atomic_write_bytes, atomic_write_text

FORMAT = "llm-recipe-ledger/1"
INDEX = "index.jsonl"
SUFFIX = ".safetensors"
TYPES = ("start", "good", "rollback", "commit")


def entry_name(phase_idx: int, phase: str, kind: str, step: int | None = None) -> str:
    """``000_<phase>_start``, ``000_<phase>_good_step000001000``, ..."""
    if kind not in TYPES:
        raise ValueError(f"unknown ledger entry type {kind!r}")
    name = f"{phase_idx:03d}_{phase}_{kind}"
    if kind in ("good", "rollback"):
        name += f"_step{int(step or 0):09d}"
    return name


class Ledger:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = folder / INDEX

    def clear(self) -> None:
        """A clean start: no entries from an earlier attempt survive."""
        if self.folder.is_symlink():
            self.folder.unlink()
        elif self.folder.exists():
            shutil.rmtree(self.folder)

    def write(self, tensors: dict[str, Any], *, kind: str, phase_idx: int, phase: str,
              step: int, metrics: dict[str, Any], info: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        """Write one entry, then its index row; returns the row."""
        from safetensors.torch import save

        name = entry_name(phase_idx, phase, kind, step)
        metadata = {"format": FORMAT, "type": kind, "phase_idx": str(phase_idx),
                    "phase": phase, "global_step": str(step),
                    "metrics": json.dumps(metrics, sort_keys=True),
                    "info": json.dumps(info or {}, sort_keys=True)}
        data = save(tensors, metadata=metadata)
        atomic_write_bytes(self.folder / (name + SUFFIX), data)
        row = {"name": name, "file": name + SUFFIX, "type": kind, "phase_idx": phase_idx,
               "phase": phase, "step": step, "metrics": metrics, "bytes": len(data),
               **({"info": info} if info else {})}
        append_text(self.index, json.dumps(row, sort_keys=True) + "\n")
        return row

    def rows(self) -> list[dict[str, Any]]:
        """The index rows in order; a line torn by a kill mid-append is skipped."""
        if not self.index.is_file():
            return []
        rows = []
        for line in self.index.read_text("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("name"), str):
                rows.append(row)
        return rows

    def load(self, name: str) -> tuple[dict[str, Any], dict[str, str]]:
        """(tensors on the CPU, header metadata) of entry ``name``."""
        from safetensors import safe_open

        path = self.folder / (name + SUFFIX)
        if not path.is_file():
            raise RecipeError(f"ledger entry {path} is missing",
                              hint="run the stage again with --force to rebuild its ledger")
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        return tensors, metadata

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` index rows; remove entry files no kept row names."""
        kept = self.rows()[:count]
        if len(kept) < count:
            raise RecipeError(f"{self.index} has {len(kept)} entries; the checkpoint being "
                              f"resumed saw {count}",
                              hint="run the stage again with --force")
        atomic_write_text(self.index, "".join(json.dumps(r, sort_keys=True) + "\n"
                                              for r in kept))
        names = {row["file"] for row in kept}
        for path in self.folder.glob("*" + SUFFIX):
            if path.name not in names:
                path.unlink()
