"""Semantic rules: what a JSON Schema cannot say, checked across fields.

A model built with ``init`` needs a tokenizer, ``epochs`` and ``max_steps`` exclude
each other, deepspeed needs a ZeRO stage, the docker launcher needs an image, a
secret-looking key must hold a ``${env:NAME}`` reference, and no value may be NaN or
infinite. :func:`llm_recipe.compiler.validate.validate` runs these beside the schema
and reports every error at once.
"""

from __future__ import annotations

import math
from typing import Any

from llm_recipe.compiler.source import ENV_ONLY, SECRET_KEY, SourceMap
from llm_recipe.errors import RecipeError, RecipePath

TOKENIZER_SOURCES = ("hub", "path", "train")
"""Where a tokenizer comes from; none of them: the model's own (with chat_template or
special_tokens changed)."""


def mapping_at(data: Any, key: str) -> dict[str, Any]:
    """``data[key]`` when it is a mapping, else an empty one.

    The plan-time rules run on documents the schema has vouched for, but they report
    every error at once, so a section that is missing or of the wrong type (already an
    error of its own) is read as empty rather than trusted.
    """
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def semantic_errors(data: Any, where: SourceMap) -> list[RecipeError]:
    """Rules that span fields: training length, init tokenizers, launchers, inline secrets."""
    if not isinstance(data, dict):
        return []
    errors: list[RecipeError] = []
    models = mapping_at(data, "models")
    for name, model in models.items():
        tokenizer = model.get("tokenizer") if isinstance(model, dict) else None
        sourced = isinstance(tokenizer, dict) and any(
            k in tokenizer for k in TOKENIZER_SOURCES)
        if (
            isinstance(model, dict)
            and "init" in model
            and not sourced
            and not ("hub" in model or "path" in model)  # reported as two sources instead
        ):
            errors.append(
                where.error(
                    ("models", name, "init"),
                    "a model built with init has no tokenizer of its own",
                    expected="models." + name + ".tokenizer (train, hub or path)",
                    hint="e.g. tokenizer: {train: {data: corpus, vocab_size: 1024}}",
                    key=True,
                )
            )
    stages = mapping_at(data, "stages")
    for name, stage in stages.items():
        train = stage.get("train") if isinstance(stage, dict) else None
        if isinstance(train, dict) and "epochs" in train and "max_steps" in train:
            errors.append(
                where.error(
                    ("stages", name, "train", "max_steps"),
                    "epochs and max_steps cannot both be set",
                    expected="either epochs or max_steps",
                    key=True,
                    hint=f"keep one: to count steps instead of epochs, also set "
                    f"stages.{name}.train.epochs=null (--set), or delete epochs",
                )
            )
    recipe_dist = (data.get("compute") or {}).get("distributed") if isinstance(
        data.get("compute"), dict) else None
    own_file = isinstance(recipe_dist, dict) and "deepspeed_config" in recipe_dist
    for path, compute in _computes(data):
        errors.extend(_compute_errors(path, compute, where, ds_file=own_file))
    errors.extend(_secret_errors(data, where))
    return errors


def _computes(data: dict[str, Any]) -> list[tuple[RecipePath, dict[str, Any]]]:
    found = []
    if isinstance(data.get("compute"), dict):
        found.append((("compute",), data["compute"]))
    stages = mapping_at(data, "stages")
    for name, stage in stages.items():
        if isinstance(stage, dict) and isinstance(stage.get("compute"), dict):
            found.append((("stages", name, "compute"), stage["compute"]))
    return found


def _compute_errors(
    path: RecipePath, compute: dict[str, Any], where: SourceMap, *, ds_file: bool = False
) -> list[RecipeError]:
    """``ds_file``: the recipe's compute names a DeepSpeed config, whose stage counts."""
    errors = []
    distributed = compute.get("distributed")
    if (
        isinstance(distributed, dict)
        and distributed.get("strategy") == "deepspeed"
        and ("zero_stage" not in distributed)
        and not ds_file
        and "deepspeed_config" not in distributed  # its zero_optimization.stage counts
    ):
        errors.append(
            where.error(
                (*path, "distributed", "strategy"),
                "deepspeed needs a ZeRO stage",
                expected="distributed.zero_stage: 0, 1, 2 or 3 (or a deepspeed_config file)",
                hint="add zero_stage: 2 shards gradients and optimizer states, 3 also the weights",
            )
        )
    if compute.get("launcher") == "docker" and not _has_key(compute, "docker", "image"):
        errors.append(
            where.error(
                (*path, "launcher"),
                "the docker launcher needs an image",
                expected="compute.docker.image",
                hint="e.g. docker: {image: llm-lab}",
            )
        )
    return errors


def _has_key(node: dict[str, Any], *keys: str) -> bool:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _secret_errors(data: Any, where: SourceMap, path: RecipePath = ()) -> list[RecipeError]:
    """A value under a secret-looking key must be a ${env:NAME} reference, never the secret."""
    errors = []
    if isinstance(data, dict):
        for key, value in data.items():
            child = (*path, key)
            if (
                isinstance(value, str)
                and isinstance(key, str)
                and SECRET_KEY.search(key)
                and value
                and not ENV_ONLY.match(value)
            ):
                errors.append(
                    where.error(
                        child,
                        f"'{key}' looks like a secret written inline",
                        expected="a reference such as ${env:" + key.upper() + "}",
                        hint="recipes are committed; secrets come from the environment of the job",
                        conceal=True,
                    )
                )
            else:
                errors.extend(_secret_errors(value, where, child))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            errors.extend(_secret_errors(value, where, (*path, index)))
    return errors


def non_finite_errors(data: Any, where: SourceMap) -> list[RecipeError]:
    """Every ``.nan``, ``.inf`` and ``-.inf``, wherever it is written.

    JSON Schema's ``number`` accepts them and no range check catches NaN (every
    comparison is false), yet no setting means anything with them, and a plan holding
    one is not JSON (``NaN`` is a JavaScript literal that strict parsers refuse).
    """
    found: list[RecipeError] = []
    stack: list[tuple[RecipePath, Any]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):  # reversed: popped in the order written
            stack.extend(reversed([((*path, k), v) for k, v in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([((*path, i), v) for i, v in enumerate(node)]))
        elif isinstance(node, float) and not math.isfinite(node):
            shown = ".nan" if math.isnan(node) else (".inf" if node > 0 else "-.inf")
            found.append(
                where.error(
                    path,
                    f"got {shown}",
                    expected="a finite number",
                    hint=f"write a number such as 1e-4 (NaN and infinity are not settings; "
                    f"quote '{shown}' where text is meant)",
                )
            )
    return found
