"""`recipe generate` / `recipe chat` without torch: which prompt rendering a stage's model
gets (from the plan), the generation settings, and the CLI's plain helpers. The model
side runs in tests/integration/test_generate.py."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import tiny_recipe
from llm_recipe.chat_command import expand_prompts, run_hint
from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.plan import Plan
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.data import PROMPT_TEMPLATE
from llm_recipe.runtime.generate import (
    CHAT,
    DEFAULT_MAX_NEW_TOKENS,
    RAW,
    TRAINED,
    planned_max_new_tokens,
    prompt_format,
    settings,
)

ROOT = Path(__file__).resolve().parents[3]

# Every sft data format, a dpo-like chain (sft -> sft) and a model with no sft at all.
FORMATS = """\
recipe: 1
name: formats
seed: 11
models:
  scratch:
    init: {architecture: llama, size: nano, context_length: 192}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 50, format: text}
  arith: {builtin: arithmetic, split: train, n: 8, format: gsm8k}
  pairs: {path: pairs.jsonl, format: prompt_completion}
  chats: {path: chats.jsonl, format: messages}
  prefs: {path: prefs.jsonl, format: preference}
stages:
  pretrain: {kind: pretrain, model: scratch, data: corpus, train: {max_steps: 1}}
  templated:
    kind: sft
    model: pretrain
    data: arith
    prompt_template: "Q: {question}\\nA:"
    train: {max_steps: 1}
  again: {kind: sft, model: templated, data: corpus, train: {max_steps: 1}}
  plain_pairs: {kind: sft, model: pretrain, data: pairs, train: {max_steps: 1}}
  pairs_templated:
    kind: sft
    model: pretrain
    data: pairs
    prompt_template: "### {prompt}\\n"
    train: {max_steps: 1}
  chat: {kind: sft, model: pretrain, data: chats, train: {max_steps: 1}}
  dpo_direct: {kind: dpo, policy: scratch, data: prefs, train: {max_steps: 1}}
  dpo_on_chat: {kind: dpo, policy: chat, data: prefs, train: {max_steps: 1}}
  eval_long:
    kind: eval
    models: [templated]
    data: arith
    generation: {max_new_tokens: 40}
"""


def plan_of(tmp_path: Path, text: str, name: str = "r.yaml") -> Plan:
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    (tmp_path / "chats.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    (tmp_path / "prefs.jsonl").write_text(json.dumps(
        {"prompt": "p", "chosen": "good", "rejected": "bad"}) + "\n")
    path = tmp_path / name
    path.write_text(text)
    return compile_recipe(path, cwd=tmp_path)


@pytest.fixture
def formats(tmp_path: Path) -> Plan:
    return plan_of(tmp_path, FORMATS)


def rendering(plan: Plan, stage: str, *, chat: bool = False, raw: bool = False):
    return prompt_format(plan, plan.stage(stage), has_chat_template=chat, raw=raw)


def test_gsm8k_sft_is_prompted_as_it_trained_and_eval_prompts(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, tiny_recipe())
    found = rendering(plan, "sft")
    assert found.kind == TRAINED and not found.multi_turn
    assert found.render("What is 2+3?") == PROMPT_TEMPLATE.format(question="What is 2+3?")
    assert "'Question: {text}\\nAnswer:'" in found.description
    assert "gsm8k rows as stage sft trained on them" in found.description
    # a chat template does not override the format sft actually trained in
    assert rendering(plan, "sft", chat=True).kind == TRAINED
    assert rendering(plan, "sft", raw=True).render("What is 2+3?") == "What is 2+3?"


def test_the_nearest_sft_in_the_lineage_decides(formats: Plan) -> None:
    templated = rendering(formats, "templated")
    assert templated.render("2+2?") == "Q: 2+2?\nA:"
    assert "stages.templated.prompt_template" in templated.description
    # again trained on text, on top of templated: its own (nearest) sft data says raw
    assert rendering(formats, "again").kind == RAW
    assert "stage again trained on text data" in rendering(formats, "again").description
    assert rendering(formats, "plain_pairs").render("p{x}") == "p{x}"
    assert rendering(formats, "pairs_templated").render("hi") == "### hi\n"
    chat = rendering(formats, "chat", chat=True)
    assert chat.kind == CHAT and chat.multi_turn
    assert "stage chat trained on conversations" in chat.description
    assert rendering(formats, "chat").kind == RAW  # conversations, but no template: as is
    assert rendering(formats, "dpo_on_chat", chat=True).kind == CHAT  # through dpo to sft
    # (pre)trained on text: as is, even with the default template trained tokenizers get
    pretrain = rendering(formats, "pretrain", chat=True)
    assert pretrain.kind == RAW and "stage pretrain trained on text data" in pretrain.description
    # no training stage in the lineage (a hub model): its template when it has one
    assert rendering(formats, "dpo_direct", chat=True).kind == CHAT
    assert "no chat template, and no stage" in rendering(formats, "dpo_direct").description


def test_settings_come_from_the_options_then_the_plan(formats: Plan, tmp_path: Path) -> None:
    templated = formats.stage("templated")
    assert planned_max_new_tokens(formats, templated) == (40, "stages.eval_long.generation")
    assert planned_max_new_tokens(formats, formats.stage("chat")) == (DEFAULT_MAX_NEW_TOKENS,
                                                                      "default")
    chosen = settings(formats, templated)
    assert (chosen.max_new_tokens, chosen.temperature, chosen.top_p, chosen.seed) == \
        (40, 0.0, 1.0, 11)
    assert chosen.describe() == "greedy, seed 11, max_new_tokens 40 " \
        "(stages.eval_long.generation)"
    chosen = settings(formats, templated, max_new_tokens=5, temperature=0.7, top_p=0.9, seed=1)
    assert (chosen.max_new_tokens, chosen.temperature, chosen.top_p, chosen.seed) == \
        (5, 0.7, 0.9, 1)
    assert chosen.describe().startswith("sampling (temperature 0.7, top_p 0.9), seed 1")
    # an eval stage without a generation block: eval's own defaults
    tiny = plan_of(tmp_path, tiny_recipe(max_new_tokens=None), "t.yaml")
    assert planned_max_new_tokens(tiny, tiny.stage("sft"))[0] == 256
    for bad, message in (({"max_new_tokens": 0}, "not a token count"),
                         ({"temperature": -0.1}, "is negative"),
                         ({"top_p": 0.0}, "out of range"), ({"top_p": 1.5}, "out of range")):
        with pytest.raises(RecipeError, match=message):
            settings(formats, templated, **bad)


def test_prompts_from_options_and_stdin() -> None:
    stdin = io.StringIO("first\n\n  \nsecond line\r\n")
    assert expand_prompts(["a", "-", "b"], stdin) == ["a", "first", "second line", "b"]
    with pytest.raises(RecipeError, match="no prompt to complete"):
        expand_prompts(["-"], io.StringIO("\n"))


def test_run_hint_repeats_the_users_profiles_and_overrides() -> None:
    args = argparse.Namespace(file="my recipe.yaml", profile=["tiny"],
                              overrides=["stages.sft.train.lr=1e-4"])
    assert run_hint(args) == \
        "recipe run 'my recipe.yaml' -p tiny --set stages.sft.train.lr=1e-4"


def test_choosing_the_rendering_imports_no_torch(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(tiny_recipe())
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from llm_recipe import chat_command  # noqa: F401
        from llm_recipe.compiler import compile_recipe
        from llm_recipe.runtime.generate import prompt_format, settings
        plan = compile_recipe(Path({str(tmp_path / 'r.yaml')!r}))
        prompt_format(plan, plan.stage("sft"), has_chat_template=False).render("x")
        settings(plan, plan.stage("sft"))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
