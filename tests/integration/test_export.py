"""`recipe export` on a real tiny workspace: full weights, LoRA with and without --merge,
QLoRA merged into its dequantised base, and the refusals (non-empty -o, unknown stage,
a stage that is not a model, a continual patch).

One module fixture trains the workspace once (a nano llama: 2 pretrain steps, 2 steps
of each adapter); every test exports from it through ``llm_recipe.cli.main``. Logits
are compared on a fixed batch against the stage's output loaded the way a downstream
stage loads it (``stage_output.load_output``), so an export that dropped the adapter, a
tied weight or the tokenizer would fail here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.stage_output import finished_stage, load_output

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
ADAPTER = "{max_steps: 2, batch_size: 4, max_seq_len: 128, lr: 5.0e-2}"
RECIPE = f"""\
recipe: 1
name: ex
seed: 3
models:
  scratch:
    init: {{architecture: llama, size: nano, context_length: 128}}
    tokenizer: {{train: {{data: corpus, vocab_size: 300}}}}
datasets:
  corpus: {{builtin: corpus, n: 64, format: text}}
  train: {{builtin: arithmetic, split: train, n: 16, format: gsm8k}}
  test: {{builtin: arithmetic, split: test, n: 4, format: gsm8k}}
  pairs: {{path: pairs.jsonl, format: preference}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 2, batch_size: 4, max_seq_len: 48, lr: 3.0e-3}}
  lora:
    kind: sft
    model: pretrain
    data: train
    adapter: {{type: lora, r: 4, alpha: 8, dropout: 0.0}}
    train: {ADAPTER}
  qlora:
    kind: sft
    model: pretrain
    data: train
    adapter: {{type: qlora, r: 4, alpha: 8, target_modules: [q_proj, v_proj]}}
    train: {ADAPTER}
  rm:
    kind: reward_model
    model: pretrain
    data: pairs
    adapter: {{type: lora, r: 4, alpha: 8, dropout: 0.0}}
    train: {{max_steps: 2, batch_size: 4, max_seq_len: 64, lr: 5.0e-2}}
  continual:
    kind: continual
    model: pretrain
    phases: [{{name: one, data: corpus, steps: 2}}]
  eval:
    kind: eval
    models: [pretrain]
    data: test
    metrics: [perplexity]
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    (root / "ex.yaml").write_text(RECIPE)
    (root / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is {i}+{i}?", "chosen": str(2 * i),
                    "rejected": str(2 * i + 1)}) + "\n" for i in range(8)))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for stage in ("pretrain", "lora", "rm", *(("qlora",) if HAS_BNB else ())):
            assert main(["run", "ex.yaml", "--only", stage, "--quiet"]) == 0
    return root


@pytest.fixture
def ws(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workspace)
    return workspace


def export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["export", "ex.yaml", *args])
    out, err = capsys.readouterr()
    return code, out, err


def stage_model(root: Path, name: str):
    plan = compile_recipe(root / "ex.yaml", cwd=root)
    finished = finished_stage(plan, name, root, run_hint="-")
    model, tokenizer = load_output(finished)
    return finished, model, tokenizer


def logits(model, tokenizer):
    import torch

    batch = tokenizer(["What is 12 + 7?", "The river runs"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits.float()


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def no_pickles(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_full_weights_export_loads_as_plain_transformers(ws: Path, capsys) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, out, err = export(capsys, "pretrain", "-o", "exported/pretrain")
    assert code == 0, err
    folder = ws / "exported" / "pretrain"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "README.md"} <= files(folder)
    no_pickles(folder)
    assert [p.name for p in folder.parent.iterdir()] == ["pretrain"]  # no temp sibling left
    assert "model.safetensors" in out and 'from_pretrained("exported/pretrain")' in out
    assert "Loading weights" not in out + err

    finished, reference, tokenizer = stage_model(ws, "pretrain")
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert exported_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert exported_tokenizer.chat_template == tokenizer.chat_template
    assert torch.equal(logits(model, exported_tokenizer), logits(reference, tokenizer))

    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "- llm-recipe\n- pretrain\n" in card
    assert "`ex`" in card and "`ex.yaml`" in card and "`pretrain`" in card
    assert finished.fingerprint in card
    assert "## Metrics" in card and "## How to load" in card

    # --merge on full weights: nothing to merge, said, same model
    code, out, _ = export(capsys, "pretrain", "-o", "exported/pretrain2", "--merge", "--json")
    result = json.loads(out)
    assert code == 0 and result["merged"] is False and result["content"] == "full"
    assert result["fingerprint"] == finished.fingerprint and result["stage"] == "pretrain"
    assert "no adapter to merge" in result["notes"][0]
    assert {f["path"] for f in result["files"]} == files(ws / "exported" / "pretrain2")

    # another config in the recipe now: the output on disk is exported, and that is said
    code, out, err = export(capsys, "pretrain", "-o", "exported/stale", "--json",
                            "--set", "stages.pretrain.train.lr=1e-3")
    assert code == 0 and "stale" in err and json.loads(out)["fingerprint"] == finished.fingerprint
    assert "> stale: " in (ws / "exported" / "stale" / "README.md").read_text()


def test_lora_merged_is_a_plain_model_with_the_adapters_logits(ws: Path, capsys) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    code, out, err = export(capsys, "lora", "-o", "exported/lora-merged", "--merge")
    assert code == 0, err
    folder = ws / "exported" / "lora-merged"
    assert "model.safetensors" in files(folder) and "adapter_config.json" not in files(folder)
    no_pickles(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config

    _, peft_model, tokenizer = stage_model(ws, "lora")
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert type(merged).__module__.startswith("transformers.")
    expected = logits(peft_model, tokenizer)
    torch.testing.assert_close(logits(merged, tokenizer), expected, atol=1e-4, rtol=1e-4)
    _, base, _ = stage_model(ws, "pretrain")
    assert (logits(base, tokenizer) - expected).abs().max() > 1e-3  # the adapter matters
    assert "adapter merged" in out


def test_lora_without_merge_writes_the_adapter(ws: Path, capsys) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM

    code, out, err = export(capsys, "lora", "-o", "exported/lora")
    assert code == 0, err
    folder = ws / "exported" / "lora"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
            "README.md"} <= files(folder)
    assert "model.safetensors" not in files(folder)
    no_pickles(folder)
    assert "--merge" in out  # the hint: one full model
    card = (folder / "README.md").read_text()
    assert "library_name: peft" in card and "base model (needed to load it)" in card
    assert str(ws / "outputs" / "ex" / "pretrain" / "model") in card

    _, peft_model, tokenizer = stage_model(ws, "lora")
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(folder)).eval()  # the card's way
    assert torch.equal(logits(loaded, tokenizer), logits(peft_model, tokenizer))


@pytest.mark.skipif(not HAS_BNB, reason="QLoRA needs bitsandbytes")
def test_qlora_merges_into_the_dequantised_base(ws: Path, capsys) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    code, out, err = export(capsys, "qlora", "-o", "exported/qlora", "--merge")
    assert code == 0, err
    folder = ws / "exported" / "qlora"
    assert "dequantised base" in out and "dequantised base" in (folder / "README.md").read_text()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}  # the CPU's compute dtype

    _, peft_model, tokenizer = stage_model(ws, "qlora")  # the adapter on the fp32 base
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(logits(merged, tokenizer), logits(peft_model, tokenizer),
                               atol=1e-4, rtol=1e-4)


def test_a_reward_model_is_exported_as_its_classifier(ws: Path, capsys) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from llm_recipe.runtime.loading import sequence_classifier
    from llm_recipe.runtime.stage_output import context

    code, out, err = export(capsys, "rm", "-o", "exported/rm", "--merge")
    assert code == 0, err
    assert "AutoModelForSequenceClassification" in out
    plan = compile_recipe(ws / "ex.yaml", cwd=ws)
    finished = finished_stage(plan, "rm", ws, run_hint="-")
    reference, tokenizer = sequence_classifier(context(finished), finished.as_input(),
                                               trainable=False)
    merged = AutoModelForSequenceClassification.from_pretrained(str(ws / "exported" / "rm"))
    batch = tokenizer(["What is 1+1? 2", "What is 2+2? 5"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(**batch).logits, reference.eval()(**batch).logits,
                                   atol=1e-4, rtol=1e-4)


def test_non_empty_destination_is_refused_unless_forced(ws: Path, capsys) -> None:
    folder = ws / "exported" / "taken"
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("mine")
    code, _, err = export(capsys, "pretrain", "-o", "exported/taken")
    assert code == 2 and "exists and is not empty" in err and "--force" in err
    assert files(folder) == {"keep.txt"} and (folder / "keep.txt").read_text() == "mine"
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]

    code, _, err = export(capsys, "pretrain", "-o", "exported/taken", "--force")
    assert code == 0, err
    assert "keep.txt" not in files(folder) and "model.safetensors" in files(folder)


def test_refusals_are_user_errors(ws: Path, capsys) -> None:
    code, _, err = export(capsys, "lroa", "-o", "exported/x")
    assert code == 2 and "no stage named 'lroa'" in err and "did you mean 'lora'" in err

    code, _, err = export(capsys, "eval", "-o", "exported/x")
    assert code == 2 and "not a model" in err

    code, _, err = export(capsys, "continual", "-o", "exported/x", "--merge")
    assert code == 2 and "continual patch" in err and "not be a standard architecture" in err
    assert "adapter" in err  # what to do instead

    code, _, err = export(capsys, "pretrain", "-o", "outputs/ex/copy")
    assert code == 2 and "inside the recipe's workspace" in err
    assert not (ws / "exported" / "x").exists() and not (ws / "outputs" / "ex" / "copy").exists()
