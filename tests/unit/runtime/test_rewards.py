"""Reward functions on hand-written completions (trl's signature, no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.rl.rewards import (
    WeightedRewards,
    format_reward,
    gsm8k_correctness,
    length_penalty,
    quality_score,
    resolve,
)

ANSWER = "Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72"


def test_correctness_reads_answers_as_eval_does() -> None:
    completions = ["48 + 24 = 72 #### 72", "So the answer is 72.", "#### 71", "no idea",
                   [{"role": "assistant", "content": "#### 72"}]]
    assert gsm8k_correctness([""] * 5, completions, answer=[ANSWER] * 5) == [1, 1, 0, 0, 1]


def test_format_wants_the_marked_answer() -> None:
    assert format_reward(["", "", ""], ["#### 5", "the answer is 5", "#### five"]) == [1, 0, 0]


def test_quality_rewards_true_steps_shown() -> None:
    assert quality_score("48/2 = 24. 48+24 = 72. 72 - 2 = 70") == 1.0
    assert quality_score("48/2 = 24. 48+24 = 71. 72 - 2 = 70") == pytest.approx(2 / 3)
    assert quality_score("48+24 = 72") == pytest.approx(1 / 3)  # one step of three
    assert quality_score("1,000 * 3 = 3,000 and 3000 + 1 = 3001 and 5 x 2 = 10") == 1.0
    assert quality_score("the answer is 72") == 0.0
    assert quality_score("5 / 0 = 3") == 0.0
    assert quality_score("4 + 8 = 12,3 and 1") == pytest.approx(1 / 3)  # sampled junk


def test_length_penalty_prefers_shorter() -> None:
    short, long = length_penalty(["", ""], ["a b", "word " * 1000])
    assert short > long == -1.0


def test_weighted_sum_and_components() -> None:
    rewards = WeightedRewards([("gsm8k_correctness", 1.0), ("format", 0.5)], Path("."))
    parts = rewards.components(["q", "q"], ["#### 72", "72"], answer=[ANSWER, ANSWER])
    assert parts == {"gsm8k_correctness": [1.0, 1.0], "format": [1.0, 0.0]}
    assert rewards.total(parts) == [1.5, 1.0]


def test_module_function_from_the_recipe_folder(tmp_path: Path) -> None:
    (tmp_path / "my_rewards_mod.py").write_text(
        "def shout(prompts, completions, **kw):\n"
        "    return [float(c.isupper()) for c in completions]\n")
    function = resolve("my_rewards_mod:shout", tmp_path)
    assert function(prompts=["", ""], completions=["HI", "hi"]) == [1.0, 0.0]


@pytest.mark.parametrize(("name", "message"), [
    ("nope", "unknown reward function 'nope'"),
    ("missing_module_xyz:f", "module missing_module_xyz does not import"),
    ("json:no_such_function", "json has no function 'no_such_function'"),
])
def test_bad_names_are_recipe_errors(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        resolve(name, tmp_path)


def test_a_function_returning_the_wrong_count_is_named(tmp_path: Path) -> None:
    (tmp_path / "short_mod.py").write_text(
        "def one(prompts, completions, **kw):\n    return [1.0]\n")
    rewards = WeightedRewards([("short_mod:one", 1.0)], tmp_path)
    with pytest.raises(RecipeError, match="returned 1 scores for 2 completions"):
        rewards(["a", "b"], ["x", "y"])


def test_two_recipes_with_a_rewards_module_each_never_share_it(tmp_path: Path) -> None:
    import sys

    for name, value in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "helper_mod.py").write_text(f"VALUE = {value}\n")
        (tmp_path / name / "shared_rewards.py").write_text(
            "from helper_mod import VALUE\n"
            "def score(prompts, completions, **kw):\n    return [VALUE for _ in completions]\n")
    a = resolve("shared_rewards:score", tmp_path / "a")
    sys.modules.pop("helper_mod", None)  # a sibling import is the user's module's business
    b = resolve("shared_rewards:score", tmp_path / "b")
    assert a(prompts=["x"], completions=["y"]) == [1.0]
    assert b(prompts=["x"], completions=["y"]) == [2.0]
    assert str(tmp_path / "a") not in sys.path and str(tmp_path / "b") not in sys.path
