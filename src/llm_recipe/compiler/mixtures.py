"""Weighted dataset mixtures: a ``datasets:`` entry made of other entries, each with a share.

A mixture is a dataset like any other (stages name it; its format is its members'), so
every input that takes a dataset takes a mixture, and lineage checks it as one dataset of
that format. Its members are ``datasets:`` entries, all of one format, each with either

- a ``weight``: proportions, normalised over the members, drawn by
  ``datasets.interleave_datasets(probabilities=..., seed=..., stopping_strategy=...)``
  until the first member runs out (``first_exhausted``) or every member has been seen
  whole (``all_exhausted``); or
- a ``count``: exactly that many examples of the member, drawn with the seed (a count
  above the member's rows repeats it), then shuffled together.

Two shapes and not one ``weight`` whose type decides: YAML reads ``1`` as an integer
and ``1.0`` as a float, and a mixture that meant "equal parts" must not silently become
"one example each".

Members stream all or none: a mixture of streams is itself a stream (by weight only: a
stream is never counted or shuffled whole), and ``data_rules`` applies the rules of
streams to it.

This module holds what the compiler knows of mixtures: the rules no schema keyword can
state (:func:`mixture_errors`), the format resolve gives a mixture
(:func:`mixture_format`), the plan's view of one (:func:`plan_entry`: member
fingerprints, proportions, the rows each member is known to have and the examples
expected from each), its fingerprint (members' fingerprints, shares, seed and stopping
rule: a new weight makes every stage reading it stale) and its description in the human
plan. The runtime mixes (``runtime/data/mixture.py``).
"""

from __future__ import annotations

import difflib
from typing import Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError

MIXTURE_VERSION = 1
"""Bump when what a mixture's rows are changes (the runtime's mixing), so stages go stale."""
STOPPING = ("first_exhausted", "all_exhausted")
NOT_FOR_MIXTURES = ("subset", "split", "revision", "file_format", "n", "columns", "limit",
                    "streaming")
"""Keys of a dataset with a source that mean nothing on a mixture (a member has its own;
a source beside ``mixture`` is the schema's oneOf error)."""
MIXTURE_KEYS = ("mixture", "seed", "stopping", "format", "examples", "description")
KNOWN_DATASET_SIZES = {
    ("openai/gsm8k", "train"): 7473,
    ("openai/gsm8k", "test"): 1319,
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
}
"""Rows of hub datasets the plan knows without downloading them."""
BUILTIN_ROWS = 1000
"""Rows a builtin generator makes without ``n`` (runtime/builtin.py's default)."""


def is_mixture(entry: Any) -> bool:
    """Whether a ``datasets:`` entry is a mixture."""
    return isinstance(entry, dict) and "mixture" in entry


def mixture_format(entry: dict[str, Any], datasets: dict[str, Any]) -> str | None:
    """The format of a mixture for lineage: its own when written, else its members' when
    they agree (None otherwise: :func:`mixture_errors` says why)."""
    if isinstance(entry.get("format"), str):
        return entry["format"]
    formats = {_member_format(member, datasets) for member in _members(entry)}
    return formats.pop() if len(formats) == 1 else None


def _members(entry: dict[str, Any]) -> list[dict[str, Any]]:
    members = entry.get("mixture")
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _member_format(member: dict[str, Any], datasets: dict[str, Any]) -> str | None:
    target = datasets.get(member.get("data")) if isinstance(member.get("data"), str) else None
    fmt = target.get("format") if isinstance(target, dict) and not is_mixture(target) else None
    return fmt if isinstance(fmt, str) else None


# ---------------------------------------------------------------------- plan-time rules


def mixture_errors(data: dict[str, Any], where: SourceMap) -> list[RecipeError]:
    """Every mixture rule the schema cannot state (it has vouched for the shapes)."""
    datasets = _mapping(data.get("datasets"))
    errors: list[RecipeError] = []
    for name, entry in datasets.items():
        if not isinstance(entry, dict):
            continue
        if is_mixture(entry):
            errors += _entry_errors(name, entry, data, where)
        elif "stopping" in entry:
            errors.append(where.error(
                ("datasets", name, "stopping"), "stopping applies to a mixture only",
                expected="a dataset with mixture: beside stopping", key=True,
                hint=f"remove stopping from datasets.{name}"))
    errors += _tokenizer_errors(data, datasets, where)
    return errors


def _entry_errors(name: str, entry: dict[str, Any], data: dict[str, Any],
                  where: SourceMap) -> list[RecipeError]:
    at = ("datasets", name)
    errors = [where.error(
        (*at, key), f"'{key}' does not apply to a mixture",
        expected=f"a mixture's keys: {', '.join(MIXTURE_KEYS)}", key=True,
        hint=f"set {key} on the member datasets, which are read as they are declared")
        for key in NOT_FOR_MIXTURES if key in entry]
    members = _members(entry)
    shares = ["weight" if "weight" in m else "count" for m in members]
    odd = next((i for i, share in enumerate(shares) if share != shares[0]), None)
    if odd is not None:
        errors.append(where.error(
            (*at, "mixture", odd, shares[odd]),
            f"member {odd} has a {shares[odd]} and member 0 a {shares[0]}",
            expected="a weight on every member (proportions) or a count on every member "
            "(examples)", key=True,
            hint="mix by proportion with weights (0.7, 0.3) or by number of examples with "
            "counts (700, 300)"))
    elif shares and shares[0] == "count" and "stopping" in entry:
        errors.append(where.error(
            (*at, "stopping"), "stopping applies to a mixture by weight",
            expected="no stopping with counts: each member gives exactly its count",
            key=True, hint="remove stopping, or give the members weights"))
    errors += _member_errors(name, members, data, where)
    return errors + _stream_errors(name, members, _mapping(data.get("datasets")), where)


def _member_errors(name: str, members: list[dict[str, Any]], data: dict[str, Any],
                   where: SourceMap) -> list[RecipeError]:
    datasets = _mapping(data.get("datasets"))
    errors: list[RecipeError] = []
    seen: set[str] = set()
    formats: list[tuple[int, str, str]] = []
    for index, member in enumerate(members):
        ref = member.get("data")
        if not isinstance(ref, str):
            continue
        path = ("datasets", name, "mixture", index, "data")
        target = datasets.get(ref)
        problem = _member_problem(name, ref, target, data, seen)
        seen.add(ref)
        if problem is not None:
            message, expected, hint = problem
            errors.append(where.error(path, message, expected=expected, hint=hint))
        elif isinstance(target, dict) and isinstance(target.get("format"), str):
            formats.append((index, ref, target["format"]))
    if formats:
        first_index, first, fmt = formats[0]
        for index, ref, other in formats[1:]:
            if other != fmt:
                errors.append(where.error(
                    ("datasets", name, "mixture", index, "data"),
                    f"'{ref}' is a dataset of format {other}, and '{first}' (member "
                    f"{first_index}) of format {fmt}",
                    expected="members of one format",
                    hint=f"declare '{ref}' as {fmt} too (a hub or local file can map its "
                    "columns with columns:), or mix it in a mixture of its own"))
                break
        written = datasets[name].get("format")
        if isinstance(written, str) and written != fmt and len({f for *_, f in formats}) == 1:
            errors.append(where.error(
                ("datasets", name, "format"),
                f"the mixture says format {written}, and its members are {fmt}",
                expected=f"format {fmt}, or no format (a mixture's format is its members')",
                hint="remove format from the mixture"))
    return errors


def _member_problem(name: str, ref: str, target: Any, data: dict[str, Any],
                    seen: set[str]) -> tuple[str, str, str] | None:
    """(message, expected, hint) of a member that cannot be mixed, or None."""
    expected = "a datasets: entry with a source (hub, path or builtin)"
    if ref in seen:
        return (f"'{ref}' is listed twice in this mixture", "each member once",
                "list it once, with the sum of its weights or counts")
    if ref == name:
        return "a mixture cannot contain itself", expected, "list the datasets it mixes"
    if target is None:
        for section in ("stages", "models"):
            if ref in _mapping(data.get(section)):
                return (f"'{ref}' is a {section[:-1]}, and a mixture mixes datasets: entries",
                        expected, "declare those rows as a datasets: entry (a path to the "
                        "file) to mix them")
        names = [n for n, e in _mapping(data.get("datasets")).items()
                 if n != name and not is_mixture(e)]
        close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
        return (f"no dataset named '{ref}'", expected,
                f"did you mean '{close[0]}'?" if close else f"define '{ref}' under datasets")
    if is_mixture(target):
        return (f"'{ref}' is itself a mixture", expected,
                f"list the members of '{ref}' here, their weights multiplied by its weight")
    return None


def _stream_errors(name: str, members: list[dict[str, Any]], datasets: dict[str, Any],
                   where: SourceMap) -> list[RecipeError]:
    """A mixture streams when all its members do (by weight only), or none of them."""
    streamed = [_streams(datasets.get(m.get("data"))) for m in members]
    if not any(streamed):
        return []
    at = ("datasets", name, "mixture")
    if not all(streamed):
        odd = streamed.index(not streamed[0])
        plain, stream = (odd, 0) if streamed[0] else (0, odd)
        return [where.error(
            (*at, odd, "data"),
            f"'{members[stream]['data']}' streams (streaming: true) and "
            f"'{members[plain]['data']}' does not",
            expected="members that all stream, or none that does",
            hint="a mixture of streams is read as a stream (pretrain data, continual "
            "phases); set streaming: true on every member, or on none")]
    counted = next((i for i, m in enumerate(members) if "count" in m), None)
    if counted is None:
        return []
    return [where.error(
        (*at, counted, "count"), "a mixture of streams cannot take counts",
        expected="weights: streams are interleaved by proportion as they are read",
        key=True, hint="give the members weights; a stream is never counted or shuffled "
        "whole")]


def _streams(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("streaming") is True


def streamed_mixtures(datasets: dict[str, Any]) -> set[str]:
    """Mixtures read as streams: every member streams (data_rules then applies the rules
    of streams to them: pretrain data and continual phases only, ``train.max_steps``)."""
    return {name for name, entry in datasets.items() if is_mixture(entry) and _members(entry)
            and all(_streams(datasets.get(m.get("data"))) for m in _members(entry))}


def _tokenizer_errors(data: dict[str, Any], datasets: dict[str, Any],
                      where: SourceMap) -> list[RecipeError]:
    errors = []
    for name, model in _mapping(data.get("models")).items():
        tokenizer = model.get("tokenizer") if isinstance(model, dict) else None
        train = tokenizer.get("train") if isinstance(tokenizer, dict) else None
        ref = train.get("data") if isinstance(train, dict) else None
        if isinstance(ref, str) and is_mixture(datasets.get(ref)):
            errors.append(where.error(
                ("models", name, "tokenizer", "train", "data"),
                f"'{ref}' is a mixture, and a tokenizer trains on one dataset's text",
                expected="a dataset with a source (hub, path or builtin)",
                hint="train the tokenizer on one of its members, or on a corpus of its own"))
    return errors


# ---------------------------------------------------------------------- the plan's view


def known_rows(entry: dict[str, Any]) -> int | None:
    """Rows a dataset is known to have at plan time: ``limit``, ``examples``, a builtin's
    ``n``, a known hub split, a mixture's expected examples; None when unknown (a local
    file is not read to count its rows)."""
    if is_mixture(entry):
        total = entry.get("examples") or entry.get("expected_examples")
        return int(total) if total else None
    full = None
    if "examples" in entry:
        full = int(entry["examples"])
    elif "builtin" in entry:
        full = int(entry.get("n") or BUILTIN_ROWS)
    elif "hub" in entry:
        full = KNOWN_DATASET_SIZES.get((entry["hub"].lower(), entry.get("split", "train")))
    if "limit" in entry:
        return int(entry["limit"]) if full is None else min(int(entry["limit"]), full)
    return full


def expected_counts(proportions: list[float], rows: list[int | None],
                    stopping: str) -> list[int] | None:
    """Examples expected from each member of a mixture by weight, or None when a member's
    rows are unknown (the plan then shows proportions only).

    Members are drawn with their probabilities until the first member has given all its
    rows (``first_exhausted``: the mixture holds ``min(rows / p)`` examples) or every
    member has (``all_exhausted``: ``max(rows / p)``, the others repeated); member i gives
    ``p_i`` of them. The realised counts vary around these by sampling noise.
    """
    known = [r for r in rows if r is not None]
    if len(known) < len(rows):
        return None
    spans = [r / p for r, p in zip(known, proportions, strict=True)]
    total = min(spans) if stopping == "first_exhausted" else max(spans)
    return [round(p * total) for p in proportions]


def plan_entry(entry: dict[str, Any], datasets: dict[str, Any],
               fingerprints: dict[str, str]) -> dict[str, Any]:
    """The plan's entry of a mixture (defaults filled): each member with its share, its
    fingerprint, the rows it is known to have and the examples expected from it; the
    format; the expected total. What the runtime mixes and the human plan shows."""
    members = _members(entry)
    by_weight = "weight" in members[0]
    rows = [known_rows(datasets[m["data"]]) for m in members]
    planned: list[dict[str, Any]] = []
    if by_weight:
        total = sum(float(m["weight"]) for m in members)
        shares = [float(m["weight"]) / total for m in members]
        expected = expected_counts(shares, rows, entry["stopping"])
    else:
        shares = []
        expected = [int(m["count"]) for m in members]
    for index, member in enumerate(members):
        item: dict[str, Any] = {"data": member["data"]}
        if by_weight:
            item.update(weight=member["weight"], proportion=shares[index])
        else:
            item["count"] = member["count"]
        item.update(rows=rows[index], expected=expected[index] if expected else None,
                    fingerprint=fingerprints[member["data"]])
        planned.append(item)
    out: dict[str, Any] = {"mixture": planned, "seed": entry["seed"]}
    if by_weight:
        out["stopping"] = entry["stopping"]
    out["format"] = mixture_format(entry, datasets)
    if all(_streams(datasets[m["data"]]) for m in members):
        out["streaming"] = True  # interleaved as they are read (runtime/data/stream.py)
    out["expected_examples"] = sum(expected) if expected else None
    for key in ("examples", "description"):
        if key in entry:
            out[key] = entry[key]
    return out


def fingerprint(planned: dict[str, Any]) -> str:
    """A mixture's fingerprint: its members' fingerprints with their normalised shares,
    the seed and the stopping rule (what decides its rows; 0.7/0.3 and 7/3 are one
    mixture), and the version of the mixing."""
    shares = [{"input": m["fingerprint"],
               **({"proportion": m["proportion"]} if "proportion" in m
                  else {"count": m["count"]})} for m in planned["mixture"]]
    return digest({"kind": "mixture", "version": MIXTURE_VERSION, "members": shares,
                   "seed": planned["seed"], "stopping": planned.get("stopping"),
                   "format": planned["format"], "streaming": planned.get("streaming", False)})


def describe(planned: dict[str, Any]) -> str:
    """The mixture in one line for the human plan: each member's share and the examples
    expected from it, or proportions only where a member's rows are unknown::

        ~1,143 examples: 70% arith (~800 of 800 rows) + 30% nli (~343 of 5,000 rows) (seed 0, first_exhausted)
        proportions only (unknown at plan time: rows of nli): 70% arith (800 rows) + 30% nli (seed 0, first_exhausted)
        1,000 examples: 700 arith (of 800 rows) + 300 nli (of 100 rows, repeated x3) (seed 0)
    """  # noqa: E501
    parts = []
    unknown = []
    for member in planned["mixture"]:
        name, rows, got = member["data"], member.get("rows"), member.get("expected")
        if rows is None:
            unknown.append(name)
        if "proportion" in member:
            share = f"{member['proportion'] * 100:.3g}% {name}"
            if got is not None:
                repeated = ", repeated" if rows and got > rows else ""
                parts.append(f"{share} (~{got:,} of {rows:,} rows{repeated})")
            else:
                parts.append(share + (f" ({rows:,} rows)" if rows is not None else ""))
        else:
            count = int(member["count"])
            repeated = f", repeated x{count / rows:.2g}" if rows and count > rows else ""
            parts.append(f"{count:,} {name}" + (f" (of {rows:,} rows{repeated})"
                                                 if rows is not None else ""))
    total = planned.get("expected_examples")
    if "stopping" in planned:
        rule = f"seed {planned['seed']}, {planned['stopping']}"
        head = (f"~{total:,} examples" if total is not None else
                f"proportions only (unknown at plan time: rows of {', '.join(unknown)})")
    else:
        rule, head = f"seed {planned['seed']}", f"{total:,} examples"
    return f"{head}: {' + '.join(parts)} ({rule})"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
