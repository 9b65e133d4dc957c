"""A mixture's rows: its members' cached Arrow rows, drawn with the mixture's seed.

The compiler plans a mixture (``compiler/mixtures.py``: members, shares, seed, stopping
rule); here the members, each loaded through the same cached, memory-mapped Arrow path
as any dataset, become one ``datasets.Dataset`` of index mappings over their files
(nothing is copied):

- **by weight**: each member shuffled with its own generator seeded from the mixture's
  seed and its position, then ``datasets.interleave_datasets(probabilities=proportions,
  seed=seed, stopping_strategy=stopping)``. The shuffle is ours: ``interleave_datasets``
  reads each member in order, so under ``first_exhausted`` the members that do not run
  out would otherwise give only their first rows;
- **by count**: each member's rows drawn with its own seeded generator (a permutation,
  a fresh one for each pass over a member whose count exceeds its rows), the members
  concatenated and the whole shuffled with the seed.

The result is keyed by its members' content keys, shares, seed and stopping rule
(:func:`mixture_key`), which is what the tokenization caches build on; ``train.log`` says
what was realised::

    [data] mixture mix: 700 gsm8k_train + 300 nli_train (seed 0, first_exhausted)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.compiler.mixtures import MIXTURE_VERSION
from llm_recipe.runtime.data.formats import FIELDS, DataError

MEMBER = "__mixture_member"
"""A column naming each row's member while mixing, to count what was drawn; dropped after."""


def mixture_key(planned: dict[str, Any], member_keys: list[str]) -> str:
    """The content key of a mixture: its members' content keys (see ``arrow.dataset_key``)
    with their shares, the seed and the stopping rule, and the mixing's version."""
    shares = [{"data": key, **({"proportion": m["proportion"]} if "proportion" in m
                               else {"count": m["count"]})}
              for key, m in zip(member_keys, planned["mixture"], strict=True)]
    return digest({"kind": "mixture", "version": MIXTURE_VERSION, "members": shares,
                   "seed": planned["seed"], "stopping": planned.get("stopping"),
                   "format": planned["format"]})


def mix(name: str, planned: dict[str, Any], members: list[Any],
        log: Callable[[str], None] | None = None) -> tuple[Any, list[int]]:
    """(mixed dataset, rows drawn from each member) of a planned mixture whose members'
    datasets are ``members`` (in the plan's order)."""
    import numpy as np
    from datasets import concatenate_datasets, interleave_datasets

    spec = planned["mixture"]
    fields = list(FIELDS.get(planned["format"], ()))
    seed = int(planned["seed"])
    tagged = []
    for index, (member, dataset) in enumerate(zip(spec, members, strict=True)):
        if not len(dataset):
            raise DataError(f"mixture '{name}': member '{member['data']}' has no rows",
                            hint="check the member's source and limit, or drop it from "
                            "the mixture")
        dataset = dataset.select_columns([f for f in fields if f in dataset.column_names])
        tagged.append(dataset.add_column(MEMBER, np.full(len(dataset), index, np.int32)))
    _check_features(name, spec, tagged)
    if "proportion" in spec[0]:
        shuffled = [d.shuffle(generator=np.random.default_rng([seed, i]), keep_in_memory=True)
                    for i, d in enumerate(tagged)]
        mixed = interleave_datasets(shuffled, probabilities=[m["proportion"] for m in spec],
                                    seed=seed, stopping_strategy=planned["stopping"])
    else:
        parts = [d.select(_draw(len(d), int(m["count"]), np.random.default_rng([seed, i])),
                          keep_in_memory=True)
                 for i, (m, d) in enumerate(zip(spec, tagged, strict=True))]
        mixed = concatenate_datasets(parts).shuffle(seed=seed, keep_in_memory=True)
    drawn = mixed.select_columns([MEMBER]).with_format("arrow")[:].column(0).to_numpy()
    counts = [int(c) for c in np.bincount(drawn, minlength=len(spec))]
    if log is not None:
        log(f"[data] {describe_realised(name, planned, counts, [len(d) for d in members])}")
    return mixed.remove_columns([MEMBER]), counts


def _draw(rows: int, count: int, rng: Any) -> Any:
    """``count`` row indices of a member of ``rows``: a seeded permutation, and a fresh one
    for each further pass when the count exceeds the rows."""
    import numpy as np

    passes = -(-count // rows)
    return np.concatenate([rng.permutation(rows) for _ in range(passes)])[:count]


def _check_features(name: str, spec: list[dict[str, Any]], datasets: list[Any]) -> None:
    """Members whose columns have other Arrow types cannot be one dataset: say which."""
    first = datasets[0].features
    for member, dataset in zip(spec[1:], datasets[1:], strict=True):
        if dataset.features != first:
            raise DataError(
                f"mixture '{name}': the rows of '{member['data']}' ({_types(dataset)}) "
                f"do not have the types of '{spec[0]['data']}''s ({_types(datasets[0])})",
                hint="make the members' columns alike (the same fields, as text), or mix "
                "them in separate stages")


def _types(dataset: Any) -> str:
    return ", ".join(f"{k}: {v}" for k, v in dataset.features.items() if k != MEMBER)


def describe_realised(name: str, planned: dict[str, Any], counts: list[int],
                      rows: list[int]) -> str:
    """``mixture mix: 700 gsm8k_train + 300 nli_train (seed 0, first_exhausted)``; a member
    drawn more than its rows says how many times over."""
    parts = []
    for member, count, size in zip(planned["mixture"], counts, rows, strict=True):
        over = f" ({count / size:.2g}x its {size:,} rows)" if count > size else ""
        parts.append(f"{count:,} {member['data']}{over}")
    rule = planned.get("stopping") or "counts"
    return f"mixture {name}: {' + '.join(parts)} (seed {planned['seed']}, {rule})"
