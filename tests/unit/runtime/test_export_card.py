"""The torch-free parts of ``recipe export``: the model card's text (front matter,
provenance, lineage, settings, metrics, no secrets), the destination checks and the
write-then-rename that leaves nothing half-written. No torch is imported here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.export import (
    check_destination,
    refuse_lone_adapter,
    refuse_patch,
    write_atomically,
)
from llm_recipe.runtime.model_card import (
    ADAPTER,
    MERGED,
    CardFacts,
    model_card,
    safe_overrides,
    training_settings,
)

RECIPE = """\
recipe: 1
name: card
description: A card test.
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  math: {builtin: arithmetic, format: gsm8k, n: 64}
  text: {builtin: corpus, format: text, n: 64}
tracking: {backend: mlflow, uri: "${env:MLFLOW_TRACKING_URI}"}
stages:
  sft:
    kind: sft
    model: base
    data: math
    adapter: {type: lora, r: 8}
    train: {max_steps: 10, lr: 1.0e-4}
    push_to_hub: {repo: me/card, token: "${env:HF_TOKEN}"}
  more:
    kind: sft
    model: sft
    data: math
    train: {max_steps: 5}
  patched:
    kind: continual
    model: base
    phases: [{name: one, data: text, steps: 2}]
"""
FINGERPRINT = "ab" * 32
UPSTREAM = "cd" * 32


@pytest.fixture
def plan(tmp_path: Path):
    (tmp_path / "card.yaml").write_text(RECIPE)
    return compile_recipe(tmp_path / "card.yaml", cwd=tmp_path,
                          overrides=["stages.sft.train.lr=2e-4",
                                     "stages.sft.push_to_hub.token=${env:OTHER_TOKEN}"])


def manifest(stage, **extra):
    return {"status": "complete", "fingerprint": FINGERPRINT, "steps": 10,
            "config": stage.config, "metrics": {"loss": 1.234567891, "steps": 10},
            "inputs": [{"field": i.field, "ref": i.ref, "type": i.type,
                        "fingerprint": UPSTREAM} for i in stage.inputs], **extra}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_says_where_the_model_came_from(plan, tmp_path: Path) -> None:
    stage = plan.stage("sft")
    card = model_card(plan, stage, tmp_path, manifest(stage),
                      CardFacts(out="exported/sft", content=MERGED, notes=("merged, said",)))
    assert front_matter(card) == {"library_name": "transformers",
                                  "base_model": "sshleifer/tiny-gpt2",
                                  "tags": ["llm-recipe", "sft"]}
    assert "# card / sft" in card and "A card test." in card
    assert "`card.yaml`" in card and "kind `sft`" in card
    assert f"fingerprint: `{FINGERPRINT}`" in card
    assert "`stages.sft.train.lr=2e-4`" in card
    assert "> merged, said" in card
    assert "- model: `base` (models: Hub `sshleifer/tiny-gpt2` at `main`)" in card
    assert f"- data: `math` (datasets: builtin `arithmetic`, 64 rows, fingerprint " \
           f"`{UPSTREAM[:12]}`)" in card
    assert "| `train.lr` | `0.0002` |" in card and "| `adapter.r` | `8` |" in card
    assert "adapter.quant_type" not in card and "train.save_every" not in card  # noise
    assert "| `loss` | 1.23457 |" in card
    assert 'AutoModelForCausalLM.from_pretrained("exported/sft")' in card


def test_the_card_holds_no_secret(plan, tmp_path: Path) -> None:
    stage = plan.stage("sft")
    card = model_card(plan, stage, tmp_path, manifest(stage),
                      CardFacts(out="o", content=ADAPTER))
    assert "${env:" not in card and "TOKEN" not in card and "push_to_hub" not in card
    assert "MLFLOW" not in card and "tracking" not in card
    assert safe_overrides(["a.token=x", "a.b=${env:X}", "train.lr=1"]) == ["train.lr=1"]
    assert training_settings({"hub_token": "x", "uri": "${env:U}", "push_to_hub": {"r": 1},
                              "lr": 1}) == [("lr", "1")]


def test_an_adapter_card_names_its_base_and_loads_with_peft(plan, tmp_path: Path) -> None:
    stage = plan.stage("sft")
    card = model_card(plan, stage, tmp_path, manifest(stage),
                      CardFacts(out="exported/a", content=ADAPTER))
    assert front_matter(card)["library_name"] == "peft"
    assert "base model (needed to load it): `base`, Hub `sshleifer/tiny-gpt2`" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("exported/a")' in card


def test_lineage_walks_down_through_upstream_manifests(plan, tmp_path: Path) -> None:
    sft, more = plan.stage("sft"), plan.stage("more")
    folder = tmp_path / sft.dir
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest(sft)))
    card = model_card(plan, more, tmp_path, manifest(more), CardFacts(out="o", content=MERGED))
    lines = card.splitlines()
    at = lines.index(f"- `more` (sft stage, adapter, fingerprint `{FINGERPRINT[:12]}`)")
    assert lines[at + 1].startswith("  - model: `sft` (sft stage, adapter, fingerprint")
    assert lines[at + 2] == "    - model: `base` (models: Hub `sshleifer/tiny-gpt2` at `main`)"
    assert front_matter(card)["base_model"] == "sshleifer/tiny-gpt2"  # through the adapter


def test_a_patch_is_refused_with_why_and_what_to_do(plan) -> None:
    refuse_patch(plan, "sft", merge=True)  # an adapter: fine
    with pytest.raises(RecipeError) as caught:
        refuse_patch(plan, "patched", merge=True)
    assert "not be a standard architecture" in caught.value.message
    assert "adapter" in (caught.value.hint or "")


def test_an_adapter_on_random_init_weights_needs_merge(plan, tmp_path: Path) -> None:
    refuse_lone_adapter(plan, "sft", merge=False)  # its base is on the hub: fine alone
    (tmp_path / "init.yaml").write_text(RECIPE.replace(
        "base: {hub: sshleifer/tiny-gpt2, revision: main}",
        "base: {init: {architecture: llama, size: nano}, tokenizer: {train: {data: text}}}"))
    scratch = compile_recipe(tmp_path / "init.yaml", cwd=tmp_path)
    with pytest.raises(RecipeError) as caught:
        refuse_lone_adapter(scratch, "sft", merge=False)
    assert "saved nowhere" in caught.value.message and "--merge" in (caught.value.hint or "")
    refuse_lone_adapter(scratch, "sft", merge=True)


def test_destinations_that_would_lose_data_are_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "outputs" / "card"
    workspace.mkdir(parents=True)
    check_destination(tmp_path / "new", tmp_path, workspace, force=False)
    taken = tmp_path / "taken"
    taken.mkdir()
    check_destination(taken, tmp_path, workspace, force=False)  # empty: fine
    (taken / "x").write_text("x")
    with pytest.raises(RecipeError, match="not empty"):
        check_destination(taken, tmp_path, workspace, force=False)
    check_destination(taken, tmp_path, workspace, force=True)
    for bad in (tmp_path, tmp_path / "outputs", workspace / "sft"):
        with pytest.raises(RecipeError):
            check_destination(bad, tmp_path, workspace, force=True)
    (tmp_path / "link").symlink_to(taken)
    with pytest.raises(RecipeError, match="symbolic link"):
        check_destination(tmp_path / "link", tmp_path, workspace, force=True)


def test_a_failed_write_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def crash(folder: Path) -> None:
        (folder / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(out, crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]

    files = write_atomically(out, lambda folder: (folder / "a.txt").write_text("new"))
    assert files == (("a.txt", 3),) and [p.name for p in out.iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_export_modules_import_without_torch() -> None:
    """``recipe --help`` and ``recipe plan`` import the command module; torch waits."""
    code = ("import sys, llm_recipe.export_command, llm_recipe.runtime.export, "
            "llm_recipe.runtime.model_card; "
            "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
