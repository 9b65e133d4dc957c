"""pretrain: causal language modelling on text rows, from random init or continued.

Texts are tokenized once, then either packed (concatenated with eos between documents
and cut into blocks of ``train.max_seq_len``, so no compute is spent on padding) or,
with ``packing: false``, kept one row per sequence, truncated and padded per batch.
The Hugging Face Trainer does the loop; devices, precision, schedule and checkpointing
come from :mod:`llm_recipe.runtime.compute`, logs/resume/output from
:mod:`llm_recipe.runtime.training`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import compute, training
from llm_recipe.runtime.context import StageContext, StageResult


@dataclass(frozen=True)
class PretrainConfig:
    packing: bool
    max_seq_len: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PretrainConfig:
        return cls(packing=bool(config["packing"]), max_seq_len=int(config["train"]["max_seq_len"]))


def run(ctx: StageContext) -> StageResult:
    """Train the input model on the data's text and write the full model."""
    return training.fit_and_save(ctx, *build_trainer(ctx))


def build_trainer(ctx: StageContext) -> tuple[Any, Any]:
    """(Trainer, tokenizer), ready to train; separate from :func:`run` so tests can
    inspect the data and batches a run would use."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    config = PretrainConfig.from_config(ctx.config)
    model, tokenizer = ctx.load_model(ctx.input("model"), trainable=True)
    train_ids = sequences(ctx.rows("data"), tokenizer, config)
    if not train_ids:
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{ctx.input('data').ref}' has no text",
                          hint="check the dataset (format: text, a 'text' column)")
    has_validation = ctx.has_input("validation")
    eval_ids = sequences(ctx.rows("validation"), tokenizer, config) if has_validation else None
    args = compute.training_args(TrainingArguments, ctx.config, ctx.compute, ctx.checkpoints,
                                 has_validation=has_validation)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": train_ids}),
        eval_dataset=Dataset.from_dict({"input_ids": eval_ids}) if eval_ids else None,
        data_collator=training.CausalLMCollator(training.pad_id(tokenizer)),
        processing_class=tokenizer,
        callbacks=training.callbacks(ctx),
    )
    return trainer, tokenizer


def sequences(rows: list[dict[str, Any]], tokenizer: Any,
              config: PretrainConfig) -> list[list[int]]:
    """Token id sequences to train on: packed blocks, or one truncated sequence per row.

    Each document ends with eos, so the model learns where text stops and, when
    packed, that what follows eos is unrelated. A packed final remainder shorter than a
    block is dropped, unless it is all there is.
    """
    texts = [row["text"] for row in rows if row["text"].strip()]
    if not texts:
        return []
    eos = tokenizer.eos_token_id
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    docs = [list(ids) + ([eos] if eos is not None else []) for ids in encoded]
    size = config.max_seq_len
    if not config.packing:
        return [doc[:size] for doc in docs]
    stream = [token for doc in docs for token in doc]
    blocks = [stream[i:i + size] for i in range(0, len(stream), size)]
    if len(blocks) > 1 and len(blocks[-1]) < size:
        blocks.pop()
    return blocks
