"""The ``adapter:`` block at run time: peft configs and 4-bit loading, for every kind.

sft, reward_model, dpo, grpo and ppo train a new LoRA or QLoRA adapter the same way:
refuse to stack one on an adapter input, load the base (in 4-bit for QLoRA, prepared for
k-bit training), and hand the trainer a LoraConfig. One module, so the rules agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute

if TYPE_CHECKING:
    from llm_recipe.runtime.context import StageContext

QLORA_HINT = "pip install 'llm-recipe[qlora]' (bitsandbytes), or use adapter type: lora"


def refuse_stacking(ctx: StageContext, item: Any, adapter: dict[str, Any] | None) -> None:
    """A new adapter block on an input that is already an adapter is an error."""
    if adapter and item.type == "adapter":
        raise RecipeError(
            f"stage {ctx.stage.name}: '{item.ref}' is already an adapter; a second adapter "
            "cannot be stacked on it", path=("stages", ctx.stage.name, "adapter"),
            hint="remove the stage's adapter: block to keep training that adapter, or "
            "start from a stage that produced full weights")


def load_for_training(ctx: StageContext, item: Any, adapter: dict[str, Any] | None, *,
                      gradient_checkpointing: bool) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config or None) for training ``item`` with ``adapter``.

    No adapter: the input loaded trainable (full weights, or an adapter continued).
    LoRA: the input and a LoraConfig. QLoRA: the base in 4-bit, prepared for k-bit
    training, and a LoraConfig.
    """
    if adapter and adapter["type"] == "qlora":
        from peft import prepare_model_for_kbit_training

        model, tokenizer = load_quantized(ctx, item, adapter)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing)
    else:
        model, tokenizer = ctx.load_model(item, trainable=True)
    return model, tokenizer, lora_config(adapter) if adapter else None


def lora_config(adapter: dict[str, Any], task_type: str = "CAUSAL_LM") -> Any:
    """peft's LoraConfig for an adapter block (``SEQ_CLS``: a classifier, whose score head
    peft then keeps trainable and saves with the adapter)."""
    from peft import LoraConfig

    targets = adapter["target_modules"]
    return LoraConfig(r=int(adapter["r"]), lora_alpha=float(adapter["alpha"]),
                      lora_dropout=float(adapter["dropout"]), task_type=task_type,
                      target_modules=targets if targets == "all-linear" else list(targets))


def bnb_config(ctx: StageContext, adapter: dict[str, Any]) -> Any:
    """The 4-bit BitsAndBytesConfig of a QLoRA adapter block; bitsandbytes is optional."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise RecipeError(f"stage {ctx.stage.name}: QLoRA needs bitsandbytes, which is not "
                          "installed", hint=QLORA_HINT) from exc
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=adapter["quant_type"],
        bnb_4bit_use_double_quant=bool(adapter["double_quant"]),
        bnb_4bit_compute_dtype=getattr(torch, compute.compute_dtype(ctx.compute)))


def load_quantized(ctx: StageContext, item: Any, adapter: dict[str, Any]) -> tuple[Any, Any]:
    """(4-bit model, tokenizer) for a model input.

    Weights on disk (a hub or path entry, a stage's model) load straight into 4-bit.
    Random ``init`` weights exist only in memory, so they are written once to the stage
    directory and loaded back quantized.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_recipe.runtime import loading, models

    quantization = bnb_config(ctx, adapter)
    dtype = getattr(torch, compute.torch_dtype(ctx.compute))
    entry = ctx.plan.models.get(item.ref)
    if entry is not None and "init" not in entry:
        if "path" in entry:
            entry = {**entry, "path": str(ctx.path(entry["path"]))}
        model = models.load_pretrained(item.ref, entry, ctx.root, dtype=dtype,
                                       quantization_config=quantization)
        tokenizer = loading.tokenizer_for(ctx, item.ref)
        loading.fit_tokenizer(ctx, item.ref, model, tokenizer)
        return model, tokenizer
    if entry is None:
        path = ctx.path(ctx.plan.stage(item.ref).output.path)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                     quantization_config=quantization)
        return model, AutoTokenizer.from_pretrained(str(path))
    full, tokenizer = ctx.load_model(item)
    staging = ctx.dir / ".qlora-base"
    shutil.rmtree(staging, ignore_errors=True)
    full.save_pretrained(str(staging))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(staging), dtype=dtype,
                                                     quantization_config=quantization)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model, tokenizer
