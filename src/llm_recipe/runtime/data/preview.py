"""``recipe data``: a stage's first examples, exactly as the stage will train on them.

A wrong prompt template or loss mask costs a whole run before anyone sees it; this
shows it in seconds. Nothing here re-implements a stage's data preparation: each kind
calls the function its stage calls (sft: :func:`llm_recipe.runtime.stages.sft.
tokenized_data`, pretrain: :func:`llm_recipe.runtime.data.inputs.pretrain_data`, dpo and
reward_model: the stage's trl rows through trl's own ``_prepare_dataset``, grpo/ppo/
rollout: the stage's prompt functions), so the preview cannot drift from training.

The stage runs nowhere: its context has a disabled log (nothing is written to its
folder; the lines it would log are kept as :attr:`Preview.notes`), tokenized data goes
through the shared, content-keyed cache under ``<workspace>/.cache`` (a later run
reuses it). The tokenizer is the one the stage would get: a ``models:`` entry's
(:func:`llm_recipe.runtime.loading.tokenizer_for`), a finished upstream stage's saved
one, or, for an upstream stage that has not run, the tokenizer it would save: every
training kind writes its input's tokenizer unchanged (at most a pad token set, which
no token id depends on), so the walk goes down the lineage to the ``models:`` entry.
Data produced by an upstream stage (a preferences stage's pairs) cannot be guessed:
that is a RecipeError naming the command to run first.

Module-level imports stay torch-free (the CLI imports this only when the command runs,
but :func:`spans` and :class:`Preview` are plain data, tested without torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.errors import RecipeError

if TYPE_CHECKING:
    from llm_recipe.compiler.plan import Plan, StageInput, StagePlan
    from llm_recipe.runtime.context import StageContext

IGNORE = -100
"""The label of a token that is not in the loss (the ``ignore_index`` of every trainer)."""

SHAPES = {"sft": "tokens", "pretrain": "blocks", "continual": "blocks", "dpo": "preference",
          "reward_model": "preference", "grpo": "prompts", "ppo": "prompts",
          "rollout": "prompts", "eval": "prompts"}
"""What a kind's examples are: masked token sequences, packed blocks, preference pairs, or
prompts for generation. Kinds not listed (preferences) have no training data."""

KEEPS_TOKENIZER = ("pretrain", "sft", "dpo", "grpo", "ppo", "reward_model", "continual")
"""Kinds whose output carries their input model's tokenizer unchanged (ids-wise)."""


@dataclass
class Preview:
    """The examples of one stage's training (or validation) data, as plain data."""

    stage: str
    kind: str
    dataset: str
    """The input the examples come from (several names joined for continual phases)."""
    shape: str
    """tokens | blocks | preference | prompts (see :data:`SHAPES`)."""
    split: str
    """train | validation."""
    tokenizer: str
    """Where the tokenizer came from, in words."""
    total: int | None
    """How many examples the whole split has, when known."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the stage would have logged ([data] lines: cache reused/built, split...)."""

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "kind": self.kind, "dataset": self.dataset,
                "shape": self.shape, "split": self.split, "tokenizer": self.tokenizer,
                "total": self.total, "examples": self.examples, "notes": self.notes}


# ---------------------------------------------------------------------- plain helpers


def spans(ids: Sequence[int], in_loss: Sequence[bool],
          decode: Callable[[list[int]], str]) -> list[dict[str, Any]]:
    """The sequence as runs of tokens that are all in the loss or all out of it, each
    decoded on its own: ``[{"text", "in_loss", "tokens"}]``. What the printed view
    colours (or marks), so a prompt that leaks into the loss shows at a glance."""
    out: list[dict[str, Any]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or bool(in_loss[i]) != bool(in_loss[start]):
            out.append({"text": decode(list(ids[start:i])), "in_loss": bool(in_loss[start]),
                        "tokens": i - start})
            start = i
    return out


def token_example(ids: Sequence[int], labels: Sequence[int] | None, tokenizer: Any,
                  **extra: Any) -> dict[str, Any]:
    """One tokenized example in the JSON shape: text, ids, labels, loss mask, the runs in
    and out of the loss and each token's string (labels None: every token is in the loss,
    as in pretraining)."""
    ids = [int(t) for t in ids]
    labels = list(ids) if labels is None else [int(t) for t in labels]
    mask = [int(label != IGNORE) for label in labels]
    return {**extra, "text": decode_ids(tokenizer, ids), "input_ids": ids, "labels": labels,
            "loss_mask": mask, "tokens": len(ids), "in_loss": sum(mask),
            "spans": spans(ids, [bool(m) for m in mask], lambda part: decode_ids(tokenizer, part)),
            "pieces": [str(p) for p in tokenizer.convert_ids_to_tokens(ids)]}


def decode_ids(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------- entry point


def preview(plan: Plan, name: str, root: Path, *, n: int = 5, validation: bool = False,
            command: str = "recipe run FILE") -> Preview:
    """The first ``n`` examples of stage ``name`` as it will train on them.

    ``command`` is how the user runs this recipe (``recipe run r.yaml -p tiny``): the
    hint of an error about an upstream stage that has not run adds ``--only STAGE``.
    """
    from llm_recipe.runtime.stage_output import stage_named

    if n < 1:
        raise RecipeError(f"--n must be at least 1, not {n}")
    stage = stage_named(plan, name)
    shape = SHAPES.get(stage.kind)
    if shape is None:
        what = ("builds preference pairs from rollouts, it does not train"
                if stage.kind == "preferences" else "has no training examples")
        raise RecipeError(f"stage {name} ({stage.kind}) has no training data to show: it {what}",
                          hint="show the data of a stage that trains or generates on it "
                          "(sft, pretrain, dpo...)")
    ctx, notes = stage_context(plan, stage, root)
    if validation and not _has_validation(ctx):
        raise RecipeError(f"stage {name} has no validation data",
                          hint=f"give stages.{name} a validation: DATASET, or validation_split: "
                          "{size: 0.1}"
                          if stage.kind in ("sft", "pretrain", "reward_model") else
                          f"{stage.kind} stages take no validation data")
    from llm_recipe.runtime.data.preview_kinds import BUILDERS
    from llm_recipe.runtime.quiet import quiet_libraries

    builder = BUILDERS[stage.kind]
    quiet_libraries()  # what a run silences, silenced here too
    result = builder(ctx, n=n, split="validation" if validation else "train", command=command)
    result.notes[:0] = notes
    return result


def stage_context(plan: Plan, stage: StagePlan, root: Path) -> tuple[StageContext, list[str]]:
    """A context for the stage outside any run: its log writes nothing and keeps its
    lines in the returned list instead. The log is given ``root`` as its folder, which
    exists: a StageLog creates its folder, and the stage's must not appear (an empty
    stage folder is a stage that started)."""
    from llm_recipe.runtime.context import StageContext
    from llm_recipe.runtime.log import StageLog

    lines: list[str] = []

    class _Kept(StageLog):
        def line(self, text: str) -> None:
            lines.append(text)

    log = _Kept(root, stage.name, enabled=False)
    return StageContext(plan=plan, stage=stage, root=root, log=log), lines


def _has_validation(ctx: StageContext) -> bool:
    return ctx.stage.kind in ("sft", "pretrain", "reward_model") and ctx.has_validation


# ---------------------------------------------------------------------- upstream stages


def _complete(ctx: StageContext, stage: StagePlan) -> bool:
    from llm_recipe.compiler.status import read_manifest
    from llm_recipe.runtime.integrity import stage_path

    manifest = read_manifest(stage_path(ctx.root, stage.dir))
    return manifest is not None and manifest.get("status") == "complete"


def run_hint(ctx: StageContext, name: str, command: str) -> str:
    """The commands that make stage ``name``'s output: ``--only`` for it and for each
    unfinished stage it needs, in plan order (``--only`` wants its upstream fresh)."""
    plan = ctx.plan
    needed: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in needed:
            continue
        stage = plan.stage(current)
        if current == name or not _complete(ctx, stage):
            needed.add(current)
            pending.extend(stage.upstream)
    order = [s.name for s in plan.stages if s.name in needed]
    return "; then ".join(f"{command} --only {s}" for s in order)


def require_data(ctx: StageContext, item: StageInput, command: str) -> None:
    """Refuse a dataset input made by an upstream stage that has not finished."""
    if item.producer is None:
        return
    producer = ctx.plan.stage(item.producer)
    if not _complete(ctx, producer):
        raise RecipeError(
            f"stage {ctx.stage.name} trains on '{item.ref}', the output of stage "
            f"{producer.name} ({producer.kind}), which has not run",
            hint=f"run it first: {run_hint(ctx, producer.name, command)}")


def stage_tokenizer(ctx: StageContext, item: StageInput, command: str) -> tuple[Any, str]:
    """(tokenizer, where it came from) of a model input, as the stage would load it."""
    return _tokenizer_of(ctx, item.ref, command, [])


def _tokenizer_of(ctx: StageContext, name: str, command: str,
                  via: list[str]) -> tuple[Any, str]:
    from llm_recipe.runtime.loading import tokenizer_for

    through = f" (through {', '.join(via)}, not run yet)" if via else ""
    if name in ctx.plan.models:
        return tokenizer_for(ctx, name), f"{name} (models: entry){through}"
    stage = ctx.plan.stage(name)
    if stage.output.type in ("model", "adapter") and _complete(ctx, stage):
        from transformers import AutoTokenizer

        path = ctx.path(stage.output.path)
        return AutoTokenizer.from_pretrained(str(path)), f"stage {name}'s output{through}"
    if stage.kind not in KEEPS_TOKENIZER:
        raise RecipeError(
            f"stage {ctx.stage.name} takes its tokenizer from stage {name}, which has not run",
            hint=f"run it first: {run_hint(ctx, name, command)}")
    from llm_recipe.compiler.kinds import KINDS_BY_NAME

    policy = KINDS_BY_NAME[stage.kind].policy_field
    source = next((i for i in stage.inputs if i.field == policy), None)
    if source is None:
        raise RecipeError(f"stage {ctx.stage.name}: cannot tell which tokenizer stage {name} "
                          "writes", hint=f"run it first: {run_hint(ctx, name, command)}")
    # a patch carries no tokenizer of its own: its base's is used, run or not
    return _tokenizer_of(ctx, source.ref, command,
                         via if stage.output.type == "patch" else [*via, name])


def model_item(ctx: StageContext) -> StageInput:
    from llm_recipe.compiler.kinds import KINDS_BY_NAME

    policy = KINDS_BY_NAME[ctx.stage.kind].policy_field
    if policy is not None and ctx.has_input(policy):
        return ctx.input(policy)
    return ctx.inputs_under("models")[0]  # eval: the first model it evaluates
