"""Load what a stage input names: a models: entry, a stage's model, an adapter on its base.

Lineage is already resolved by the compiler: an adapter input carries the name of its
base (a models: entry or a stage that produced full weights), so loading is a walk
down that chain, never a guess from folder contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.fingerprint import digest, entry_fingerprint
from llm_recipe.compiler.plan import StageInput
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute as compute_rules
from llm_recipe.runtime.cache import cache_problem, publish

if TYPE_CHECKING:
    from llm_recipe.runtime.context import StageContext

TOKENIZER_TRAINER_VERSION = 1
"""Bump when models.train_tokenizer changes what it builds: old cache entries then miss."""


def load_input_model(ctx: StageContext, item: StageInput, *, trainable: bool) -> tuple[Any, Any]:
    """(model, tokenizer) for a model, adapter or patch input of the stage."""
    if item.type == "model":
        return load_named_model(ctx, item.ref)
    if item.type == "adapter":
        from peft import PeftModel

        base, _ = load_named_model(ctx, item.base or "")
        adapter_dir = ctx.path(item.path or "")
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
        return model, _auto_tokenizer(adapter_dir)
    raise RecipeError(f"stage {ctx.stage.name}: cannot load {item.type} '{item.ref}' here",
                      hint="patches are loaded by the continual stage runtime, not yet available")


def load_named_model(ctx: StageContext, name: str) -> tuple[Any, Any]:
    """Full weights by name: a models: entry, or the output of a stage that made a model."""
    from llm_recipe.runtime import models

    dtype = _dtype(ctx)
    if name in ctx.plan.models:
        entry = ctx.plan.models[name]
        if "init" in entry:
            tokenizer = tokenizer_for(ctx, name)
            model = models.init_model(entry["init"], tokenizer, seed=ctx.plan.recipe["seed"])
            return model, tokenizer
        tokenizer = tokenizer_for(ctx, name)
        model = models.load_pretrained(name, _rooted(ctx, entry), ctx.root, dtype=dtype)
        return model, tokenizer
    producer = ctx.plan.stage(name)
    path = ctx.path(producer.output.path)
    if producer.output.type != "model":
        raise RecipeError(f"'{name}' produced {producer.output.type}, not full weights")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype), _auto_tokenizer(path)


def tokenizer_for(ctx: StageContext, name: str) -> Any:
    """The tokenizer of models: entry ``name``: its own, a named one, or trained (cached)."""
    from llm_recipe.runtime import models

    entry = ctx.plan.models[name]
    spec = entry.get("tokenizer")
    if not spec:
        return models.load_tokenizer(name, _rooted(ctx, entry), ctx.root)
    if "train" not in spec:
        return models.load_tokenizer(name, _rooted(ctx, spec), ctx.root)
    key = tokenizer_cache_key(ctx.plan.datasets, spec, ctx.root)
    folder = ctx.path(ctx.plan.workspace) / ".cache" / "tokenizers" / f"{name}-{digest(key)[:16]}"
    problem = cache_problem(folder)
    if problem is None:
        ctx.log.line(f"tokenizer {name}: cached ({folder.name})")
        return _auto_tokenizer(folder)
    if folder.exists():
        ctx.log.line(f"tokenizer {name}: the cache {folder} is damaged ({problem}); rebuilding")
    from llm_recipe.runtime.data import load_rows

    data_name = spec["train"]["data"]
    rows = load_rows(data_name, _rooted(ctx, ctx.plan.datasets[data_name]))
    tokenizer = models.train_tokenizer(
        [text for row in rows for text in row_texts(row)],
        vocab_size=spec["train"]["vocab_size"], min_frequency=spec["train"]["min_frequency"],
        chat_template=spec.get("chat_template"))
    ctx.log.line(f"tokenizer {name}: trained on {data_name} ({len(tokenizer)} tokens), "
                 f"cached as {folder.name}")
    from llm_recipe.runtime.distributed import is_main

    if is_main():  # every rank trains the same tokenizer; one publishes it
        publish(folder, key, lambda tmp: tokenizer.save_pretrained(str(tmp)))
    return tokenizer


def tokenizer_cache_key(datasets: dict[str, Any], spec: dict[str, Any],
                        root: Path) -> dict[str, Any]:
    """Everything a trained tokenizer depends on: its spec (vocabulary size, minimum
    frequency, chat template, data name), the training data's *content* fingerprint
    (a local file's bytes, a hub id and revision, a builtin generator's spec, its
    columns and limit) and the versions of the code that trains it."""
    from importlib import metadata

    data_entry = datasets[spec["train"]["data"]]
    return {"spec": spec, "data": entry_fingerprint(data_entry, root),
            "trainer": TOKENIZER_TRAINER_VERSION, "tokenizers": metadata.version("tokenizers")}


def row_texts(row: dict[str, Any]) -> list[str]:
    """Every piece of text in a row, whatever its format (for tokenizer training)."""
    out: list[str] = []
    for value in row.values():
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(m["content"] for m in value if isinstance(m, dict) and "content" in m)
    return out


def _rooted(ctx: StageContext, entry: dict[str, Any]) -> dict[str, Any]:
    """An entry whose relative ``path`` is made absolute against the working directory."""
    if "path" not in entry:
        return entry
    return {**entry, "path": str(ctx.path(entry["path"]))}


def _auto_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _dtype(ctx: StageContext) -> Any:
    import torch

    return getattr(torch, compute_rules.torch_dtype(ctx.compute))
