"""Load what a stage input names: a models: entry, a stage's model, an adapter on its base.

Lineage is already resolved by the compiler: an adapter input carries the name of its
base (a models: entry or a stage that produced full weights), so loading is a walk
down that chain, never a guess from folder contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.compiler.plan import StageInput
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute as compute_rules
from llm_recipe.runtime.workspace import atomic_dir

if TYPE_CHECKING:
    from llm_recipe.runtime.context import StageContext


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
    data_name = spec["train"]["data"]
    data_entry = ctx.plan.datasets[data_name]
    cache = ctx.path(ctx.plan.workspace) / ".cache" / "tokenizers" / (
        f"{name}-{digest([spec, data_entry])[:16]}")
    if cache.is_dir():
        return _auto_tokenizer(cache)
    from llm_recipe.runtime.data import load_rows

    rows = load_rows(data_name, _rooted(ctx, data_entry))
    tokenizer = models.train_tokenizer(
        [text for row in rows for text in row_texts(row)],
        vocab_size=spec["train"]["vocab_size"], min_frequency=spec["train"]["min_frequency"],
        chat_template=spec.get("chat_template"))
    from llm_recipe.runtime.distributed import is_main

    if is_main():  # every rank trains the same tokenizer; one publishes it
        with atomic_dir(cache) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return tokenizer


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
