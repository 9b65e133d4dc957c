"""Caches keyed by content and checked on use (tokenizers today)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe.compiler.fingerprint import digest
from llm_recipe.runtime.cache import RECORD, cache_problem, publish
from llm_recipe.runtime.loading import tokenizer_cache_key


def build(folder: Path) -> None:
    publish(folder, {"what": "test"}, lambda tmp: (tmp / "tokenizer.json").write_text("{}" * 50))


def test_a_published_entry_is_intact_and_records_its_key(tmp_path: Path) -> None:
    folder = tmp_path / "tok-1"
    build(folder)
    assert cache_problem(folder) is None
    assert json.loads((folder / RECORD).read_text())["key"] == {"what": "test"}


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda f: (f / "tokenizer.json").write_text("{}"), "tokenizer.json has 2 bytes"),
    (lambda f: (f / "tokenizer.json").write_text("[]" * 50), "does not match its recorded sha256"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda f: (f / RECORD).unlink(), "cache.json is missing or unreadable"),
    (lambda f: (f / RECORD).write_text('{"files": 3}'), "cache.json is missing or unreadable"),
])
def test_a_damaged_entry_is_named(tmp_path: Path, damage, expected: str) -> None:
    folder = tmp_path / "tok-1"
    build(folder)
    damage(folder)
    assert expected in cache_problem(folder)


def test_a_failed_build_leaves_no_entry(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "tokenizer.json").write_text("{")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        publish(tmp_path / "tok-1", {}, broken)
    assert list(tmp_path.iterdir()) == []


SPEC = {"train": {"data": "corpus", "vocab_size": 300, "min_frequency": 2}}


def key_of(tmp_path: Path, spec: dict, entry: dict) -> str:
    return digest(tokenizer_cache_key({"corpus": entry}, spec, tmp_path))


@pytest.mark.parametrize("change", [
    "file content", "vocab_size", "min_frequency", "chat_template", "columns", "limit",
    "data name", "file format",
])
def test_every_input_of_a_trained_tokenizer_is_in_its_cache_key(tmp_path: Path,
                                                                change: str) -> None:
    """Change each thing that decides the tokenizer in turn: the cache must miss."""
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 20)
    entry = {"path": "corpus.txt", "format": "text"}
    before = key_of(tmp_path, SPEC, entry)
    spec = json.loads(json.dumps(SPEC))
    if change == "file content":
        (tmp_path / "corpus.txt").write_text("a dog ran in the park\n" * 20)
    elif change in ("vocab_size", "min_frequency"):
        spec["train"][change] += 1
    elif change == "chat_template":
        spec["chat_template"] = "{{ messages }}"
    elif change == "columns":
        entry = {**entry, "columns": {"text": "body"}}
    elif change == "limit":
        entry = {**entry, "limit": 5}
    elif change == "file format":
        entry = {**entry, "file_format": "jsonl"}
    else:
        spec["train"]["data"] = "other"
        return_key = digest(tokenizer_cache_key({"other": entry}, spec, tmp_path))
        assert return_key != before
        return
    assert key_of(tmp_path, spec, entry) != before


def test_the_same_inputs_give_the_same_key(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n")
    entry = {"path": "corpus.txt", "format": "text", "description": "cosmetic"}
    same = {"path": "corpus.txt", "format": "text"}
    assert key_of(tmp_path, SPEC, entry) == key_of(tmp_path, SPEC, same)
