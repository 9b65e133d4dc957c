"""A validation split carved from the training rows (``validation_split: {size, seed}``).

Like Axolotl's ``val_set_size``: ``size`` below 1 is a fraction of the rows (rounded up,
so a small dataset still gets one validation row), 1 or more a number of rows. Which
rows is a function of the row count, the size and the seed alone: ``random.Random(seed)``
samples the validation rows, so the same recipe gives the same split on every machine and
Python version (the sampling algorithm of ``random.sample`` is part of Python's
reproducibility promise for a given seed). Both parts keep the rows' original order and
are disjoint; every row is in exactly one. Pure Python and numpy, no torch.
"""

from __future__ import annotations

import math
import random
from typing import Any

from llm_recipe.runtime.data.formats import DataError


def validation_rows(total: int, size: float) -> int:
    """How many of ``total`` rows are held out for ``size`` (a fraction, or a count)."""
    if size <= 0:
        raise ValueError(f"validation size must be positive, got {size}")
    wanted = math.ceil(total * size) if size < 1 else int(size)
    return wanted


def check_split(total: int, size: float, what: str) -> int:
    """The validation row count, or a DataError when the split leaves nothing to train on."""
    held = validation_rows(total, size)
    if total == 0:
        raise DataError(f"{what} has no rows to split", hint="check the dataset")
    if held >= total:
        shown = f"{size:g} of" if size < 1 else f"{int(size):,} of"
        raise DataError(
            f"{what}: validation_split {shown} {total:,} rows holds out {held:,}, leaving "
            "no rows to train on",
            expected=f"a split that keeps at least one training row (at most {total - 1:,})",
            hint="lower validation_split.size, or name a separate validation dataset")
    return held


def split_indices(total: int, size: float, seed: int) -> tuple[Any, Any]:
    """(training row indices, validation row indices), each sorted, disjoint, covering all.

    numpy int64 arrays, so a split of tens of millions of rows stays a few hundred MB at
    most and never a Python set.
    """
    import numpy as np

    held = validation_rows(total, size)
    chosen = random.Random(seed).sample(range(total), held)
    validation = np.sort(np.asarray(chosen, dtype=np.int64))
    keep = np.ones(total, dtype=bool)
    keep[validation] = False
    return np.flatnonzero(keep).astype(np.int64), validation


def describe(spec: dict[str, Any], data: str) -> str:
    """How the plan and the log show a split: ``5% of corpus (seed 3)``."""
    size = spec["size"]
    amount = f"{size * 100:g}%" if size < 1 else f"{int(size):,} rows"
    seed = f" (seed {spec['seed']})" if spec.get("seed") is not None else ""
    return f"{amount} of {data}{seed}"
