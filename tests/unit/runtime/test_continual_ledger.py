"""The continual ledger: the original project's entry names, safetensors with metadata,
the index and the cut back a resumed run makes."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from llm_recipe.errors import RecipeError  # noqa: E402
from llm_recipe.runtime.continual.ledger import Ledger, entry_name  # noqa: E402


def tensors(value: float) -> dict[str, torch.Tensor]:
    return {"blocks.0.up": torch.full((4, 2), value), "blocks.0.scale": torch.ones(1)}


def test_entry_names_follow_the_seed() -> None:
    assert entry_name(0, "wikitext", "start") == "000_wikitext_start"
    assert entry_name(0, "wikitext", "good", 1000) == "000_wikitext_good_step000001000"
    assert entry_name(0, "wikitext", "rollback", 1234) == "000_wikitext_rollback_step000001234"
    assert entry_name(1, "imdb", "commit", 5) == "001_imdb_commit"
    with pytest.raises(ValueError):
        entry_name(0, "x", "best")


def test_entries_round_trip_with_metadata_and_are_indexed_in_order(tmp_path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.write(tensors(0.0), kind="start", phase_idx=0, phase="wiki", step=0,
                 metrics={"wiki": 3.5})
    row = ledger.write(tensors(1.5), kind="good", phase_idx=0, phase="wiki", step=10,
                       metrics={"wiki": 3.25})
    assert row["name"] == "000_wiki_good_step000000010" and row["bytes"] > 0
    loaded, meta = ledger.load(row["name"])
    assert torch.equal(loaded["blocks.0.up"], torch.full((4, 2), 1.5))
    assert meta["type"] == "good" and meta["global_step"] == "10" and meta["phase_idx"] == "0"
    assert json.loads(meta["metrics"]) == {"wiki": 3.25}
    assert [r["name"] for r in ledger.rows()] == ["000_wiki_start", row["name"]]
    # safetensors (an 8-byte header length, then JSON), not a pickle
    path = ledger.folder / row["file"]
    assert path.read_bytes()[8:9] == b"{" and path.stat().st_size == row["bytes"]


def test_truncate_keeps_the_first_rows_and_removes_later_files(tmp_path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    for step in (0, 10, 20):
        ledger.write(tensors(step), kind="start" if step == 0 else "good", phase_idx=0,
                     phase="a", step=step, metrics={})
    # a kill mid-append leaves a torn line: skipped when read
    with ledger.index.open("a") as handle:
        handle.write('{"name": "000_a_go')
    assert len(ledger.rows()) == 3
    ledger.truncate(2)
    assert [r["step"] for r in ledger.rows()] == [0, 10]
    assert sorted(p.name for p in ledger.folder.glob("*.safetensors")) == [
        "000_a_good_step000000010.safetensors", "000_a_start.safetensors"]
    with pytest.raises(RecipeError, match="has 2 entries"):
        ledger.truncate(3)


def test_clear_removes_an_earlier_attempt(tmp_path) -> None:
    ledger = Ledger(tmp_path / "ledger")
    ledger.write(tensors(0), kind="start", phase_idx=0, phase="a", step=0, metrics={})
    ledger.clear()
    assert not ledger.folder.exists() and ledger.rows() == []
