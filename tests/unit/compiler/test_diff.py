"""compiler/diff.py: the semantic diff of two compiled plans (goldens: tests/cases/diff)."""

from __future__ import annotations

from pathlib import Path

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.diff import Change, _changes, diff_plans, plan_view

RECIPE = """\
recipe: 1
name: d
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: main
datasets:
  local:
    path: data.jsonl
    format: gsm8k
stages:
  sft:
    kind: sft
    model: base
    data: local
    train: {max_steps: 10, lr: 1.0e-4}
  eval:
    kind: eval
    models: [base, sft]
    data: local
    metrics: [gsm8k_accuracy]
"""
ROW = '{"question": "1+1?", "answer": "#### 2"}\n'


def _plans(write, tmp_path: Path, old: str, new: str, *, data=(ROW, ROW)):
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    (tmp_path / "a" / "data.jsonl").write_text(data[0], "utf-8")
    (tmp_path / "b" / "data.jsonl").write_text(data[1], "utf-8")
    a = compile_recipe(write(old, "a/r.yaml"), cwd=tmp_path / "a")
    b = compile_recipe(write(new, "b/r.yaml"), cwd=tmp_path / "b")
    return diff_plans(a, b)


def test_the_same_recipe_has_an_empty_diff(write, tmp_path: Path) -> None:
    diff = _plans(write, tmp_path, RECIPE, RECIPE)
    assert diff.empty and diff.rerun == () and diff.unchanged == ("sft", "eval")
    assert diff.to_dict()["rerun"] == [] and diff.to_dict()["changed"] == []


def test_a_change_of_precision_reruns_the_stage_a_launcher_change_does_not(
        write, tmp_path: Path) -> None:
    diff = _plans(write, tmp_path, RECIPE, RECIPE.replace(
        "    data: local\n    train:", "    data: local\n    compute: {precision: bf16}\n"
        "    train:"))
    assert [r.stage for r in diff.rerun] == ["sft", "eval"]
    assert diff.rerun[0].own == ("compute.precision",) and diff.rerun[0].cause == "own"
    assert diff.rerun[1].upstream == ("sft",) and diff.rerun[1].cause == "upstream"
    cosmetic = _plans(write, tmp_path, RECIPE, RECIPE.replace(
        "metrics: [gsm8k_accuracy]", "metrics: [gsm8k_accuracy]\n    description: compare"))
    assert cosmetic.rerun == () and not cosmetic.empty
    assert [(c.where, c.path) for c in cosmetic.changed] == [("eval", "description")]


def test_a_local_file_whose_content_changed_reruns_its_readers(write, tmp_path: Path) -> None:
    diff = _plans(write, tmp_path, RECIPE, RECIPE, data=(ROW, ROW * 2))
    assert diff.changed == () and diff.entries == ()
    assert [(r.stage, r.inputs, r.cause) for r in diff.rerun] == [
        ("sft", ("content of local",), "input"), ("eval", ("content of local",), "input")]


def test_lineage_list_fields_and_kind(write, tmp_path: Path) -> None:
    diff = _plans(write, tmp_path, RECIPE, RECIPE.replace("models: [base, sft]",
                                                          "models: [sft, base]"))
    assert [(x.stage, x.field, x.old, x.new) for x in diff.lineage] == [
        ("eval", "models.0", "base", "sft"), ("eval", "models.1", "sft", "base")]
    assert diff.changed == ()  # the input fields are lineage, not config changes
    assert diff.rerun[0].lineage == ("models.0", "models.1")
    assert diff.rerun[0].reasons() == ["input models.0, models.1 now names another artifact"]


def test_settings_are_compared_too(write, tmp_path: Path) -> None:
    diff = _plans(write, tmp_path, RECIPE, RECIPE.replace("name: d", "name: d\nseed: 5"))
    assert [(c.where, c.path, c.old, c.new) for c in diff.settings] == [("recipe", "seed", 42, 5)]
    assert {(c.where, c.path) for c in diff.changed} == {("sft", "seed"), ("eval", "seed")}
    assert [r.own for r in diff.rerun] == [("seed",), ("seed",)]


def test_value_changes_walk_mappings_and_same_length_lists() -> None:
    assert _changes("s", (), {"a": 1, "b": [1, 2]}, {"a": 1.0, "b": [1, 3], "c": None}) == [
        Change("s", ("b", 1), 2, 3)]
    assert _changes("s", (), {"b": [1]}, {"b": [1, 2]}) == [Change("s", ("b",), [1], [1, 2])]
    assert _changes("s", (), {"x": True}, {"x": 1}) == [Change("s", ("x",), True, 1)]
    assert Change("s", ("phases", 0, "lr"), 1, 2).path == "phases[0].lr"


def test_the_view_is_plain_json_data(write, tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_text(ROW, "utf-8")
    view = plan_view(compile_recipe(write(RECIPE), cwd=tmp_path))
    assert list(view["stages"]) == ["sft", "eval"]
    assert set(view["stages"]["sft"]) == {"kind", "config", "compute", "inputs", "fingerprint"}
    assert isinstance(view["recipe"]["env"], list)
