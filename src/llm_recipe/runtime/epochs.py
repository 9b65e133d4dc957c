"""Seeded, endless epochs: which item a training loop takes at each position.

The loops the runtime writes itself (PPO's prompt rows, the continual stage's new and
replayed blocks) draw their items as positions of an endless sequence of epochs over
``range(n)``, epoch ``e`` shuffled by ``random.Random(seed * 1_000_003 + e)``. The item at
a position depends on the seed and the position alone, so a resumed run draws exactly
what an uninterrupted one would have, with no sampler state to save.
"""

from __future__ import annotations

import random


def positions(seed: int, start: int, size: int, n: int) -> list[int]:
    """Items ``start .. start+size-1`` of the endless shuffled epochs over ``range(n)``."""
    orders: dict[int, list[int]] = {}
    out = []
    for position in range(start, start + size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][offset])
    return out
