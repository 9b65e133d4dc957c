"""The source map: locating paths, quoting lines, moving locations between documents."""

from __future__ import annotations

import pytest

from llm_recipe.compiler.source import SourceMap, mask_override, mask_secrets
from llm_recipe.errors import Location


def make() -> SourceMap:
    where = SourceMap()
    where.add_text("a.yaml", "x:\n  y: 1\n  z: [2, 3]\n")
    where.set((), Location("a.yaml", 1, 1))
    where.set(("x",), Location("a.yaml", 2, 3), key=Location("a.yaml", 1, 1))
    where.set(("x", "y"), Location("a.yaml", 2, 6), key=Location("a.yaml", 2, 3))
    where.set(("x", "z"), Location("a.yaml", 3, 6), key=Location("a.yaml", 3, 3))
    where.set(("x", "z", 0), Location("a.yaml", 3, 7))
    return where


def test_locate_value_key_and_ancestor() -> None:
    where = make()
    assert where.locate(("x", "y")) == Location("a.yaml", 2, 6)
    assert where.locate(("x", "y"), key=True) == Location("a.yaml", 2, 3)
    assert where.locate(("x", "z", 1)) == Location("a.yaml", 3, 6)
    assert where.locate(("x", "z", 0), key=True) == Location("a.yaml", 3, 7)
    assert where.locate(("nope", "deeper")) == Location("a.yaml", 1, 1)
    assert SourceMap().locate(("x",)) is None


def test_error_carries_location_path_and_snippet() -> None:
    error = make().error(("x", "y"), "bad", expected="good", hint="fix it")
    assert error.location == Location("a.yaml", 2, 6)
    assert error.path == ("x", "y")
    assert error.snippet == "    2 |   y: 1\n      |      ^"


def test_snippet_skips_very_long_lines() -> None:
    where = SourceMap()
    where.add_text("a.yaml", "x: " + "y" * 300 + "\n")
    assert where.snippet(Location("a.yaml", 1, 4)) is None
    assert where.snippet(None) is None


def test_drop_removes_a_subtree() -> None:
    where = make()
    where.drop(("x", "z"))
    assert ("x", "z") not in where.values
    assert ("x", "z", 0) not in where.values
    assert ("x", "z") not in where.keys
    assert ("x", "y") in where.values


def test_graft_moves_locations_under_a_new_prefix() -> None:
    other = SourceMap()
    other.add_text("b.yaml", "q: 1\n")
    other.set(("q",), Location("b.yaml", 1, 4), key=Location("b.yaml", 1, 1))
    other.set(("q", "r"), Location("b.yaml", 1, 5))
    where = make()
    where.graft(("x", "new"), other, ("q",))
    assert where.values[("x", "new")] == Location("b.yaml", 1, 4)
    assert where.values[("x", "new", "r")] == Location("b.yaml", 1, 5)
    assert where.keys[("x", "new")] == Location("b.yaml", 1, 1)
    assert "b.yaml" in where.texts
    assert () in set(where.paths())


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("    HF_TOKEN: hf_abc", "    HF_TOKEN: ****"),
        ('    "WANDB_API_KEY": "abc"  # note', '    "WANDB_API_KEY": ****'),
        ("env: {A: 1, db_password: x, B: 2}", "env: {A: 1, db_password: ****"),
        ("- api_key: abc", "- api_key: ****"),
        ("    HF_TOKEN: ${env:HF_TOKEN}", "    HF_TOKEN: ${env:HF_TOKEN}"),
        ("env: {HF_TOKEN: ${env:HF_TOKEN}, GH_TOKEN: x}",
         "env: {HF_TOKEN: ${env:HF_TOKEN}, GH_TOKEN: ****"),
        ("    tokenizer: {path: tok}", "    tokenizer: {path: tok}"),
        ("    MAX_TOKENS: 5", "    MAX_TOKENS: 5"),
        ("    HF_TOKEN:", "    HF_TOKEN:"),
    ],
)
def test_mask_secrets(line: str, shown: str) -> None:
    assert mask_secrets(line) == shown


def test_snippet_masks_secrets_and_conceals_on_request() -> None:
    where = SourceMap()
    where.add_text("s.yaml", "env:\n  HF_TOKEN: hf_abc\n  T:\n    hf_def\n")
    assert where.snippet(Location("s.yaml", 2, 13)) == (
        "    2 |   HF_TOKEN: ****\n      |             ^")
    assert where.snippet(Location("s.yaml", 4, 5), conceal=True) == (
        "    4 |     ****\n      |     ^")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("stages.sft.compute.env.HF_TOKEN=hf_abc", "stages.sft.compute.env.HF_TOKEN=****"),
        ("compute.env.HF_TOKEN=${env:HF_TOKEN}", "compute.env.HF_TOKEN=${env:HF_TOKEN}"),
        ("stages.sft.train.lr=1e-4", "stages.sft.train.lr=1e-4"),
        ("models.base.tokenizer.path=tok", "models.base.tokenizer.path=tok"),
    ],
)
def test_mask_override(text: str, shown: str) -> None:
    assert mask_override(text) == shown
