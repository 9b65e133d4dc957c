"""``recipe data``: a stage's first examples, through the stage's own data path (CPU).

Nothing trains: the recipes start from a models: entry with ``init:`` and a trained
tokenizer, so a preview takes seconds. Each test checks what the command prints or its
--json against what the stage's own preparation gives (sft.tokenized_data, the pretrain
blocks, trl's DPO preparation), so a preview that drifts from training fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import load_rows
from llm_recipe.runtime.loading import tokenizer_for
from llm_recipe.runtime.log import StageLog
from llm_recipe.runtime.stages import pretrain, sft

pytestmark = [pytest.mark.integration]

RECIPE = """\
recipe: 1
name: peek
seed: 7
models:
  scratch:
    init: {architecture: llama, size: nano, context_length: 192}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 200, format: text}
  arith: {builtin: arithmetic, split: train, n: 24, format: gsm8k}
  chats: {path: chats.jsonl, format: messages}
  pairs: {path: pairs.jsonl, format: preference}
compute: {launcher: local, gpus_per_node: 0, precision: fp32}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {max_steps: 2, max_seq_len: 48}
  sft:
    kind: sft
    model: pretrain
    data: arith
    train: {max_steps: 2, max_seq_len: 160}
  chat:
    kind: sft
    model: scratch
    data: chats
    train: {max_steps: 2, max_seq_len: 192}
  pref:
    kind: dpo
    policy: scratch
    data: pairs
    train: {max_steps: 2, max_seq_len: 128}
  rollout:
    kind: rollout
    policy: scratch
    prompts: arith
    n_questions: 2
  prefs:
    kind: preferences
    rollouts: rollout
  dpo:
    kind: dpo
    policy: sft
    data: prefs
  ev:
    kind: eval
    models: [scratch]
    data: arith
    limit: 4
"""

CHATS = [
    [{"role": "system", "content": "You add numbers."},
     {"role": "user", "content": "What is 2 + 3?"},
     {"role": "assistant", "content": "2 + 3 = 5."},
     {"role": "user", "content": "And 4 + 4?"},
     {"role": "assistant", "content": "4 + 4 = 8."}],
    [{"role": "user", "content": "What is 1 + 6?"},
     {"role": "assistant", "content": "1 + 6 = 7."}],
]
PAIRS = [{"prompt": f"Question: what is {i} + 1?\nAnswer:", "chosen": f" {i + 1}",
          "rejected": f" {i + 2}"} for i in range(6)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peek")
    (root / "r.yaml").write_text(RECIPE)
    (root / "chats.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS))
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return root


def data(root: Path, monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.chdir(root)
    code = main(["data", "r.yaml", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def preview_json(root: Path, monkeypatch, capsys, *argv: str) -> dict:
    code, out, err = data(root, monkeypatch, capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def stage_context(root: Path, name: str) -> StageContext:
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root, name, enabled=False))


def test_sft_completion_only_masks_the_prompt_as_the_stage_does(workspace, monkeypatch,
                                                                capsys):
    result = preview_json(workspace, monkeypatch, capsys, "sft", "--n", "3")
    assert (result["stage"], result["kind"], result["dataset"]) == ("sft", "sft", "arith")
    assert "through pretrain, not run yet" in result["tokenizer"]
    examples = result["examples"]
    assert len(examples) == 3 and result["total"] == 24
    for example in examples:
        masked, trained = example["spans"]
        assert not masked["in_loss"] and masked["text"].startswith("Question: ")
        assert masked["text"].rstrip().endswith("Answer:")
        assert trained["in_loss"] and "####" in trained["text"]
        assert trained["text"].endswith("<|endoftext|>")
        assert example["in_loss"] == trained["tokens"] == sum(example["loss_mask"])
        assert example["labels"][:masked["tokens"]] == [-100] * masked["tokens"]

    # the same ids and labels as the stage's own preparation (the function sft.run calls)
    ctx = stage_context(workspace, "sft")
    tokenizer = tokenizer_for(ctx, "scratch")
    sft.prepare_tokenizer(tokenizer)
    dataset, _ = sft.tokenized_data(ctx, "data", tokenizer, sft.SftConfig.from_config(ctx.config))
    for example, row in zip(examples, dataset.select(range(3)), strict=True):
        assert example["input_ids"] == list(row["input_ids"])
        assert example["labels"] == list(row["labels"])

    code, out, _ = data(workspace, monkeypatch, capsys, "sft", "--n", "1", "--tokens")
    assert code == 0
    assert "[masked: Question: " in out and "-- example 1:" in out
    assert "pos" in out and "loss" in out and "'Q'" in out
    assert not (workspace / "outputs" / "peek" / "sft").exists()  # nothing in its folder


def test_chat_template_with_assistant_only_loss(workspace, monkeypatch, capsys):
    result = preview_json(workspace, monkeypatch, capsys, "chat")
    assert len(result["examples"]) == 2
    for example, chat in zip(result["examples"], CHATS, strict=True):
        trained = [s["text"] for s in example["spans"] if s["in_loss"]]
        masked = "".join(s["text"] for s in example["spans"] if not s["in_loss"])
        answers = [m["content"] for m in chat if m["role"] == "assistant"]
        assert len(trained) == len(answers)
        for text, answer in zip(trained, answers, strict=True):
            assert text.strip().startswith(answer)
        for message in chat:
            if message["role"] != "assistant":
                assert message["content"] in masked
                assert all(message["content"] not in text for text in trained)


def test_pretrain_shows_the_packed_blocks(workspace, monkeypatch, capsys):
    result = preview_json(workspace, monkeypatch, capsys, "pretrain", "--n", "2")
    examples = result["examples"]
    assert [e["tokens"] for e in examples] == [48, 48]
    assert all(e["loss_mask"] == [1] * 48 for e in examples)
    ctx = stage_context(workspace, "pretrain")
    tokenizer = tokenizer_for(ctx, "scratch")
    rows = load_rows("corpus", ctx.plan.datasets["corpus"])
    expected = pretrain.sequences(rows, tokenizer,
                                  pretrain.PretrainConfig.from_config(ctx.config))
    assert [e["input_ids"] for e in examples] == expected[:2]
    eos = tokenizer.eos_token_id
    assert [e["documents_ended"] for e in examples] == [b.count(eos) for b in expected[:2]]

    code, out, _ = data(workspace, monkeypatch, capsys, "pretrain", "--n", "1")
    assert code == 0 and "-- block 1: 48 tokens, all in the loss" in out
    assert "[masked:" not in out


def test_dpo_shows_prompt_chosen_and_rejected_as_trl_prepares_them(workspace, monkeypatch,
                                                                   capsys):
    result = preview_json(workspace, monkeypatch, capsys, "pref", "--n", "2")
    assert result["shape"] == "preference" and result["total"] == 6
    ctx = stage_context(workspace, "pref")
    tokenizer = tokenizer_for(ctx, "scratch")
    eos = tokenizer.eos_token
    for example, pair in zip(result["examples"], PAIRS[:2], strict=True):
        assert example["prompt"] == pair["prompt"]
        assert example["chosen"] == pair["chosen"] + eos
        assert example["rejected"] == pair["rejected"] + eos
        whole = tokenizer(pair["prompt"] + pair["chosen"] + eos)["input_ids"]
        assert example["prompt_ids"] + example["chosen_ids"] == whole
        assert example["prompt_tokens"] == len(example["prompt_ids"])

    code, out, _ = data(workspace, monkeypatch, capsys, "pref", "--n", "1")
    assert code == 0
    assert "prompt:\nQuestion: what is 0 + 1?\nAnswer:\nchosen:\n 1<|endoftext|>" in out
    assert "rejected:\n 2<|endoftext|>" in out


def test_data_from_a_stage_that_has_not_run_names_the_commands(workspace, monkeypatch,
                                                               capsys):
    code, out, err = data(workspace, monkeypatch, capsys, "dpo")
    assert code == 2 and out == ""
    assert "stage prefs (preferences), which has not run" in err
    assert "recipe run r.yaml --only rollout; then recipe run r.yaml --only prefs" in err


def test_validation_without_validation_data_is_refused(workspace, monkeypatch, capsys):
    code, _, err = data(workspace, monkeypatch, capsys, "sft", "--validation")
    assert code == 2 and "stage sft has no validation data" in err
    code, _, err = data(workspace, monkeypatch, capsys, "prefs")
    assert code == 2 and "no training data to show" in err


def test_eval_and_rollout_show_the_prompts_their_models_get(workspace, monkeypatch, capsys):
    from llm_recipe.runtime import metrics
    from llm_recipe.runtime.stages import eval as eval_stage

    result = preview_json(workspace, monkeypatch, capsys, "ev", "--n", "2")
    assert (result["shape"], result["total"]) == ("prompts", 4)  # limit: 4
    ctx = stage_context(workspace, "ev")
    rows = ctx.rows("data")
    template = eval_stage.prompt_template(eval_stage.EvalConfig.from_config(ctx.config),
                                          "gsm8k")
    assert template.startswith("Question: ")  # what sft trains with, by default
    for example, row in zip(result["examples"], rows, strict=False):
        assert example["text"] == metrics.render_prompt(template, row)
        assert example["reference"] and example["reference"] in row["answer"]

    rollout = preview_json(workspace, monkeypatch, capsys, "rollout", "--n", "1")
    examples = rollout["examples"]
    assert len({e["question_id"] for e in examples}) == 1 and len(examples) >= 1
    questions = {r["question"] for r in rows}
    assert all(any(q in e["text"] for q in questions) for e in examples)
    assert all(e["tokens"] == len(e["input_ids"]) > 0 for e in examples)
