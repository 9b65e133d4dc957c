"""sft: supervised fine-tuning with trl's SFTTrainer, full, LoRA or QLoRA.

Rows become the dataset shapes trl understands: gsm8k rows are rendered with the
prompt template into prompt/completion pairs (so training sees exactly the prompt eval
will use), prompt_completion rows go as they are, messages rows are conversational
and text rows plain language modelling. ``loss: completion_only`` masks prompts and
non-assistant turns out of the loss (trl's completion-only and assistant-only losses,
the latter through the ``{% generation %}`` markers of the chat template); ``all``
trains on every token. The rows are tokenized and masked here, once per content, the way
trl would (:func:`llm_recipe.runtime.data.examples.sft_examples`), and SFTTrainer trains
on that dataset with its own preparation skipped.

Whether the output is full weights or an adapter is the plan's decision
(``ctx.stage.output.type``): an ``adapter:`` block trains a new LoRA/QLoRA adapter, and an
adapter input without one keeps training that adapter.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime import adapters, compute, training
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.data import PROMPT_TEMPLATE


@dataclass(frozen=True)
class SftConfig:
    completion_only: bool
    packing: bool
    max_seq_len: int
    prompt_template: str | None
    """The recipe's template, if any; gsm8k rows fall back to the one eval uses."""
    adapter: dict[str, Any] | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SftConfig:
        return cls(completion_only=config["loss"] == "completion_only",
                   packing=bool(config["packing"]),
                   max_seq_len=int(config["train"]["max_seq_len"]),
                   prompt_template=config.get("prompt_template"),
                   adapter=config.get("adapter"))


def run(ctx: StageContext) -> StageResult:
    """Fine-tune the input model on the data and write the model or adapter."""
    return training.fit_and_save(ctx, *build_trainer(ctx))


def build_trainer(ctx: StageContext) -> tuple[Any, Any]:
    """(SFTTrainer, tokenizer), ready to train; tests inspect its dataset and batches.

    The rows are rendered and tokenized here, cached by content
    (:func:`llm_recipe.runtime.data.examples.sft_examples`: the ids and masked labels
    trl's own preparation would make), and trl gets the tokenized dataset with its
    preparation skipped.
    """
    from trl import SFTConfig, SFTTrainer

    config = SftConfig.from_config(ctx.config)
    has_validation = ctx.has_validation
    args = compute.training_args(
        SFTConfig, ctx.config, ctx.compute, ctx.checkpoints, has_validation=has_validation,
        max_length=config.max_seq_len, packing=config.packing,
        completion_only_loss=False, assistant_only_loss=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataset_text_field="text")
    model, tokenizer, peft_config = load_policy(ctx, config, args)
    prepare_tokenizer(tokenizer)
    with args.main_process_first(desc="tokenizing", local=False):
        train_data, info = tokenized_data(ctx, "data", tokenizer, config)
        if not info.get("rows"):
            raise RecipeError(f"stage {ctx.stage.name}: dataset '{ctx.input('data').ref}' is "
                              "empty", hint="check the dataset's source and limit")
        _check_kept(ctx, info["rows"], info["kept"], config.max_seq_len, config.packing)
        eval_data = tokenized_data(ctx, "validation", tokenizer, config)[0] if has_validation \
            else None
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=train_data,
        eval_dataset=eval_data if eval_data is not None and len(eval_data) else None,
        callbacks=training.callbacks(ctx))
    return trainer, tokenizer


def prepare_tokenizer(tokenizer: Any) -> None:
    """The pad token trl would set before tokenizing (its own, else eos)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def tokenized_data(ctx: StageContext, field: str, tokenizer: Any,
                   config: SftConfig) -> tuple[Any, dict[str, Any]]:
    """(tokenized dataset, info) of a data or validation input (cached by content).

    The one place the stage's rows become ``input_ids``/``labels``: training and
    ``recipe data`` (:mod:`llm_recipe.runtime.data.preview`) both call it, so the preview
    shows exactly what SFTTrainer gets. ``tokenizer`` is already through
    :func:`prepare_tokenizer`.
    """
    from llm_recipe.runtime.data import inputs

    fmt = ctx.input("data" if field == "validation" and not ctx.has_input("validation")
                    else field).format or "text"
    return inputs.sft_data(
        ctx, field, tokenizer, render=functools.partial(to_trl, fmt=fmt, config=config),
        render_key={"format": fmt, "template": config.prompt_template,
                    "default_template": PROMPT_TEMPLATE},
        completion_only=config.completion_only, max_len=config.max_seq_len,
        packing=config.packing)


def _check_kept(ctx: StageContext, given: int, kept: int, max_seq_len: int,
                packing: bool) -> None:
    """Rows whose prompt alone fills max_length are dropped (as trl does): say so instead
    of failing later."""
    if kept == given or packing:
        return
    if kept == 0:
        raise RecipeError(
            f"stage {ctx.stage.name}: all {given} training examples are dropped: their prompts "
            f"alone fill train.max_seq_len ({max_seq_len} tokens), leaving no answer to learn",
            expected="train.max_seq_len longer than the prompts in tokens",
            hint=f"raise stages.{ctx.stage.name}.train.max_seq_len, or shorten prompt_template")
    ctx.log.line(f"[data] warning: {given - kept} of {given} examples dropped: their prompts "
                 f"fill max_seq_len {max_seq_len}")


def to_trl(row: dict[str, Any], fmt: str, config: SftConfig) -> dict[str, Any]:
    """A canonical row in the shape trl's SFTTrainer expects for its format."""
    if fmt == "gsm8k":
        return {"prompt": render_prompt(config.prompt_template or PROMPT_TEMPLATE,
                                        row["question"]),
                "completion": " " + row["answer"]}
    if fmt == "prompt_completion":
        prompt = row["prompt"]
        if config.prompt_template:
            prompt = render_prompt(config.prompt_template, prompt)
        return {"prompt": prompt, "completion": row["completion"]}
    if fmt == "messages":
        return {"messages": [{"role": m["role"], "content": m["content"]}
                             for m in row["messages"]]}
    if fmt == "text":
        return {"text": row["text"]}
    raise RecipeError(f"sft cannot train on {fmt} data",
                      hint="use text, prompt_completion, messages or gsm8k")


def render_prompt(template: str, text: str) -> str:
    """``template`` with the row's question/prompt filled in ({question} or {prompt})."""
    try:
        return template.format(question=text, prompt=text)
    except (KeyError, IndexError, ValueError) as exc:
        raise RecipeError(f"prompt_template {template!r} cannot be filled ({exc})",
                          hint="use {question} or {prompt} for the row's text and "
                          "double the braces meant literally: {{ }}") from None


def load_policy(ctx: StageContext, config: SftConfig, args: Any) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config) for the stage's input and adapter block.

    No adapter block: full fine-tuning of a model input, or continued training of an
    adapter input (loaded trainable on its base). LoRA: a LoraConfig for trl to wrap the
    model with. QLoRA: the base loaded in 4-bit first (see
    :func:`llm_recipe.runtime.adapters.load_quantized`).
    """
    item = ctx.input("model")
    adapters.refuse_stacking(ctx, item, config.adapter)
    return adapters.load_for_training(ctx, item, config.adapter,
                                      gradient_checkpointing=bool(args.gradient_checkpointing))
