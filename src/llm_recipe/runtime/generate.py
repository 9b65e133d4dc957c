"""Prompting a finished stage's model: ``recipe generate`` and ``recipe chat``.

A model answers well only when it is prompted the way it was trained, so the rendering
is decided from the plan, never guessed from the text (:func:`prompt_format`): the
nearest training stage in the model's lineage says what the model learned on.
Conversations (``messages`` data) are rendered with the tokenizer's chat template; gsm8k
and prompt/completion rows with :func:`llm_recipe.runtime.stages.sft.to_trl`, the very
function sft trains with (and whose prompt eval reproduces); a model (pre)trained on text
gets the text as is, and a hub model its chat template when it has one. ``--raw`` skips
all of it. Generation is eval's own (:func:`llm_recipe.runtime.stages.eval.generate_ids`):
the same prompt gives the completion eval recorded.

The plan-only parts (rendering choice, settings) are torch-free; torch and transformers
are imported when a model is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.stage_output import FinishedStage

DEFAULT_MAX_NEW_TOKENS = 256
"""When neither the stage nor an eval of it sets ``generation.max_new_tokens``."""

CHAT, TRAINED, RAW = "chat_template", "training_format", "raw"
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
"""Tokens that end an assistant turn in the common chat templates (ChatML/Qwen, Llama 3,
Gemma, Phi-3)."""
"""How user text becomes a prompt: the tokenizer's chat template, the prompt format the
model was fine-tuned on, or the text as is."""

TRAINED_FORMATS = {"gsm8k": {"question": "", "answer": ""},
                   "prompt_completion": {"prompt": "", "completion": ""}}
"""Row shapes sft renders into prompt/completion pairs: the user's text goes in the
first field, the answer is left empty (only the prompt is used)."""


@dataclass(frozen=True)
class PromptFormat:
    """How a user's text becomes the model's prompt, and why (said once on stderr)."""

    kind: str
    """CHAT, TRAINED or RAW."""
    description: str
    sft: StagePlan | None = None
    """The sft stage whose rendering TRAINED reproduces."""
    data_format: str | None = None

    @property
    def multi_turn(self) -> bool:
        return self.kind == CHAT

    def render(self, text: str, tokenizer: Any = None, *, history: Sequence[dict] = (),
               system: str | None = None) -> str:
        """The prompt string the model is given for ``text`` (after ``history``)."""
        if self.kind == RAW:
            return text
        if self.kind == CHAT:
            messages = [{"role": "system", "content": system}] if system else []
            messages += [*history, {"role": "user", "content": text}]
            return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=True))
        from llm_recipe.runtime.stages.sft import SftConfig, to_trl

        assert self.sft is not None and self.data_format is not None
        row = dict(TRAINED_FORMATS[self.data_format])
        row[next(iter(row))] = text
        return str(to_trl(row, self.data_format, SftConfig.from_config(self.sft.config))["prompt"])


def prompt_format(plan: Plan, stage: StagePlan, *, has_chat_template: bool,
                  raw: bool = False) -> PromptFormat:
    """How to prompt ``stage``'s model so that it sees what it was trained on.

    The nearest stage in the lineage that trained on prompts or text decides, not the
    tokenizer: tokenizers trained here always carry a default chat template, and sft on
    gsm8k or prompt/completion rows does not use it. So a model tuned on those rows is
    prompted in that format, one tuned on conversations with its chat template, one
    (pre)trained on text with the text as is. A model from outside the recipe (no such
    stage: a hub model) gets its chat template when it has one.
    """
    from llm_recipe.runtime.rl.prompts import policy_lineage

    if raw:
        return PromptFormat(RAW, "raw: the text as given (--raw)")
    for trained in policy_lineage(plan, stage.name):
        data = next((i for i in trained.inputs if i.field == "data"), None)
        fmt = data.format if data is not None else None
        if trained.kind == "sft" and fmt in TRAINED_FORMATS:
            template = trained.config.get("prompt_template")
            source = (f"stages.{trained.name}.prompt_template" if template
                      else f"{fmt} rows as stage {trained.name} trained on them")
            if fmt == "prompt_completion" and not template:
                return PromptFormat(TRAINED, f"training format: the prompt as is ({source})",
                                    trained, fmt)
            example = PromptFormat(TRAINED, "", trained, fmt).render("{text}")
            return PromptFormat(TRAINED, f"training format {example!r} ({source})",
                                trained, fmt)
        if trained.kind == "sft" and fmt == "messages" and has_chat_template:
            return PromptFormat(CHAT, f"chat template (stage {trained.name} trained on "
                                "conversations)")
        if trained.kind == "sft" or fmt == "text":
            return PromptFormat(RAW, f"raw: the text as is (stage {trained.name} trained on "
                                f"{fmt} data{'' if has_chat_template else ', no chat template'})")
    if has_chat_template:
        return PromptFormat(CHAT, "chat template (the tokenizer's; no stage of the recipe "
                            "trained the model on prompts)")
    return PromptFormat(RAW, "raw: the text as is (no chat template, and no stage of the "
                        "recipe trained the model on prompts)")


@dataclass(frozen=True)
class Settings:
    """Generation settings of a session: greedy and seeded unless asked otherwise."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    source: str
    """Where max_new_tokens comes from (the option, a stage's generation block, default)."""

    def describe(self) -> str:
        how = ("greedy" if self.temperature == 0
               else f"sampling (temperature {self.temperature}, top_p {self.top_p})")
        return f"{how}, seed {self.seed}, max_new_tokens {self.max_new_tokens} ({self.source})"


def settings(plan: Plan, stage: StagePlan, *, max_new_tokens: int | None = None,
             temperature: float | None = None, top_p: float | None = None,
             seed: int | None = None) -> Settings:
    """The options given, else what the plan says (max_new_tokens of the stage's own
    ``generation`` block, else of an eval stage that evaluates it, so a question gets
    the completion eval recorded), else greedy, top_p 1, the recipe seed, 256 tokens."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RecipeError(f"--max-new-tokens {max_new_tokens} is not a token count",
                          expected="an integer of 1 or more")
    if temperature is not None and temperature < 0:
        raise RecipeError(f"--temperature {temperature} is negative",
                          expected="0 (greedy) or more (sampling)")
    if top_p is not None and not 0 < top_p <= 1:
        raise RecipeError(f"--top-p {top_p} is out of range", expected="0 < P <= 1")
    source = "--max-new-tokens"
    if max_new_tokens is None:
        max_new_tokens, source = planned_max_new_tokens(plan, stage)
    return Settings(max_new_tokens=max_new_tokens,
                    temperature=0.0 if temperature is None else float(temperature),
                    top_p=1.0 if top_p is None else float(top_p),
                    seed=int(plan.recipe.get("seed", 0)) if seed is None else seed,
                    source=source)


def planned_max_new_tokens(plan: Plan, stage: StagePlan) -> tuple[int, str]:
    """(max_new_tokens, where from): the stage's ``generation`` block, else the first eval
    stage evaluating it (its defaults filled as eval fills them), else the default."""
    from llm_recipe.runtime.stages.eval import EvalConfig

    own = (stage.config.get("generation") or {}).get("max_new_tokens")
    if own is not None:
        return int(own), f"stages.{stage.name}.generation"
    for other in plan.stages:
        if other.kind == "eval" and stage.name in (other.config.get("models") or ()):
            return (EvalConfig.from_config(other.config).max_new_tokens,
                    f"stages.{other.name}.generation")
    return DEFAULT_MAX_NEW_TOKENS, "default"


@dataclass(frozen=True)
class Completion:
    """One prompt's result, as ``recipe generate --json`` prints it."""

    prompt: str
    rendered: str
    completion: str
    new_tokens: int
    finish_reason: str
    """"eos" (the model ended it) or "length" (max_new_tokens reached)."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Generator:
    """A stage's model loaded once, completing prompts in its training format."""

    def __init__(self, finished: FinishedStage, options: Settings, *, raw: bool = False) -> None:
        from llm_recipe.runtime import compute
        from llm_recipe.runtime.quiet import quiet_libraries
        from llm_recipe.runtime.stage_output import load_output
        from llm_recipe.runtime.stages.sft import prepare_tokenizer

        quiet_libraries()
        self.finished = finished
        self.settings = options
        model, tokenizer = load_output(finished)
        prepare_tokenizer(tokenizer)  # a pad token for generate, as eval and sft set it
        self.model = model.to(compute.device(finished.stage.compute))
        self.tokenizer = tokenizer
        self.format = prompt_format(finished.plan, finished.stage, raw=raw,
                                    has_chat_template=bool(getattr(tokenizer, "chat_template",
                                                                   None)))

    def stop_ids(self) -> list[int]:
        """The tokenizer's EOS first (what eval stops at), then any other end-of-turn ids
        of the model's generation config (Llama 3 ends a turn with <|eot_id|>) and, under
        a chat template, the template's end-of-turn token when the vocabulary has it
        (ChatML's <|im_end|> is often not the EOS of a model a recipe gave the template)."""
        ids = [self.tokenizer.eos_token_id]
        extra = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids += extra if isinstance(extra, list) else [extra]
        if self.format.kind == CHAT:
            template = str(getattr(self.tokenizer, "chat_template", "") or "")
            vocab = self.tokenizer.get_vocab()
            ids += [vocab[token] for token in END_OF_TURN if token in template and token in vocab]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def complete(self, text: str, *, history: Sequence[dict] = (), system: str | None = None,
                 stream: bool = False) -> Completion:
        """Render ``text`` (after ``history``) and generate its completion; ``stream``
        prints the tokens to stdout as they come."""
        import torch

        from llm_recipe.runtime.stages.eval import generate_ids

        rendered = self.format.render(text, self.tokenizer, history=history, system=system)
        streamer = None
        if stream:
            from transformers import TextStreamer

            streamer = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        started = time.monotonic()
        torch.manual_seed(self.settings.seed)
        (ids, stopped), = generate_ids(
            self.model, self.tokenizer, [rendered], max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature, top_p=self.settings.top_p,
            stop_ids=self.stop_ids(), streamer=streamer,
            # a chat template writes its special tokens itself, as sft tokenizes it
            add_special_tokens=self.format.kind != CHAT)
        return Completion(prompt=text, rendered=rendered,
                          completion=self.tokenizer.decode(ids, skip_special_tokens=True),
                          new_tokens=len(ids) + int(stopped),
                          finish_reason="eos" if stopped else "length",
                          seconds=round(time.monotonic() - started, 3))
