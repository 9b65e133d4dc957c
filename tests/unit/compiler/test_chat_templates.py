"""Named chat templates: each renders what its family's official template renders.

The golden strings below were checked against the official ``chat_template`` of each
family's ``tokenizer_config.json``, rendered by transformers' own Jinja environment:

- chatml: teknium/OpenHermes-2.5-Mistral-7B (the ChatML template of the transformers
  chat-templating guide), OFFICIAL["chatml"] below;
- llama-3: meta-llama/Meta-Llama-3-8B-Instruct, as stored by trl 1.16
  (trl/chat_templates/llama3.jinja: "Original Llama 3 chat template");
- mistral: mistralai/Mistral-7B-Instruct-v0.2, Mistral's "v1" template with a system
  prompt (the same text llama.cpp's tests/test-chat-template.cpp carries for it),
  OFFICIAL["mistral"] below;
- qwen2: Qwen/Qwen2-7B-Instruct, OFFICIAL["qwen2"] below;
- gemma: google/gemma-7b-it = google/gemma-2-9b-it (trl/chat_templates/gemma.jinja);
- gemma3: google/gemma-3-*-it (trl/chat_templates/gemma3.jinja), text content.

The trl copies are read from the installed package's files when it is there (without
importing trl, so these tests stay torch-free); the others are quoted here. Rendering
uses :func:`chat_templates.render`, an environment with transformers' options; the
integration tests render the same conversation through a real tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llm_recipe.compiler import chat_templates, compile_recipe
from llm_recipe.errors import RecipeError

CONVERSATION = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5. #### 5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "4 + 4 = 8. #### 8"},
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}

GOLDEN = {
    "chatml": (
        "<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n2 + 3 = 5. #### 5<|im_end|>\n"
        "<|im_start|>user\nAnd 4 + 4?<|im_end|>\n"
        "<|im_start|>assistant\n4 + 4 = 8. #### 8<|im_end|>\n"),
    "llama-3": (
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a careful math tutor.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n2 + 3 = 5. #### 5<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 4 + 4?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4 + 4 = 8. #### 8<|eot_id|>"),
    "mistral": (
        "<s> [INST] You are a careful math tutor.\n\nWhat is 2 + 3? [/INST] 2 + 3 = 5. #### 5</s>"
        " [INST] And 4 + 4? [/INST] 4 + 4 = 8. #### 8</s>"),
    "qwen2": (
        "<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n2 + 3 = 5. #### 5<|im_end|>\n"
        "<|im_start|>user\nAnd 4 + 4?<|im_end|>\n"
        "<|im_start|>assistant\n4 + 4 = 8. #### 8<|im_end|>\n"),
    "gemma3": (
        "<s><start_of_turn>user\nYou are a careful math tutor.\n\nWhat is 2 + 3?<end_of_turn>\n"
        "<start_of_turn>model\n2 + 3 = 5. #### 5<end_of_turn>\n"
        "<start_of_turn>user\nAnd 4 + 4?<end_of_turn>\n"
        "<start_of_turn>model\n4 + 4 = 8. #### 8<end_of_turn>\n"),
}
"""The conversation above, rendered (bos <s>, eos </s>)."""

PROMPT = {  # the system and first user turn, with add_generation_prompt
    "chatml": "<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n"
              "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
    "llama-3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a careful math "
               "tutor.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?"
               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s> [INST] You are a careful math tutor.\n\nWhat is 2 + 3? [/INST]",
    "qwen2": "<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n"
             "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<s><start_of_turn>user\nYou are a careful math tutor.\n\nWhat is 2 + 3?"
              "<end_of_turn>\n<start_of_turn>model\n",
}

GEMMA_NO_SYSTEM = (
    "<bos><start_of_turn>user\nWhat is 2 + 3?<end_of_turn>\n"
    "<start_of_turn>model\n2 + 3 = 5. #### 5<end_of_turn>\n"
    "<start_of_turn>user\nAnd 4 + 4?<end_of_turn>\n"
    "<start_of_turn>model\n4 + 4 = 8. #### 8<end_of_turn>\n")

OFFICIAL = {
    # teknium/OpenHermes-2.5-Mistral-7B, tokenizer_config.json "chat_template"
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
              "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if "
              "add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # Qwen/Qwen2-7B-Instruct, tokenizer_config.json "chat_template"
    "qwen2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != "
             "'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
             "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
             "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
             "'<|im_start|>assistant\n' }}{% endif %}",
    # mistralai/Mistral-7B-Instruct-v0.2, tokenizer_config.json "chat_template" ('v1')
    "mistral": "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = "
               "messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n"
               "{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n"
               "{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if "
               "(message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- "
               "raise_exception('After the optional system message, conversation roles must "
               "alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if "
               "message['role'] == 'user' %}\n        {%- if loop.first and system_message is "
               "defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + "
               "message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' "
               "[INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- "
               "elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + "
               "eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and "
               "assistant roles are supported, with the exception of an initial optional "
               "system message!') }}\n    {%- endif %}\n{%- endfor %}\n",
}
TRL_COPIES = {"llama-3": "llama3.jinja", "gemma": "gemma.jinja", "gemma3": "gemma3.jinja"}


def _trl_copy(name: str) -> str | None:
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" / name
    return path.read_text("utf-8") if path.is_file() else None


def official(name: str) -> str:
    text = OFFICIAL.get(name) or _trl_copy(TRL_COPIES[name])
    if text is None:
        pytest.skip("trl's copy of the official template is not installed")
    return text


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_named_template_renders_the_golden_conversation(name: str) -> None:
    assert chat_templates.render(name, CONVERSATION, **SPECIAL) == GOLDEN[name]
    assert chat_templates.render(name, CONVERSATION[:2], add_generation_prompt=True,
                                 **SPECIAL) == PROMPT[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_the_golden_strings_are_what_the_official_template_renders(name: str) -> None:
    text = official(name)
    assert chat_templates.render(text, CONVERSATION, **SPECIAL) == GOLDEN[name]
    assert chat_templates.render(text, CONVERSATION[:2], add_generation_prompt=True,
                                 **SPECIAL) == PROMPT[name]


def test_gemma_refuses_a_system_message_as_its_official_template_does() -> None:
    import jinja2

    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        chat_templates.render("gemma", CONVERSATION, **SPECIAL)
    special = {"bos_token": "<bos>", "eos_token": "<eos>"}
    assert chat_templates.render("gemma", CONVERSATION[1:], **special) == GEMMA_NO_SYSTEM
    assert chat_templates.render(official("gemma"), CONVERSATION[1:], **special) == \
        GEMMA_NO_SYSTEM


def test_qwen2_adds_its_default_system_message() -> None:
    rendered = chat_templates.render("qwen2", CONVERSATION[1:3])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert rendered == chat_templates.render(OFFICIAL["qwen2"], CONVERSATION[1:3])


@pytest.mark.parametrize("name", sorted(chat_templates.TEMPLATES))
def test_every_template_marks_what_the_assistant_says_and_its_end_of_turn(name: str) -> None:
    # trl's assistant_only_loss masks by {% generation %}; the end-of-turn token must be
    # inside, or the model never learns to stop (trl 1.16 warns).
    text = chat_templates.TEMPLATES[name].text
    body = text[text.index("{%- generation"):text.index("endgeneration")]
    end = {"chatml": "<|im_end|>", "qwen2": "<|im_end|>", "llama-3": "<|eot_id|>",
           "mistral": "eos_token", "gemma": "<end_of_turn>", "gemma3": "<end_of_turn>"}[name]
    assert end in body and "message['content']" in body


def test_names_jinja_and_digests() -> None:
    assert chat_templates.template_text("chatml") == chat_templates.TEMPLATES["chatml"].text
    custom = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_templates.is_jinja(custom) and chat_templates.template_text(custom) == custom
    assert chat_templates.control_tokens("chatml") == ("<|im_start|>", "<|im_end|>")
    assert chat_templates.control_tokens(custom) == () == chat_templates.control_tokens(None)
    assert chat_templates.template_digest(custom) is None
    assert chat_templates.template_digest("chatml") != chat_templates.template_digest("qwen2")
    assert chat_templates.syntax_problem("{% for m in messages %}") is not None
    assert chat_templates.syntax_problem(chat_templates.TEMPLATES["llama-3"].text) is None


RECIPE = """\
recipe: 1
name: chat
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: main
    tokenizer: {TOKENIZER}
datasets:
  chats: {builtin: arithmetic, format: messages, n: 8}
stages:
  sft: {kind: sft, model: base, data: chats, train: {max_steps: 2}}
"""


def _plan(write, tokenizer: str):
    return compile_recipe(write(RECIPE.replace("{TOKENIZER}", tokenizer)))


def test_an_unknown_name_is_refused_with_the_known_ones(write) -> None:
    with pytest.raises(RecipeError) as caught:
        _plan(write, "{chat_template: chatm}")
    error = caught.value
    assert error.message == "unknown chat template 'chatm'"
    assert error.location is not None and error.location.line == 7
    assert "chatml, gemma, gemma3, llama-3, mistral, qwen2" in (error.expected or "")
    assert error.hint == "did you mean 'chatml'?"


def test_a_custom_template_that_does_not_parse_is_refused(write) -> None:
    with pytest.raises(RecipeError, match="the chat template does not parse: line 1"):
        _plan(write, '{chat_template: "{% for m in messages %}{{ m.content }}"}')


def test_the_template_is_part_of_the_model_fingerprint(write, monkeypatch) -> None:
    base = _plan(write, "{chat_template: chatml}")
    other = _plan(write, "{chat_template: qwen2}")
    none = _plan(write, "{special_tokens: {pad: '<pad>'}}")
    stages = [p.stage("sft").fingerprint for p in (base, other, none)]
    assert len(set(stages)) == 3
    # the registry's text counts, not only the name
    monkeypatch.setitem(chat_templates.TEMPLATES, "chatml", chat_templates.ChatTemplate(
        "chatml", chat_templates.TEMPLATES["chatml"].text + " ", (), "edited"))
    assert _plan(write, "{chat_template: chatml}").stage("sft").fingerprint != stages[0]


def test_a_tokenizer_without_a_source_is_the_models_own(write) -> None:
    plan = _plan(write, "{chat_template: llama-3, special_tokens: {eos: '<|eot_id|>', "
                 "additional: ['<tool>']}}")
    assert plan.models["base"]["tokenizer"] == {
        "chat_template": "llama-3", "special_tokens": {"eos": "<|eot_id|>",
                                                        "additional": ["<tool>"]}}
    with pytest.raises(RecipeError, match="'hub' and 'path' cannot be used together"):
        _plan(write, "{hub: gpt2, path: tok, chat_template: chatml}")


def test_an_init_model_still_needs_a_tokenizer_source(write) -> None:
    text = RECIPE.replace("hub: sshleifer/tiny-gpt2\n    revision: main",
                          "init: {architecture: llama, size: nano}")
    with pytest.raises(RecipeError, match="a model built with init has no tokenizer"):
        compile_recipe(write(text.replace("{TOKENIZER}", "{chat_template: chatml}")))
