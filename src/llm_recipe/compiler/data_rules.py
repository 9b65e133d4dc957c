"""Plan-time rules of datasets and how stages read them, that no schema keyword can state.

- ``validation_split`` carves validation rows from the stage's data, so it excludes a
  ``validation`` dataset (which rows would the stage evaluate on?);
- ``streaming: true`` reads rows once, in order, without ever holding them: only a
  pretrain stage's ``data`` and a continual stage's phases can consume a stream. Every
  other input (validation sets evaluated whole, prompts sampled by index, preference
  pairs shuffled, eval sets scored whole, probes, a tokenizer's training text) is
  refused at its reference;
- a stream has no length, so a pretrain stage over one needs ``train.max_steps``
  (``epochs`` cannot be counted), and it has no rows to hold out
  (``validation_split``). A mixture whose members all stream is a stream.

Checked with every other error, so ``recipe plan`` refuses what a run would only find out
when the stage starts.
"""

from __future__ import annotations

from typing import Any

from llm_recipe.compiler.kinds import DATASET, KINDS_BY_NAME
from llm_recipe.compiler.mixtures import streamed_mixtures
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError

STREAMABLE = frozenset({("pretrain", "data"), ("continual", "phases[].data")})
"""(kind, input field) that read a dataset as a stream."""


def data_errors(data: dict[str, Any], where: SourceMap) -> list[RecipeError]:
    """Every error of the rules above."""
    datasets = mapping_at(data, "datasets")
    streams = {name for name, entry in datasets.items()
               if isinstance(entry, dict) and entry.get("streaming") is True}
    mixed = streamed_mixtures(datasets)  # every member streams (compiler/mixtures.py)
    stages = mapping_at(data, "stages")
    errors: list[RecipeError] = []
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        at = ("stages", name)
        if "validation_split" in stage and "validation" in stage:
            errors.append(where.error(
                (*at, "validation_split"),
                "validation_split and validation cannot both be set",
                expected="either a validation dataset or validation_split (rows carved from "
                "data)", key=True,
                hint="keep validation to evaluate on a dataset of its own, or "
                "validation_split to hold out part of data"))
        errors += _stream_errors(stage, at, streams | mixed, where, mixed)
    errors += _tokenizer_stream_errors(data, streams, where)
    return errors


def _stream_errors(stage: dict[str, Any], at: tuple, streams: set[str],
                   where: SourceMap, mixed: frozenset[str] | set[str] = frozenset()
                   ) -> list[RecipeError]:
    kind = KINDS_BY_NAME.get(stage.get("kind"))
    if kind is None or not streams:
        return []
    errors = []
    streamed = False
    for spec in kind.inputs:
        if DATASET not in spec.accepts:
            continue
        for path, ref in _expand(stage, spec.field):
            if ref not in streams:
                continue
            if (kind.name, spec.field) in STREAMABLE:
                streamed = streamed or kind.name == "pretrain"
                continue
            why, entries = (("its members stream", f"the members of datasets.{ref}")
                            if ref in mixed else ("streaming: true", f"datasets.{ref}"))
            errors.append(where.error(
                (*at, *path),
                f"dataset '{ref}' streams ({why}), and {kind.name} reads its "
                f"{'.'.join(str(p) for p in path)} whole",
                expected="a dataset without streaming: only pretrain data and continual "
                "phases stream",
                hint=f"remove streaming: true from {entries}, or use a dataset of its "
                "own here"))
    if not streamed:
        return errors
    train = mapping_at(stage, "train")
    if "max_steps" not in train:
        path = (*at, "train", "epochs") if "epochs" in train else (*at, "data")
        errors.append(where.error(
            path, f"stage data '{stage.get('data')}' streams, so the number of steps in "
            f"{'an epoch' if 'epochs' in train else 'the run'} cannot be known",
            expected="train.max_steps with a streamed dataset", key="epochs" in train,
            hint="set train.max_steps (a stream shorter than the run starts over)"))
    if "validation_split" in stage:
        errors.append(where.error(
            (*at, "validation_split"),
            f"validation rows cannot be carved from '{stage.get('data')}', which streams",
            expected="a validation dataset of its own with a streamed data set", key=True,
            hint="name a (small, not streamed) dataset as validation instead"))
    return errors


def _tokenizer_stream_errors(data: dict[str, Any], streams: set[str],
                             where: SourceMap) -> list[RecipeError]:
    models = mapping_at(data, "models")
    errors = []
    for name, model in models.items():
        tokenizer = model.get("tokenizer") if isinstance(model, dict) else None
        train = tokenizer.get("train") if isinstance(tokenizer, dict) else None
        ref = train.get("data") if isinstance(train, dict) else None
        if ref in streams:
            errors.append(where.error(
                ("models", name, "tokenizer", "train", "data"),
                f"dataset '{ref}' streams (streaming: true), and training a tokenizer "
                "reads its text whole",
                expected="a dataset without streaming",
                hint="train the tokenizer on a sample: a dataset entry with limit and no "
                "streaming"))
    return errors


def _expand(stage: dict[str, Any], pattern: str) -> list[tuple[tuple, Any]]:
    """Values at a field pattern: ``data``, ``phases[].data`` (as resolve reads them)."""
    from llm_recipe.compiler.resolve import _expand as expand

    return expand(stage, pattern)
