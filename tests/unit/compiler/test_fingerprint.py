"""Fingerprints cover the content of everything a stage depends on."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe

RECIPE = """\
recipe: 1
name: fp
models:
  scratch:
    init: {architecture: llama, size: nano}
    tokenizer: {train: {data: words, vocab_size: 300}}
datasets:
  words: {path: words.txt, format: text}
  corpus: {builtin: corpus, n: 50, format: text}
stages:
  pretrain: {kind: pretrain, model: scratch, data: corpus, train: {max_steps: 2}}
"""


def test_the_data_a_tokenizer_is_trained_on_is_part_of_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "words.txt").write_text("the cat sat\n")
    before = compile_recipe(Path("r.yaml")).stage("pretrain")
    (tmp_path / "words.txt").write_text("a dog ran\n")
    after = compile_recipe(Path("r.yaml")).stage("pretrain")
    assert after.fingerprint != before.fingerprint
    assert [i.fingerprint for i in after.inputs if i.field == "model"] != [
        i.fingerprint for i in before.inputs if i.field == "model"]
