"""The published (authoring) schema: recipes as written, for editors and ``recipe schema``.

These checks run the Python validator over the authoring schema; tests/test_schema_ajv.py
runs ajv, an independent Draft 2020-12 validator, over the same schema and recipes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from conftest import MINIMAL
from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.authoring import AUTHORING_FILE, authoring_schema, authoring_schema_text
from llm_recipe.compiler.compose import _VAR
from llm_recipe.compiler.load import load_text, read_file
from llm_recipe.compiler.schema import recipe_schema
from llm_recipe.errors import RecipeError, RecipeErrors

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "src" / "llm_recipe" / "schema" / AUTHORING_FILE
RECIPES = sorted((ROOT / "recipes").glob("**/*.yaml"))


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(authoring_schema())


def errors(validator: Draft202012Validator, data: Any) -> list[tuple[tuple, str]]:
    return [(tuple(e.absolute_path), e.message) for e in validator.iter_errors(data)]


def minimal() -> dict[str, Any]:
    return copy.deepcopy(load_text(MINIMAL, "r.yaml").data)


def setting(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one dotted path set."""
    data = minimal()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


def test_the_committed_file_is_the_generated_schema() -> None:
    assert COMMITTED.read_text("utf-8") == authoring_schema_text(), (
        f"{COMMITTED.relative_to(ROOT)} is out of date with schema/recipe.schema.json: "
        f"run `recipe schema > src/llm_recipe/schema/{AUTHORING_FILE}`"
    )


def test_the_authoring_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(authoring_schema())
    assert authoring_schema()["$schema"] == recipe_schema()["$schema"]


def test_the_reference_pattern_is_the_compilers() -> None:
    defs = authoring_schema()["$defs"]
    assert defs["interpolation"]["pattern"] == f"^{_VAR.pattern}$"
    assert _VAR.pattern in defs["interpolated_string"]["pattern"]


def test_the_compiler_still_validates_against_the_strict_schema() -> None:
    assert "interpolation" not in recipe_schema()["$defs"]
    assert not any(name.startswith("partial_") for name in recipe_schema()["$defs"])


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_as_written_is_valid(validator, path: Path) -> None:
    assert errors(validator, read_file(path).data) == []


@pytest.mark.parametrize(
    ("path", "value", "valid"),
    [
        ("stages.sft.train.max_steps", "${vars.steps}", True),  # integer
        ("stages.sft.train.lr", "${vars.lr}", True),  # number
        ("stages.sft.packing", "${vars.flag}", True),  # boolean
        ("stages.sft.train.lr_scheduler", "${vars.schedule}", True),  # enum
        ("stages.sft.train.eval_every", "${vars.every}", True),  # integer or 'epoch'
        ("seed", "${vars.seed-2}", True),
        ("stages.sft.train.lr", "fast", False),
        ("stages.sft.train.lr", "${env:LR}", False),  # never resolved by the compiler
        ("stages.sft.train.lr", "1e-${vars.exponent}", False),  # inserted as text
        ("stages.sft.train.lr", "$${vars.lr}", False),  # a literal '${'
        ("stages.sft.train.lr", "${vars.}", False),
        ("stages.sft.train.max_steps", "${vars.steps} ", False),
        ("stages.sft.packing", "yes", False),
        ("stages.sft.train.lr_scheduler", "cosin", False),
    ],
)
def test_a_vars_reference_stands_for_a_typed_value(validator, path, value, valid) -> None:
    assert (errors(validator, setting(path, value)) == []) is valid


def test_a_reference_inside_text_where_text_is_checked(validator) -> None:
    data = minimal()
    data["models"]["base"]["hub"] = "${vars.org}/tiny-gpt2"
    assert errors(validator, data) == []
    data["models"]["base"]["hub"] = "no spaces/${vars.x}"
    assert errors(validator, data) == []  # the compiler checks the inserted text
    data["models"]["base"]["hub"] = "not a hub id"
    assert errors(validator, data) != []


def test_keys_and_the_format_version_are_never_references(validator) -> None:
    data = minimal()
    data["recipe"] = "${vars.version}"
    assert errors(validator, data) != []
    data = minimal()
    data["stages"]["${vars.name}"] = data["stages"].pop("sft")
    assert errors(validator, data) != []


def test_a_recipe_without_extends_is_complete(validator) -> None:
    data = minimal()
    del data["stages"]
    assert errors(validator, data) == [((), "'stages' is a required property")]
    assert errors(validator, setting("stages.sft.train.epochs", None)) != []
    data = minimal()
    data["models"]["base"]["path"] = "models/base"  # with hub: two sources
    assert errors(validator, data) != []


def test_a_file_with_extends_is_partial(validator) -> None:
    child = {
        "recipe": 1,
        "extends": "base.yaml",
        "models": {"base": {"hub": None, "path": "models/base"}},
        "datasets": {"math": {"limit": 10}},
        "tracking": None,
        "stages": {"sft": {"adapter": {"r": 32}, "train": {"epochs": None, "max_steps": 5}}},
    }
    assert errors(validator, child) == []


def test_a_file_with_extends_is_still_checked(validator) -> None:
    base = {"recipe": 1, "extends": "base.yaml"}
    wrong = {**base, "stages": {"sft": {"kind": "sft", "train": {"lr": "fast"}}}}
    assert [path for path, _ in errors(validator, wrong)] == [("stages", "sft", "train", "lr")]
    assert errors(validator, {**base, "models": {"m": {"dtype": "f32"}}}) != []
    assert errors(validator, {**base, "stages": {"sft": {"trian": {}}}}) != []
    assert errors(validator, {**base, "stages": {"sft": {"kind": "sft", "prompts": "p"}}}) != []
    assert errors(validator, {**base, "nmae": "x"}) != []
    assert errors(validator, {"extends": "base.yaml"}) == [((), "'recipe' is a required property")]


def test_interpolated_values_are_still_checked_by_the_compiler(write) -> None:
    text = MINIMAL.replace("recipe: 1\n", "recipe: 1\nvars: {lr: fast}\n")
    with pytest.raises((RecipeError, RecipeErrors)) as info:
        compile_recipe(write(text.replace("lr: 1e-4", "lr: ${vars.lr}")))
    assert "stages.sft.train.lr: got 'fast'" in str(info.value)
    with pytest.raises((RecipeError, RecipeErrors)) as info:
        compile_recipe(write(MINIMAL.replace("max_steps: 10", "max_steps: ${env:STEPS}")))
    assert "stages.sft.train.max_steps: got '${env:STEPS}'" in str(info.value)


def test_recipe_schema_prints_the_authoring_schema() -> None:
    assert json.loads(authoring_schema_text()) == authoring_schema()
