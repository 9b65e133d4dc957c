"""The Axolotl/TRL settings for real, on nano models (CPU, offline): named chat templates
through a real tokenizer, sft on ChatML text, early stopping, per-epoch evals and saves,
resume_from, NEFTune, dataloader workers and an offline push_to_hub."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import chat_templates, compile_recipe
from llm_recipe.runtime import models
from llm_recipe.runtime.checkpoints import LATEST, read_pointer
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.executor import RunOptions, run_plan
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import sft
from llm_recipe.runtime.tokenizer_setup import customize, fit_embeddings

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

TRAIN = "lr: 1.0e-3, batch_size: 8, max_seq_len: 96, log_every: 1"
RECIPE = f"""\
recipe: 1
name: settings
seed: 3
models:
  chat:
    init: {{architecture: llama, size: nano}}
    tokenizer:
      train: {{data: corpus, vocab_size: 300}}
      chat_template: chatml
      special_tokens: {{eos: "<|im_end|>"}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 200}}
  dialogues: {{builtin: arithmetic, split: train, n: 32, format: messages}}
  held: {{builtin: arithmetic, split: test, n: 8, format: messages}}
  few: {{builtin: arithmetic, split: train, n: 16, format: messages}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  chatml:
    kind: sft
    model: chat
    data: dialogues
    train: {{max_steps: 3, {TRAIN}}}
  stopping:
    kind: sft
    model: chat
    data: dialogues
    validation: held
    train:
      max_steps: 40
      eval_every: 2
      save_every: 2
      early_stopping: {{patience: 1, threshold: 100.0}}
      {TRAIN.replace(", ", chr(10) + "      ")}
  epochs:
    kind: sft
    model: chat
    data: few
    validation: held
    train: {{epochs: 2, eval_every: epoch, save_every: epoch, dataloader_workers: 1, {TRAIN}}}
  base4:
    kind: sft
    model: chat
    data: dialogues
    train: {{max_steps: 4, save_every: 2, keep_checkpoints: 3, {TRAIN}}}
  neftune:
    kind: sft
    model: chat
    data: dialogues
    train: {{max_steps: 2, neftune_noise_alpha: 5, {TRAIN}}}
  pushed:
    kind: sft
    model: chat
    data: few
    train: {{max_steps: 1, {TRAIN}}}
    push_to_hub: {{repo: my-org/nano-chat, token: "${{env:RECIPE_TEST_HF_TOKEN}}"}}
"""
CONVERSATION = [
    {"role": "system", "content": "You are a careful math tutor."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5. #### 5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "4 + 4 = 8. #### 8"},
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("settings")
    (root / "r.yaml").write_text(RECIPE)
    return root


def plan(root: Path, *overrides: str):
    return compile_recipe(root / "r.yaml", cwd=root, overrides=overrides)


def context(root: Path, name: str, *overrides: str) -> StageContext:
    p = plan(root, *overrides)
    stage = p.stage(name)
    return StageContext(p, stage, root=root, log=StageLog(root / stage.dir, name))


def run(root: Path, name: str, *overrides: str, force: bool = False):
    [outcome] = run_plan(plan(root, *overrides), root, RunOptions(
        only=name, force=frozenset({name} if force else ())))
    return outcome


def manifest(root: Path, name: str) -> dict:
    return json.loads((root / "outputs" / "settings" / name / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["What is 2 + 3? 2 + 3 = 5. And 4 + 4? 4 + 4 = 8. You are a careful math tutor."] * 50
    return models.train_tokenizer(texts, vocab_size=200)


@pytest.mark.parametrize("name", sorted(chat_templates.TEMPLATES))
def test_a_real_tokenizer_renders_what_the_registry_renders(tokenizer, name: str) -> None:
    import copy

    tok = copy.deepcopy(tokenizer)
    added = customize(tok, {"chat_template": name,
                            "special_tokens": {"bos": "<s>", "eos": "</s>"}})
    assert {"<s>", "</s>", *chat_templates.TEMPLATES[name].control_tokens} <= set(added)
    conversation = CONVERSATION[1:] if name == "gemma" else CONVERSATION
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert text == chat_templates.render(name, conversation, **special)
    # assistant-only loss: the masked tokens are what the assistant says, end-of-turn included
    out = tok.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    said = tok.decode(masked)
    assert "2 + 3 = 5. #### 5" in said and "4 + 4 = 8. #### 8" in said
    assert "What is" not in said and "tutor" not in said
    end = {"chatml": "<|im_end|>", "qwen2": "<|im_end|>", "llama-3": "<|eot_id|>",
           "mistral": "</s>", "gemma": "<end_of_turn>", "gemma3": "<end_of_turn>"}[name]
    assert said.rstrip().endswith(end)
    assert customize(tok, {"chat_template": name}) == []  # idempotent


def test_sft_with_chatml_trains_on_im_start_text(root: Path) -> None:
    ctx = context(root, "chatml")
    trainer, tokenizer = sft.build_trainer(ctx)
    ids = trainer.train_dataset[0]["input_ids"]
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n" in text
    for token in ("<|im_start|>", "<|im_end|>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == "<|im_end|>"
    assert trainer.model.get_input_embeddings().weight.shape[0] == len(tokenizer)

    outcome = run(root, "chatml")
    assert outcome.action == "ran" and outcome.metrics["steps"] == 3
    output = root / outcome.output
    saved = (output / "chat_template.jinja").read_text()
    assert saved == chat_templates.TEMPLATES["chatml"].text
    config = json.loads((output / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    log = (root / "outputs/settings/chatml/train.log").read_text()
    assert "tokenizer chat: chat template chatml, added" in log


def test_early_stopping_stops_keeps_the_best_and_counts_as_complete(root: Path) -> None:
    outcome = run(root, "stopping")
    record = manifest(root, "stopping")["early_stopping"]
    assert record["stopped"] is True and record["metric"] == "eval_loss"
    step = record["stopped_early_at"]
    assert step < 40 and step % 2 == 0 and record["max_steps"] == 40
    assert record["best_step"] is not None and record["best_step"] <= step
    assert outcome.metrics["stopped_early_at"] == step == outcome.metrics["steps"]
    assert outcome.reason == f"stopped early at step {step}"
    log = (root / "outputs/settings/stopping/train.log").read_text()
    assert f"[train] early stopping at step {step} of 40" in log
    # a later run: complete and fresh, not "partial, resumable"
    assert plan(root).stage("stopping").status["state"] == "fresh"
    assert run(root, "stopping").action == "skipped"
    # killed after the stop but before the manifest: the next run writes the output from
    # the checkpoint early stopping ended at, without training on
    (root / "outputs/settings/stopping/manifest.json").unlink()
    again = run(root, "stopping")
    assert again.action == "resumed" and again.metrics["steps"] == step
    assert manifest(root, "stopping")["early_stopping"]["stopped_early_at"] == step


def test_the_output_of_a_stage_that_stopped_early_is_its_best_checkpoint(root: Path) -> None:
    from safetensors.torch import load_file

    # "higher is better" on a falling loss: the first evaluation stays the best
    upside_down = "stages.stopping.train.early_stopping={patience: 1, mode: max}"
    outcome = run(root, "stopping", upside_down, force=True)
    record = manifest(root, "stopping")["early_stopping"]
    assert (record["best_step"], record["stopped_early_at"]) == (2, 4)
    directory = root / "outputs/settings/stopping"
    best = load_file(str(directory / "checkpoints/checkpoint-2/model.safetensors"))
    last = load_file(str(directory / "checkpoints/checkpoint-4/model.safetensors"))
    written = load_file(str(root / outcome.output / "model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"
    assert written[key].equal(best[key]) and not written[key].equal(last[key])
    evals = {r["step"]: r["loss"] for r in read_metrics(directory) if r["phase"] == "eval"}
    assert sorted(evals) == [2, 4]  # no extra evaluation row
    assert outcome.metrics["eval_loss"] == pytest.approx(evals[2])


def test_evaluations_and_saves_per_epoch_and_their_resume(root: Path) -> None:
    ctx = context(root, "epochs")
    trainer, _ = sft.build_trainer(ctx)
    assert trainer.args.eval_strategy == "epoch" and trainer.args.save_strategy == "epoch"
    assert trainer.args.dataloader_num_workers == 1
    outcome = run(root, "epochs")
    assert outcome.metrics["steps"] == 4  # 16 rows / 8 a step x 2 epochs
    directory = root / "outputs/settings/epochs"
    assert sorted(p.name for p in (directory / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2", "checkpoint-4"]
    assert [r["step"] for r in read_metrics(directory) if r["phase"] == "eval"] == [2, 4]
    assert read_pointer(directory / "checkpoints", LATEST).name == "checkpoint-4"
    (directory / "manifest.json").unlink()
    again = run(root, "epochs")
    assert again.action == "resumed" and again.metrics["steps"] == 4


def test_resume_from_latest_trains_on_and_from_another_runs_checkpoint(root: Path) -> None:
    first = run(root, "base4")
    assert first.metrics["steps"] == 4
    more = ("stages.base4.train.max_steps=6", "stages.base4.train.resume_from=latest")
    assert plan(root, *more).stage("base4").status["state"] == "stale"
    outcome = run(root, "base4", *more)
    assert outcome.action == "resumed" and outcome.metrics["steps"] == 6
    directory = root / "outputs/settings/base4"
    assert manifest(root, "base4")["resumed_from"] == "checkpoint-4"
    assert [r["step"] for r in read_metrics(directory) if r["phase"] == "train"] == [
        1, 2, 3, 4, 5, 6]
    # another stage starts from base4's checkpoint-2 (weights, optimizer, step)
    other = ("stages.neftune.train.max_steps=4",
             "stages.neftune.train.resume_from=outputs/settings/base4/checkpoints/checkpoint-2")
    outcome = run(root, "neftune", *other)
    assert outcome.action == "resumed" and outcome.metrics["steps"] == 4
    assert manifest(root, "neftune")["resumed_from"] == \
        "outputs/settings/base4/checkpoints/checkpoint-2"
    steps = [r["step"] for r in read_metrics(root / "outputs/settings/neftune")
             if r["phase"] == "train"]
    assert steps == [3, 4]
    from llm_recipe.errors import RecipeError

    with pytest.raises(RecipeError, match="is not a checkpoint folder"):
        run(root, "neftune", "stages.neftune.train.resume_from=nowhere/checkpoint-9",
            force=True)


def test_neftune_reaches_the_trainer(root: Path) -> None:
    trainer, _ = sft.build_trainer(context(root, "neftune"))
    assert trainer.args.neftune_noise_alpha == 5.0
    outcome = run(root, "neftune", force=True)
    assert outcome.metrics["steps"] == 2 and outcome.metrics["loss"] > 0


def test_an_offline_push_keeps_the_stage_complete_and_fails_the_run(
        root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    secret = "hf_test_secret_never_written_0123"
    monkeypatch.setenv("RECIPE_TEST_HF_TOKEN", secret)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(root)
    models.hub_reachable.cache_clear()
    try:
        with redirect_stdout(StringIO()):
            code = main(["run", "r.yaml", "--only", "pushed", "-q"])
        err = capsys.readouterr().err
        assert code == 1
        assert "cannot push the output of stage pushed to the Hub (my-org/nano-chat)" in err
        assert "cannot be reached" in err and "the stage is complete" in err
        directory = root / "outputs/settings/pushed"
        assert manifest(root, "pushed")["status"] == "complete"
        assert json.loads((directory / "push.json").read_text())["status"] == "failed"
        # the next run: the stage is fresh, only the push is tried again
        with redirect_stdout(StringIO()) as out:
            code = main(["run", "r.yaml", "--only", "pushed", "--json"])
        rows = json.loads(out.getvalue())["stages"]
        assert code == 1
        assert [(r["kind"], r["action"]) for r in rows] == [("sft", "skipped"),
                                                          ("push", "push failed")]
    finally:
        models.hub_reachable.cache_clear()
    for path in root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".yaml"):
            assert secret not in path.read_text("utf-8", errors="replace"), path


def test_added_tokens_grow_a_pretrained_model(tokenizer, tmp_path: Path) -> None:
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                         intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    rows = []
    for _ in range(2):  # the same new rows on every load of the same base
        tok, grown = copy.deepcopy(tokenizer), copy.deepcopy(model)
        customize(tok, {"chat_template": "chatml", "special_tokens": {"additional": ["<x>"]}})
        assert fit_embeddings(grown, tok, {"special_tokens": {"additional": ["<x>"]}})
        weight = grown.get_input_embeddings().weight
        assert weight.shape[0] == len(tok) == len(tokenizer) + 3
        rows.append(weight[len(tokenizer):].detach().clone())
        assert grown.config.eos_token_id == tok.eos_token_id
    assert torch.equal(rows[0], rows[1])
