"""`recipe generate` and `recipe chat` on trained tiny models, in-process through the CLI.

The key check: a question of the eval data, given to `recipe generate`, gets exactly the
completion the eval stage recorded for it. That holds only when the prompt is rendered
as sft trained and eval prompts (gsm8k's `Question: ...\\nAnswer:`) and generation
matches eval's, so it catches a second prompt formatter drifting from the first.
"""

from __future__ import annotations

import ast
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN, tiny_recipe
from llm_recipe.cli import main
from llm_recipe.runtime.data import PROMPT_TEMPLATE

pytestmark = pytest.mark.integration

# Trained enough (about 15 s) that completions depend on the question: an untrained
# model says the same words to every prompt, and a wrong rendering would go unseen.
TINY = tiny_recipe(TINY_PRETRAIN.replace("max_steps: 12", "max_steps: 60"),
                   "max_steps: 200, batch_size: 8, max_seq_len: 160, lr: 3.0e-3, log_every: 50",
                   max_new_tokens=12)
# A tokenizer with a chat template (chatml), a stage tuned on conversations with it, and
# a stage that is never run.
CHATTY = """\
recipe: 1
name: chatty
seed: 3
models:
  scratch:
    init: {architecture: llama, size: nano, context_length: 192}
    tokenizer: {train: {data: corpus, vocab_size: 300}, chat_template: chatml}
datasets:
  corpus: {builtin: corpus, n: 200, format: text}
  chats: {path: chats.jsonl, format: messages}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {max_steps: 4, batch_size: 8, max_seq_len: 64, lr: 3.0e-3}
  chat:
    kind: sft
    model: pretrain
    data: chats
    train: {max_steps: 2, batch_size: 4, max_seq_len: 128}
  later:
    kind: sft
    model: pretrain
    data: chats
    train: {max_steps: 3, batch_size: 4, max_seq_len: 128}
"""
CHATS = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {n}+1?"},
                                         {"role": "assistant", "content": f"{n + 1}"}]}) + "\n"
                for n in range(8))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """tiny.yaml run in full, chatty.yaml's pretrain and chat (later: never run)."""
    root = tmp_path_factory.mktemp("generate")
    (root / "tiny.yaml").write_text(TINY)
    (root / "chatty.yaml").write_text(CHATTY)
    (root / "chats.jsonl").write_text(CHATS)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert main(["run", "tiny.yaml"]) == 0
        assert main(["run", "chatty.yaml", "--only", "pretrain"]) == 0
        assert main(["run", "chatty.yaml", "--only", "chat"]) == 0
    return root


@pytest.fixture(autouse=True)
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(workspace)
    yield workspace


def recipe(capsys: pytest.CaptureFixture[str], *args: str,
           stdin: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `recipe ARGS` run in-process."""
    capsys.readouterr()
    if stdin is not None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "stdin", io.StringIO(stdin))
            code = main(list(args))
    else:
        code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def generated(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    code, out, err = recipe(capsys, "generate", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def shown_prompts(err: str) -> list[str]:
    """The prompts `recipe chat --show-prompt` printed on stderr, in order."""
    tag = "[recipe] prompt: "
    return [ast.literal_eval(line[len(tag):]) for line in err.splitlines()
            if line.startswith(tag)]


def test_generate_reproduces_the_completions_eval_recorded(
        workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [json.loads(line) for line in
               (workspace / "outputs/tiny/eval/eval.jsonl").read_text().splitlines()]
    sft = [r for r in records if r["model"] == "sft"][:4]
    assert len({r["completion"] for r in sft}) > 1, "the model answers every prompt alike"
    args = ["tiny.yaml", "sft"]
    for record in sft:
        args += ["--prompt", record["question"]]
    result = generated(capsys, *args)
    manifest = json.loads((workspace / "outputs/tiny/sft/manifest.json").read_text())
    assert result["stage"] == "sft" and result["fingerprint"] == manifest["fingerprint"]
    assert result["prompt_format"] == "training_format" and result["stale"] is None
    assert result["generation"] == {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0,
                                    "seed": 7}  # eval's max_new_tokens, the recipe seed
    for record, got in zip(sft, result["results"], strict=True):
        assert got["prompt"] == record["question"]
        assert got["rendered"] == PROMPT_TEMPLATE.format(question=record["question"])
        assert got["completion"] == record["completion"]
        assert got["finish_reason"] in ("eos", "length") and 0 < got["new_tokens"] <= 12
        assert got["finish_reason"] == "eos" or got["new_tokens"] == 12

    # --raw: the question as it is, which this model was not trained to answer
    raw = generated(capsys, "tiny.yaml", "sft", "--raw", "--prompt", sft[0]["question"])
    assert raw["prompt_format"] == "raw"
    assert raw["results"][0]["rendered"] == sft[0]["question"]
    assert raw["results"][0]["completion"] != sft[0]["completion"]  # the format matters

    # plain output: the completions alone on stdout, one per prompt read from stdin
    questions = "".join(r["question"] + "\n" for r in sft[:2])
    code, out, err = recipe(capsys, "generate", "tiny.yaml", "sft", "--prompt", "-",
                            stdin=questions + "\n")
    assert code == 0
    assert out == "".join(r["completion"] + "\n" for r in sft[:2])
    assert "Question: {text}" in err and "max_new_tokens 12" in err

    # another config than the one on disk: used as it is, and the user is told
    code, out, err = recipe(capsys, "generate", "tiny.yaml", "sft", "--set",
                            "stages.sft.train.lr=0.002", "--prompt", sft[0]["question"],
                            "--max-new-tokens", "3")
    assert code == 0 and "warning: stage sft's output is not of the recipe's current" in err


def test_chat_without_template_answers_each_line(capsys: pytest.CaptureFixture[str]) -> None:
    prompts = ["What is 2+3?", "Kai has 2 books. How many books does Kai have?"]
    expected = generated(capsys, "tiny.yaml", "sft", "--prompt", prompts[0],
                         "--prompt", prompts[1])["results"]
    code, out, err = recipe(capsys, "chat", "tiny.yaml", "sft", "--show-prompt",
                            stdin=f"{prompts[0]}\n\n{prompts[1]}\n")
    assert code == 0
    assert out == "".join(r["completion"] + "\n" for r in expected)  # replies, nothing else
    assert shown_prompts(err) == [r["rendered"] for r in expected]  # no history kept
    assert err.count("each line is a prompt of its own (no history") == 1
    assert ">>>" not in out + err

    code, out, _ = recipe(capsys, "chat", "tiny.yaml", "sft", stdin=f"{prompts[0]}\n/exit\n"
                          f"{prompts[1]}\n")
    assert code == 0 and out == expected[0]["completion"] + "\n"


def test_chat_template_renders_turns_and_keeps_history(
        capsys: pytest.CaptureFixture[str]) -> None:
    options = ["chatty.yaml", "chat", "--max-new-tokens", "4"]
    first = generated(capsys, *options, "--prompt", "hello")
    assert first["prompt_format"] == "chat_template"
    assert first["results"][0]["rendered"] == \
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    system = generated(capsys, *options, "--system", "Be brief.", "--prompt", "hello")
    assert system["results"][0]["rendered"].startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n")

    reply = first["results"][0]["completion"]
    code, _, err = recipe(capsys, "chat", *options, "--show-prompt",
                          stdin="hello\nhow are you?\n/reset\nagain\n")
    assert code == 0
    shown = shown_prompts(err)
    assert shown == [
        first["results"][0]["rendered"],
        f"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n{reply}<|im_end|>\n"
        "<|im_start|>user\nhow are you?<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n",  # after /reset
    ]
    assert "no history" not in err

    # the same tokenizer, on the model that only saw text: prompted with the text as is
    pretrained = generated(capsys, "chatty.yaml", "pretrain", "--max-new-tokens", "2",
                           "--prompt", "hello")
    assert pretrained["prompt_format"] == "raw"
    assert pretrained["results"][0]["rendered"] == "hello"


def test_user_errors_exit_2_before_loading_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = recipe(capsys, "generate", "tiny.yaml", "stf", "--prompt", "x")
    assert code == 2 and "no stage named 'stf'" in err and "did you mean 'sft'?" in err
    code, _, err = recipe(capsys, "chat", "tiny.yaml", "eval", stdin="x\n")
    assert code == 2 and "produces report, not a model" in err
    code, _, err = recipe(capsys, "generate", "chatty.yaml", "later", "--prompt", "x")
    assert code == 2 and "stage later has no complete output" in err
    assert "run it first: recipe run chatty.yaml" in err
    code, _, err = recipe(capsys, "generate", "tiny.yaml", "sft", "--prompt", "-", stdin="\n")
    assert code == 2 and "no prompt to complete" in err
    code, _, err = recipe(capsys, "generate", "tiny.yaml", "sft", "--prompt", "x",
                          "--temperature", "-1")
    assert code == 2 and "--temperature -1.0 is negative" in err


def test_a_chat_template_turn_ends_at_its_end_of_turn_token(in_workspace: Path) -> None:
    """ChatML given to a model whose EOS is another token: generation still stops at
    <|im_end|>, not at max_new_tokens."""
    from llm_recipe.compiler import compile_recipe
    from llm_recipe.runtime.generate import Generator, Settings
    from llm_recipe.runtime.stage_output import finished_stage

    plan = compile_recipe(in_workspace / "chatty.yaml")
    finished = finished_stage(plan, "chat", in_workspace, run_hint="recipe run chatty.yaml")
    generator = Generator(finished, Settings(4, 0.0, 1.0, 7, "test"))
    end = generator.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end != generator.tokenizer.eos_token_id and end in generator.stop_ids()
    raw = Generator(finished, Settings(4, 0.0, 1.0, 7, "test"), raw=True)
    assert end not in raw.stop_ids()  # text as is: no turns to end
