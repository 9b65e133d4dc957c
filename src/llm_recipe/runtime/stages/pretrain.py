"""pretrain: causal language modelling on text rows, from random init or continued.

Texts are tokenized once per content (cached under ``<workspace>/.cache/tokenized``, see
:mod:`llm_recipe.runtime.data.blocks`), then either packed (concatenated with eos
between documents and cut into blocks of ``train.max_seq_len``, so no compute is spent
on padding) or, with ``packing: false``, kept one row per sequence, truncated and padded
per batch. A dataset with ``streaming: true`` is read, tokenized and packed on the fly
instead, and resumes from the block it had reached
(:mod:`llm_recipe.runtime.data.stream`). The Hugging Face Trainer does the loop;
devices, precision, schedule and checkpointing come from
:mod:`llm_recipe.runtime.compute`, logs/resume/output from
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
    from transformers import Trainer, TrainingArguments

    from llm_recipe.runtime.data import inputs

    config = PretrainConfig.from_config(ctx.config)
    model, tokenizer = ctx.load_model(ctx.input("model"), trainable=True)
    has_validation = ctx.has_validation
    args = compute.training_args(TrainingArguments, ctx.config, ctx.compute, ctx.checkpoints,
                                 has_validation=has_validation)
    extra: list[Any] = []
    with args.main_process_first(desc="tokenizing", local=False):
        if inputs.is_streaming(ctx, "data"):
            train_data, callback = _stream(ctx, tokenizer, config, args)
            extra.append(callback)
        else:
            train_data, info = inputs.pretrain_data(ctx, "data", tokenizer, config.max_seq_len,
                                                    config.packing)
            if not info.get("sequences"):
                raise RecipeError(f"stage {ctx.stage.name}: dataset "
                                  f"'{ctx.input('data').ref}' has no text",
                                  hint="check the dataset (format: text, a 'text' column)")
        eval_data = None
        if has_validation:
            eval_data, _ = inputs.pretrain_data(ctx, "validation", tokenizer,
                                                config.max_seq_len, config.packing)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data if eval_data is not None and len(eval_data) else None,
        data_collator=training.CausalLMCollator(training.pad_id(tokenizer)),
        processing_class=tokenizer,
        # the stream's state is written into a checkpoint before its files are recorded
        callbacks=[*extra, *training.callbacks(ctx)],
    )
    return trainer, tokenizer


def _stream(ctx: StageContext, tokenizer: Any, config: PretrainConfig,
            args: Any) -> tuple[Any, Any]:
    """The resumable block stream and the callback that checkpoints its position."""
    from llm_recipe.runtime.data import inputs, stream
    from llm_recipe.runtime.distributed import world_size

    if args.dataloader_num_workers:
        # Loader workers would each read the stream, and its position would live in them.
        ctx.log.line("[data] a stream is read in the training process: dataloader workers off")
        args.dataloader_num_workers = 0
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size()
    state = stream.read_state(ctx.resume_from) if ctx.resume_from is not None else None
    if state is not None:
        # The stream continues from its saved position: the trainer must not skip the
        # consumed batches again (which would also read and tokenize them again).
        args.ignore_data_skip = True
    elif ctx.resume_from is not None:
        raise RecipeError(f"stage {ctx.stage.name}: {ctx.resume_from.name} has no stream "
                          "position to resume from", hint="run the stage with --force")
    blocks = inputs.text_stream(ctx, "data", tokenizer, config.max_seq_len, state,
                                window=8 * per_step + 1024)
    return blocks, stream.stream_callback(blocks, ctx.checkpoints, per_step)


def sequences(rows: list[dict[str, Any]], tokenizer: Any,
              config: PretrainConfig) -> list[list[int]]:
    """Token id sequences of text rows, as lists: packed blocks, or one truncated
    sequence per row (what the cached, Arrow path builds; see
    :func:`llm_recipe.runtime.data.blocks.pretrain_reference`)."""
    from llm_recipe.runtime.data.blocks import pretrain_reference

    return pretrain_reference([row["text"] for row in rows], tokenizer, config.max_seq_len,
                              config.packing)
