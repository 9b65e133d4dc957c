"""Named chat templates: ``tokenizer: {chat_template: chatml}`` and friends.

A model family's chat format is a contract between its tokenizer and the weights: an
instruct model answers well only when prompted in the format it was tuned on, and a
model fine-tuned here must be prompted later (eval, rollout, serving) in the format it
was trained on. Writing those Jinja templates by hand in every recipe is where they go
wrong, so the common ones are registered here by name, as Axolotl (``chat_template:
chatml``), LLaMA-Factory (``template: llama3``) and torchtune (``ChatMLTemplate``) do.

Each entry renders **exactly** what the family's official ``tokenizer_config.json``
template renders (the source is named on each entry; tests/unit/compiler/test_chat_templates.py
compares both renderings of a fixed conversation), with one addition that changes no
output: ``{% generation %}`` markers around what the assistant says, which trl's
``assistant_only_loss`` needs to mask everything else out of the loss (trl 1.16 swaps in
its own training template only for models it recognises, and warns when the turn's
end-of-turn token is not inside the markers; it is, in every template here).

The registry is plain data and jinja2, so the compiler checks names (and the syntax of
a custom template) at plan time, and the template's text is part of the model's
fingerprint: changing it here makes every stage built on the model stale.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError


@dataclass(frozen=True)
class ChatTemplate:
    """A named template: its Jinja text, the control tokens it writes, where it comes from."""

    name: str
    text: str
    control_tokens: tuple[str, ...]
    """Tokens the format is built from: added (as special tokens, so each is one id and the
    model can learn to emit it) to a tokenizer that lacks them, e.g. a trained one."""
    source: str


_CHATML = (
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'assistant' %}\n"
    "        {{- '<|im_start|>assistant\\n' }}\n"
    "        {%- generation %}\n"
    "        {{- message['content'] + '<|im_end|>' + '\\n' }}\n"
    "        {%- endgeneration %}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2's is ChatML that opens with a default system message when none is given.
_QWEN2 = _CHATML.replace(
    "{%- for message in messages %}\n",
    "{%- for message in messages %}\n"
    "    {%- if loop.first and messages[0]['role'] != 'system' %}\n"
    "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n", 1)

_LLAMA3 = (
    "{%- for message in messages %}\n"
    "    {%- if loop.index0 == 0 %}{{- bos_token }}{%- endif %}\n"
    "    {%- if message['role'] == 'assistant' %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "        {%- generation %}\n"
    "        {{- message['content'] | trim + '<|eot_id|>' }}\n"
    "        {%- endgeneration %}\n"
    "    {%- else %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

_MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must"
    " alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {%- generation %}\n"
    "        {{- ' ' + message['content'] + eos_token }}\n"
    "        {%- endgeneration %}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the"
    " exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

def _gemma(opening: str, loop_over: str, user_prefix: str) -> str:
    """Gemma's turns: ``opening`` handles a system message, the loop runs over
    ``loop_over``, and a user turn's content is preceded by ``user_prefix`` (Gemma 3
    folds the system message into the first user turn; Gemma refuses one)."""
    return (
        "{{- bos_token -}}\n"
        + opening
        + "{%- for message in " + loop_over + " -%}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        "        {{- raise_exception('Conversation roles must alternate"
        " user/assistant/user/assistant/...') -}}\n"
        "    {%- endif -%}\n"
        "    {%- if message['role'] == 'assistant' -%}\n"
        "        {{- '<start_of_turn>model\\n' -}}\n"
        "        {%- generation -%}\n"
        "            {{- message['content'] | trim + '<end_of_turn>\\n' -}}\n"
        "        {%- endgeneration -%}\n"
        "    {%- else -%}\n"
        "        {{- '<start_of_turn>' + message['role'] + '\\n'"
        + user_prefix + " + message['content'] | trim"
        " + '<end_of_turn>\\n' -}}\n"
        "    {%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{- '<start_of_turn>model\\n' -}}\n"
        "{%- endif -%}\n"
    )


_GEMMA = _gemma(
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {{- raise_exception('System role not supported') -}}\n"
    "{%- endif -%}\n",
    "messages", "")

_GEMMA3 = _gemma(
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = '' -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n",
    "loop_messages", " + (first_user_prefix if loop.first else '')")

TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (
    ChatTemplate("chatml", _CHATML, ("<|im_start|>", "<|im_end|>"),
                 "ChatML as shipped by teknium/OpenHermes-2.5-Mistral-7B (the template of "
                 "the transformers chat-templating guide)"),
    ChatTemplate("llama-3", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                 "meta-llama/Meta-Llama-3-8B-Instruct"),
    ChatTemplate("mistral", _MISTRAL, (),
                 "mistralai/Mistral-7B-Instruct-v0.2 (Mistral's 'v1' template, system "
                 "message before the first user turn)"),
    ChatTemplate("qwen2", _QWEN2, ("<|im_start|>", "<|im_end|>"),
                 "Qwen/Qwen2-7B-Instruct (ChatML with a default system message)"),
    ChatTemplate("gemma", _GEMMA, ("<start_of_turn>", "<end_of_turn>"),
                 "google/gemma-7b-it and google/gemma-2-9b-it (no system role)"),
    ChatTemplate("gemma3", _GEMMA3, ("<start_of_turn>", "<end_of_turn>"),
                 "google/gemma-3-*-it, text content (the system message opens the first "
                 "user turn)"),
)}
"""Every named template; the keys are what ``chat_template:`` accepts."""


def is_jinja(value: str) -> bool:
    """A custom template (Jinja text) rather than a name."""
    return "{%" in value or "{{" in value


def template_text(value: str) -> str:
    """The Jinja text a ``chat_template:`` value installs (a name, or the text itself)."""
    return value if is_jinja(value) else TEMPLATES[value].text


def control_tokens(value: str | None) -> tuple[str, ...]:
    """Tokens a named template is built from (none for a custom one: say them in
    ``special_tokens.additional``)."""
    if not value or is_jinja(value):
        return ()
    return TEMPLATES[value].control_tokens


def template_digest(value: str | None) -> str | None:
    """What a named template adds to its model's fingerprint: the text it installs (so an
    edit of the registry makes dependent stages stale). A custom template is in the
    entry already; no template adds nothing."""
    if not value or is_jinja(value) or value not in TEMPLATES:
        return None
    import hashlib

    return hashlib.sha256(TEMPLATES[value].text.encode("utf-8")).hexdigest()


@cache
def environment() -> Any:
    """A jinja2 environment like the one transformers renders chat templates in.

    Same options (sandboxed, ``trim_blocks``, ``lstrip_blocks``, loop controls), the
    same ``raise_exception`` and ``tojson``, and a ``{% generation %}`` tag that renders
    its body: enough to check a template's syntax at plan time and to render one in tests
    without importing transformers.
    """
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render(template: str, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
           **special: str) -> str:
    """``template`` (a name or Jinja text) rendered for ``messages``, as transformers'
    ``apply_chat_template(tokenize=False)`` renders it; ``special`` holds bos_token,
    eos_token and the like."""
    compiled = environment().from_string(template_text(template))
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           **special)


def syntax_problem(text: str) -> str | None:
    """Why Jinja text is not a template (with its line), or None."""
    import jinja2

    try:
        environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return f"line {exc.lineno} of the template: {exc.message}"
    return None


def chat_template_errors(data: dict[str, Any], where: SourceMap) -> list[RecipeError]:
    """``models.X.tokenizer.chat_template``: a known name, or a Jinja template that parses."""
    errors: list[RecipeError] = []
    models = mapping_at(data, "models")
    names = sorted(TEMPLATES)
    for name, model in models.items():
        tokenizer = model.get("tokenizer") if isinstance(model, dict) else None
        value = tokenizer.get("chat_template") if isinstance(tokenizer, dict) else None
        if not isinstance(value, str):
            continue
        at = ("models", name, "tokenizer", "chat_template")
        if is_jinja(value):
            problem = syntax_problem(value)
            if problem:
                errors.append(where.error(
                    at, f"the chat template does not parse: {problem}",
                    expected="a Jinja chat template, or one of: " + ", ".join(names),
                    hint="check the {% %} and {{ }} pairs; a named template is safer"))
            continue
        if value not in TEMPLATES:
            close = difflib.get_close_matches(value, names, n=1, cutoff=0.5)
            errors.append(where.error(
                at, f"unknown chat template '{value}'",
                expected="one of: " + ", ".join(names) + ", or a Jinja template",
                hint=f"did you mean '{close[0]}'?" if close else
                "leave chat_template out to keep the tokenizer's own"))
    return errors
