"""The stage-kind registry, the schema and the docs must name the same kinds."""

from pathlib import Path

from llm_recipe.compiler.kinds import KINDS, KINDS_BY_NAME
from llm_recipe.compiler.schema import recipe_schema

ROOT = Path(__file__).resolve().parents[3]


def test_schema_and_registry_name_the_same_kinds():
    schema = recipe_schema()
    enum = schema["$defs"]["stage"]["properties"]["kind"]["enum"]
    branches = [b["if"]["properties"]["kind"]["const"] for b in schema["$defs"]["stage"]["allOf"]]
    assert enum == branches == [k.name for k in KINDS]
    for name in enum:
        assert f"stage_{name}" in schema["$defs"]


def test_every_input_field_is_a_schema_property():
    defs = recipe_schema()["$defs"]
    for kind in KINDS:
        props = defs[f"stage_{kind.name}"]["properties"]
        for spec in kind.inputs:
            top = spec.field.split(".")[0].removesuffix("[]")
            assert top in props, f"{kind.name}.{spec.field} is not in the schema"


def test_required_inputs_are_required_by_the_schema():
    defs = recipe_schema()["$defs"]
    for kind in KINDS:
        required = set(defs[f"stage_{kind.name}"]["required"])
        for spec in kind.inputs:
            if spec.required and "." not in spec.field and "[]" not in spec.field:
                assert spec.field in required, f"{kind.name}.{spec.field}"


def test_policy_field_is_an_input():
    for kind in KINDS_BY_NAME.values():
        if kind.policy_field:
            assert kind.policy_field in {i.field for i in kind.inputs}


def test_format_reference_documents_every_kind():
    text = (ROOT / "docs" / "recipe-format.md").read_text()
    for kind in KINDS:
        assert f"`{kind.name}`" in text, f"docs/recipe-format.md does not document {kind.name}"
