"""Which stages a run takes in: --only, --from and --force name a matrix stage's copies too."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.executor import RunOptions, is_forced, select

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def matrix_plan():
    return compile_recipe(ROOT / "recipes" / "mistral_nli_qlora.yaml", profiles=["tiny"],
                          cwd=ROOT)


def names(stages) -> list[str]:
    return [s.name for s in stages]


def test_a_stage_name_selects_all_its_matrix_copies(matrix_plan) -> None:
    assert names(select(matrix_plan, RunOptions(only="sft"))) == [
        "sft@default", "sft@ablation0", "sft@ablation2"]
    assert names(select(matrix_plan, RunOptions(only="sft@ablation0"))) == ["sft@ablation0"]
    assert names(select(matrix_plan, RunOptions(start="eval"))) == [
        "eval@default", "eval@ablation0", "eval@ablation2"]


def test_force_of_a_stage_name_forces_each_copy(matrix_plan) -> None:
    options = RunOptions(force=frozenset({"sft"}))
    assert [is_forced(s, options) for s in matrix_plan.stages] == [True] * 3 + [False] * 3
    one = RunOptions(force=frozenset({"sft@default"}))
    assert [s.name for s in matrix_plan.stages if is_forced(s, one)] == ["sft@default"]


def test_an_unknown_name_lists_the_stages(matrix_plan) -> None:
    with pytest.raises(RecipeError) as caught:
        select(matrix_plan, RunOptions(only="dpo"))
    assert caught.value.message == "--only dpo: no such stage"
    assert "sft@default" in (caught.value.expected or "")
