"""``recipe data``, per stage kind: what each kind's examples are, built by the
function its stage calls (see :mod:`llm_recipe.runtime.data.preview`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llm_recipe.runtime.data.preview import (
    Preview,
    decode_ids,
    model_item,
    require_data,
    stage_tokenizer,
    token_example,
)

if TYPE_CHECKING:
    from llm_recipe.runtime.context import StageContext


def _data_field(ctx: StageContext, split: str) -> str:
    return "validation" if split == "validation" else "data"


def _sft(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """sft: the cached ``input_ids``/``labels`` the stage hands SFTTrainer."""
    from llm_recipe.runtime.stages import sft

    field_name = _data_field(ctx, split)
    _require_split_data(ctx, field_name, command)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    sft.prepare_tokenizer(tokenizer)
    config = sft.SftConfig.from_config(ctx.config)
    dataset, info = sft.tokenized_data(ctx, field_name, tokenizer, config)
    head = dataset.select(range(min(n, len(dataset))))
    examples = []
    for i, row in enumerate(head):
        extra = {"index": i}
        if "seq_lengths" in row:
            extra["seq_lengths"] = list(row["seq_lengths"])
        examples.append(token_example(row["input_ids"], row["labels"], tokenizer, **extra))
    return Preview(ctx.stage.name, ctx.stage.kind, _ref(ctx, field_name), "tokens", split,
                   origin, len(dataset), examples,
                   [f"{info.get('rows', 0):,} rows, {info.get('kept', 0):,} kept "
                    f"(loss: {ctx.config['loss']}, packing: {config.packing})"])


def _pretrain(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """pretrain: the packed blocks (or truncated documents) the Trainer gets."""
    from llm_recipe.runtime.data import inputs
    from llm_recipe.runtime.stages.pretrain import PretrainConfig

    field_name = _data_field(ctx, split)
    _require_split_data(ctx, field_name, command)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    config = PretrainConfig.from_config(ctx.config)
    if inputs.is_streaming(ctx, field_name):
        blocks = inputs.first_blocks(ctx, field_name, tokenizer, config.max_seq_len, n)
        total = None
    else:
        dataset, _ = inputs.pretrain_data(ctx, field_name, tokenizer, config.max_seq_len,
                                          config.packing)
        blocks = [list(ids) for ids in dataset.select(range(min(n, len(dataset))))["input_ids"]]
        total = len(dataset)
    return Preview(ctx.stage.name, ctx.stage.kind, _ref(ctx, field_name), "blocks", split,
                   origin, total, [_block(i, ids, tokenizer) for i, ids in enumerate(blocks)],
                   [f"max_seq_len {config.max_seq_len}, packing: {config.packing}"])


def _block(index: int, ids: list[int], tokenizer: Any, **extra: Any) -> dict[str, Any]:
    """A pretraining block: every token in the loss; ``documents_ended`` counts the eos
    tokens in it (each document ends with one), i.e. how many rows end in this block."""
    eos = tokenizer.eos_token_id
    ended = sum(1 for t in ids if t == eos) if eos is not None else None
    return token_example(ids, None, tokenizer, index=index, documents_ended=ended, **extra)


def _continual(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """continual: each phase's first packed blocks (the trainer's own loader)."""
    from llm_recipe.runtime.continual import trainer
    from llm_recipe.runtime.stages.continual import ContinualConfig

    config = ContinualConfig.from_config(ctx.config)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    examples: list[dict[str, Any]] = []
    names = []
    for phase in config.phases:
        field_name = f"phases.{phase.index}.data"
        require_data(ctx, ctx.input(field_name), command)
        blocks = trainer._blocks(ctx, field_name, f"phase {phase.index} ({phase.data})",
                                 tokenizer, config, phase=phase)
        names.append(phase.data)
        examples.extend(_block(i, ids, tokenizer, phase=phase.name)
                        for i, ids in enumerate(blocks[:n]))
    return Preview(ctx.stage.name, ctx.stage.kind, ", ".join(names), "blocks", split, origin,
                   None, examples, [f"{len(config.phases)} phases, the first {n} blocks of "
                                    f"each; max_seq_len {config.max_seq_len}"])


def _preference(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """dpo / reward_model: the stage's trl rows through the trainer's own preparation."""
    from datasets import Dataset

    field_name = _data_field(ctx, split)
    _require_split_data(ctx, field_name, command)
    if ctx.stage.kind == "dpo":
        from trl import DPOTrainer

        from llm_recipe.runtime.stages import dpo

        config = dpo.DpoConfig.from_config(ctx.config)
        rows = dpo.train_rows(ctx)
        args = dpo.training_arguments(ctx, config)
        prepare = DPOTrainer._prepare_dataset
    else:
        from trl import RewardTrainer

        from llm_recipe.runtime.stages import reward_model

        rm_config = reward_model.RewardModelConfig.from_config(ctx.config)
        rows = reward_model.pair_rows(ctx, field_name)
        args = reward_model.training_arguments(ctx, rm_config)
        prepare = RewardTrainer._prepare_dataset
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    if tokenizer.pad_token is None:  # both trainers set it before preparing
        tokenizer.pad_token = tokenizer.eos_token
    # trl's preparation is per row, then a length filter: preparing a growing head of the
    # rows gives the same first examples as preparing them all
    trainer_shim = _TrainerShim(tokenizer)
    take = max(2 * n, 16)
    while True:
        prepared = prepare(trainer_shim, Dataset.from_list(rows[:take]), tokenizer, args, split)
        if len(prepared) >= n or take >= len(rows):
            break
        take *= 4
    examples = [_pair(i, row, tokenizer) for i, row in
                enumerate(prepared.select(range(min(n, len(prepared)))))]
    return Preview(ctx.stage.name, ctx.stage.kind, _ref(ctx, field_name), "preference", split,
                   origin, len(rows), examples,
                   [f"max_seq_len {ctx.config['train']['max_seq_len']}"])


class _TrainerShim:
    """What trl's ``DPOTrainer._prepare_dataset`` reads of its trainer: the tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer


def _pair(index: int, row: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A prepared pair: dpo's ``prompt_ids``/``chosen_ids``/``rejected_ids`` (the
    completions without the prompt) or the reward model's whole ``chosen_ids`` and
    ``rejected_ids`` (prompt included), each decoded."""
    out: dict[str, Any] = {"index": index}
    for part in ("prompt", "chosen", "rejected"):
        ids = row.get(f"{part}_ids")
        if ids is None:
            continue
        ids = [int(t) for t in ids]
        out[part] = decode_ids(tokenizer, ids)
        out[f"{part}_ids"] = ids
        out[f"{part}_tokens"] = len(ids)
    if "prompt" not in out and isinstance(row.get("prompt"), str):
        out["prompt"] = row["prompt"]  # the reward model scores it inside chosen/rejected
    prompt = out.get("prompt_ids", [])
    out["text"] = decode_ids(tokenizer, prompt + out["chosen_ids"])
    out["input_ids"] = prompt + out["chosen_ids"]
    return out


def _grpo(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """grpo: the prompt rows GRPOTrainer samples from (too long ones dropped as the stage
    drops them), with the reference answer rewards read."""
    from llm_recipe.runtime.stages import grpo

    require_data(ctx, ctx.input("prompts"), command)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    config = grpo.GrpoConfig.from_config(ctx.config)
    rows = grpo.fitting_prompts(ctx, grpo.prompt_rows(ctx), tokenizer, config)
    examples = [_prompt(i, row["prompt"], tokenizer, reference=row.get("answer"))
                for i, row in enumerate(rows[:n])]
    return _prompts(ctx, origin, len(rows), examples)


def _ppo(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """ppo: the prompts the policy generates from, with their reference answers."""
    from llm_recipe.runtime.rl import ppo_inputs

    require_data(ctx, ctx.input("prompts"), command)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    prompts, columns = ppo_inputs.prompt_rows(ctx)
    examples = [_prompt(i, text, tokenizer, reference=columns[i].get("answer"))
                for i, text in enumerate(prompts[:n])]
    return _prompts(ctx, origin, len(prompts), examples)


def _rollout(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """rollout: each sampled question's prompt in every variant, rendered as the
    generator gets it (chat rows in the chat template)."""
    from llm_recipe.runtime.rl.prompts import render
    from llm_recipe.runtime.stages import rollout

    require_data(ctx, ctx.input("prompts"), command)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    config = rollout.RolloutConfig.from_config(ctx.config)
    _, questions, variants, template_from = rollout.sampled_questions(ctx, config)
    examples = [_prompt(i, render(variant, question, tokenizer), tokenizer,
                        reference=question.reference, variant=variant.name,
                        question_id=question.id)
                for i, question in enumerate(questions[:n]) for variant in variants]
    preview = _prompts(ctx, origin, len(questions) * len(variants), examples)
    preview.notes.append(f"direct template from {template_from}; "
                         f"{len(variants)} variant(s) per question")
    return preview


def _eval(ctx: StageContext, *, n: int, split: str, command: str) -> Preview:
    """eval: the prompts each model generates from (or, for perplexity only, the text it
    scores), as the eval stage renders them."""
    from llm_recipe.runtime import metrics as scoring
    from llm_recipe.runtime.stages import eval as eval_stage

    require_data(ctx, ctx.input("data"), command)
    tokenizer, origin = stage_tokenizer(ctx, model_item(ctx), command)
    config = eval_stage.EvalConfig.from_config(ctx.config)
    fmt = ctx.input("data").format or ""
    rows = ctx.rows("data")[: config.limit or None]
    template = eval_stage.prompt_template(config, fmt)
    examples = []
    for i, row in enumerate(rows[:n]):
        if config.generates:
            text = scoring.render_prompt(template, row)
        else:
            context, target = eval_stage._scored_text(fmt, row, template, tokenizer)
            text = context + target
        examples.append(_prompt(i, text, tokenizer,
                                reference=row.get("answer", row.get("completion"))))
    return _prompts(ctx, origin, len(rows), examples)


def _prompt(index: int, text: str, tokenizer: Any, *, reference: str | None,
            **extra: Any) -> dict[str, Any]:
    ids = [int(t) for t in tokenizer(text)["input_ids"]]
    return {"index": index, **extra, "text": text, "input_ids": ids, "tokens": len(ids),
            "reference": reference}


def _prompts(ctx: StageContext, origin: str, total: int,
             examples: list[dict[str, Any]]) -> Preview:
    field_name = "data" if ctx.stage.kind == "eval" else "prompts"
    return Preview(ctx.stage.name, ctx.stage.kind, ctx.input(field_name).ref, "prompts",
                   "train", origin, total, examples)


def _require_split_data(ctx: StageContext, field_name: str, command: str) -> None:
    """The input a split reads (a validation split carves it from ``data``) must exist."""
    item = ctx.input(field_name if ctx.has_input(field_name) else "data")
    require_data(ctx, item, command)


def _ref(ctx: StageContext, field_name: str) -> str:
    if ctx.has_input(field_name):
        return ctx.input(field_name).ref
    from llm_recipe.runtime.data import inputs

    spec = inputs.validation_split(ctx)
    ref = ctx.input("data").ref
    if spec is None:
        return ref
    part = "held-out" if field_name == "validation" else "training"
    return f"{ref} ({part} part of validation_split {spec['size']})"


BUILDERS: dict[str, Callable[..., Preview]] = {
    "sft": _sft, "pretrain": _pretrain, "continual": _continual, "dpo": _preference,
    "reward_model": _preference, "grpo": _grpo, "ppo": _ppo, "rollout": _rollout,
    "eval": _eval}
