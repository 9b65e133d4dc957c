"""What a rollout samples from: questions, prompt variants and the prompts themselves.

Kept apart from the rollout stage because this is where sampling has to agree with
training: the ``direct`` variant is the exact prompt the policy learned with (the
``prompt_template`` of the sft stage in its lineage, filled in as sft fills it, else
what sft uses by default for the row format), and the built-in ``reflective`` and
``deliberative`` variants only put an instruction before that same prompt
(:data:`INSTRUCTIONS`), so every variant still ends where the policy learned to start
answering. A custom ``{name, template}`` is used as written (``{question}`` replaced,
other braces kept). Rows of each prompts format (gsm8k, prompt_completion, messages)
become :class:`Question` s; chat rows are rendered with the tokenizer's chat template.
``n_questions`` is a seeded sample kept in dataset order (:func:`select_questions`).

Plain data in, strings out: no torch, no model, no files, so it is tested on its own and
shared with the rollout benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_recipe.compiler.kinds import KINDS_BY_NAME
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.data import PROMPT_TEMPLATE
from llm_recipe.runtime.metrics import render_prompt as replace_fields

if TYPE_CHECKING:
    from llm_recipe.compiler.plan import Plan, StagePlan

REFLECTIVE = ("Solve the problem step by step, then check your work: re-read the question "
              "and redo each calculation before you give the final answer.")
DELIBERATIVE = ("Before solving, list the quantities the problem gives and what it asks for, "
                "and plan the steps; then carry out the plan one step at a time.")
INSTRUCTIONS = {"direct": "", "reflective": REFLECTIVE, "deliberative": DELIBERATIVE}
"""What each built-in variant puts before the policy's own prompt (a blank line between).
The answer format is left to that prompt: it is what the policy was trained to follow."""
PLAIN_TEMPLATES = {"gsm8k": PROMPT_TEMPLATE, "prompt_completion": "{question}",
                   "messages": "{question}"}
"""The direct prompt per prompts format when the policy's lineage names no template:
what sft trains with (gsm8k rows: data.PROMPT_TEMPLATE; prompts and chat turns as they are)."""


@dataclass(frozen=True)
class Question:
    id: int
    """The row's index in the prompts dataset."""
    text: str
    reference: str
    history: tuple[dict[str, Any], ...] | None = None
    """Chat turns before the question (messages rows); None for plain-text rows."""


@dataclass(frozen=True)
class Variant:
    name: str
    template: str
    builtin: bool
    """Built-ins fill the template as sft does (``str.format``); custom ones by plain
    replacement of ``{question}``, keeping any other braces as written."""

    def render(self, question: str) -> str:
        if self.builtin:
            from llm_recipe.runtime.stages.sft import render_prompt

            return render_prompt(self.template, question)
        return replace_fields(self.template, {"question": question})



def questions_of(rows: Sequence[dict[str, Any]], fmt: str) -> list[Question]:
    """The prompts dataset's rows as questions with their reference answers."""
    out = []
    for index, row in enumerate(rows):
        if fmt == "gsm8k":
            out.append(Question(index, row["question"], row["answer"]))
        elif fmt == "prompt_completion":
            out.append(Question(index, row["prompt"], row["completion"]))
        elif fmt == "messages":
            messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if not users:
                continue
            last = users[-1]
            answer = next((m["content"] for m in messages[last + 1:]
                           if m["role"] == "assistant"), "")
            out.append(Question(index, messages[last]["content"], answer,
                                tuple(messages[:last])))
        else:
            raise RecipeError(f"rollout cannot sample from {fmt} rows",
                              expected="a gsm8k, prompt_completion or messages dataset")
    return out


def select_questions(questions: Sequence[Question], n: int | None, seed: int) -> list[Question]:
    """``n`` questions drawn with the recipe seed, in dataset order; all when n is None
    or not smaller than the dataset."""
    if n is None or n >= len(questions):
        return list(questions)
    chosen = sorted(random.Random(seed).sample(range(len(questions)), n))
    return [questions[i] for i in chosen]


def direct_template(plan: Plan, policy: str, fmt: str) -> tuple[str, str]:
    """(template, where it comes from) of the direct variant for ``policy``'s lineage."""
    if fmt != "messages":
        found = trained_template(plan, policy)
        if found:
            return found[0], f"stages.{found[1]}.prompt_template"
    return PLAIN_TEMPLATES[fmt], ("the sft default for gsm8k rows" if fmt == "gsm8k"
                                  else f"{fmt} rows as they are")


def trained_template(plan: Plan, policy: str) -> tuple[str, str] | None:
    """The prompt_template of the sft stage the policy descends from (sft -> dpo -> ...)."""
    for stage in policy_lineage(plan, policy):
        template = stage.config.get("prompt_template")
        data = next((i for i in stage.inputs if i.field == "data"), None)
        if (stage.kind == "sft" and template and data is not None
                and data.format in ("gsm8k", "prompt_completion")):
            return template, stage.name
    return None


def policy_lineage(plan: Plan, name: str) -> Iterator[StagePlan]:
    """The stage ``name`` and the stages its policy was trained from, nearest first
    (dpo -> sft -> pretrain), through each kind's policy input; stops at a recipe model."""
    names = {s.name for s in plan.stages}
    current: str | None = name
    seen: set[str] = set()
    while current in names and current not in seen:
        seen.add(current)
        stage = plan.stage(current)
        yield stage
        field = KINDS_BY_NAME[stage.kind].policy_field
        current = next((i.ref for i in stage.inputs if i.field == field), None)


def build_variants(specs: Sequence[Any], direct: str) -> list[Variant]:
    """Variants from the recipe: built-in names around ``direct``, or {name, template}."""
    out = []
    for spec in specs:
        if isinstance(spec, str):
            head = INSTRUCTIONS[spec]
            out.append(Variant(spec, f"{head}\n\n{direct}" if head else direct, True))
        else:
            out.append(Variant(spec["name"], spec["template"], False))
    return out


def render(variant: Variant, question: Question, tokenizer: Any) -> str:
    """The prompt the policy is given: the variant's text, inside the chat template for
    chat rows when the tokenizer has one.

    A template that writes the BOS token itself loses it here: the prompt is tokenized
    with special tokens (by the generator, and by DPO later), which adds it once.
    """
    text = variant.render(question.text)
    if question.history is None or not getattr(tokenizer, "chat_template", None):
        return text
    chat = tokenizer.apply_chat_template([*question.history, {"role": "user", "content": text}],
                                         tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    return chat[len(bos):] if bos and chat.startswith(bos) else chat

