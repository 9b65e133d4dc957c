"""The error family: rendering, sorting, JSON shape."""

from __future__ import annotations

import pytest

from llm_recipe.errors import (
    Location,
    RecipeError,
    RecipeErrors,
    UsageError,
    format_path,
    raise_all,
)


def test_format_path() -> None:
    assert format_path(()) == "(root)"
    assert format_path(("stages", "sft", "train", "lr")) == "stages.sft.train.lr"
    assert format_path(("stages", "eval", "models", 1)) == "stages.eval.models[1]"
    assert format_path(("phases", 0, "data")) == "phases[0].data"


def test_location_str() -> None:
    assert str(Location("recipes/a.yaml", 3, 7)) == "recipes/a.yaml:3:7"


def test_render_full() -> None:
    error = RecipeError(
        "got 'eight'",
        Location("r.yaml", 4, 19),
        path=("stages", "sft", "train", "batch_size"),
        expected="an integer",
        hint="e.g. batch_size: 8",
        snippet="    4 |       batch_size: eight\n      |                   ^",
    )
    assert error.render() == (
        "r.yaml:4:19: error: stages.sft.train.batch_size: got 'eight'\n"
        "  expected: an integer\n"
        "    4 |       batch_size: eight\n"
        "      |                   ^\n"
        "  hint: e.g. batch_size: 8"
    )
    assert str(error) == error.render()
    assert error.args == ("got 'eight'",)


def test_render_bare() -> None:
    assert RecipeError("no such file: x.yaml").render() == "error: no such file: x.yaml"


def test_to_dict() -> None:
    error = RecipeError("m", Location("f", 1, 2), path=("a", 0), expected="e", hint="h")
    assert error.to_dict() == {
        "file": "f",
        "line": 1,
        "col": 2,
        "path": "a[0]",
        "message": "m",
        "expected": "e",
        "hint": "h",
    }
    assert RecipeError("m").to_dict()["file"] is None


def test_snippet_does_not_affect_equality() -> None:
    assert RecipeError("m", snippet="x") == RecipeError("m", snippet="y")


def test_errors_sorted_by_file_line_col() -> None:
    errors = RecipeErrors(
        [
            RecipeError("c", Location("b.yaml", 1, 1)),
            RecipeError("b", Location("a.yaml", 9, 1)),
            RecipeError("a", Location("a.yaml", 2, 5)),
            RecipeError("z"),
        ]
    )
    assert [e.message for e in errors.errors] == ["z", "a", "b", "c"]
    assert errors.message == "z"
    rendered = errors.render()
    assert rendered.endswith("\n4 errors")
    assert rendered.index("a.yaml:2:5") < rendered.index("a.yaml:9:1") < rendered.index("b.yaml")
    assert errors.to_dict() == {"errors": [e.to_dict() for e in errors.errors]}


def test_one_error_in_a_group_says_error() -> None:
    assert RecipeErrors([RecipeError("x")]).render().endswith("\n1 error")


def test_raise_all() -> None:
    raise_all([])
    single = RecipeError("one")
    with pytest.raises(RecipeError) as info:
        raise_all([single])
    assert info.value is single
    with pytest.raises(RecipeErrors) as many:
        raise_all([RecipeError("one"), RecipeError("two")])
    assert len(many.value.errors) == 2


def test_usage_error_is_a_recipe_error() -> None:
    assert issubclass(UsageError, RecipeError)
    assert issubclass(RecipeErrors, RecipeError)
