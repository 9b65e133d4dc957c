"""Compose pass: extends, profiles, --set and ${vars} interpolation, with locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe, profile_names
from llm_recipe.compiler.compose import compose, split_path
from llm_recipe.errors import Location, RecipeError, UsageError

BASE = """\
recipe: 1
name: base
seed: 7
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: main
    dtype: float32
datasets:
  math:
    builtin: arithmetic
    format: gsm8k
stages:
  sft:
    kind: sft
    model: base
    data: math
    description: from the base
    train:
      epochs: 1
      lr: 2e-5
  eval:
    kind: eval
    models: [base, sft]
    data: math
    metrics: [gsm8k_accuracy, exact_match]
profiles:
  tiny:
    stages.sft.train.batch_size: 2
    datasets.math.n: 16
"""


@pytest.fixture
def base(write) -> Path:
    return write(BASE, "base.yaml")


def composed(path: Path, **kwargs):
    return compose(path, display=path.name, **kwargs)


# extends


def test_extends_merges_mappings_replaces_values_and_null_deletes(write, base) -> None:
    child = write(
        """\
        recipe: 1
        extends: base.yaml
        name: child
        models:
          base:
            dtype: null
        stages:
          sft:
            description: null
            train:
              epochs: null
              max_steps: 20
          eval:
            metrics: [perplexity]
        """
    )
    doc = composed(child)
    assert doc.data["name"] == "child"
    assert doc.data["seed"] == 7
    assert doc.data["models"]["base"] == {"hub": "sshleifer/tiny-gpt2", "revision": "main"}
    sft = doc.data["stages"]["sft"]
    assert "description" not in sft
    assert sft["train"] == {"lr": 2e-5, "max_steps": 20}
    assert doc.data["stages"]["eval"]["metrics"] == ["perplexity"]
    assert "extends" not in doc.data
    assert "profiles" not in doc.data


def test_extends_locations_point_into_the_right_file(write, base) -> None:
    child = write(
        """\
        recipe: 1
        extends: base.yaml
        name: child
        stages:
          sft:
            train:
              max_steps: 20
        """
    )
    doc = composed(child)
    assert doc.where.locate(("stages", "sft", "train", "lr")) == Location("base.yaml", 21, 11)
    assert doc.where.locate(("stages", "sft", "train", "max_steps")) == Location(
        "recipe.yaml", 7, 18
    )
    assert doc.where.locate(("name",)) == Location("recipe.yaml", 3, 7)
    assert doc.where.locate(("models", "base", "hub")).file == "base.yaml"
    # Snippets are available for both files.
    assert "lr: 2e-5" in doc.where.snippet(Location("base.yaml", 21, 11))


def test_error_in_a_base_value_is_reported_in_the_base_file(write, base, tmp_path) -> None:
    write(BASE.replace("dtype: float32", "dtype: fp32"), "base.yaml")
    child = write("recipe: 1\nextends: base.yaml\nname: child\n")
    with pytest.raises(RecipeError) as info:
        compile_recipe(child, cwd=tmp_path)
    assert info.value.location == Location(f"{tmp_path}/base.yaml", 8, 12)
    assert info.value.path == ("models", "base", "dtype")


def test_replaced_value_loses_its_base_locations(write, base) -> None:
    child = write(
        """\
        recipe: 1
        extends: base.yaml
        stages:
          eval:
            models: [sft]
        """
    )
    doc = composed(child)
    assert doc.where.locate(("stages", "eval", "models", 0)) == Location("recipe.yaml", 5, 14)
    assert ("stages", "eval", "models", 1) not in doc.where.values


def test_several_bases_merge_in_order(write, base) -> None:
    write("recipe: 1\nseed: 1\nname: first\n", "a.yaml")
    write("recipe: 1\nseed: 2\n", "b.yaml")
    child = write("recipe: 1\nextends: [base.yaml, a.yaml, b.yaml]\n")
    doc = composed(child)
    assert doc.data["seed"] == 2
    assert doc.data["name"] == "first"
    assert doc.where.locate(("seed",)).file == "b.yaml"


def test_extends_chain_paths_are_relative_to_the_naming_file(write) -> None:
    write(BASE, "bases/root.yaml")
    write("recipe: 1\nextends: root.yaml\nseed: 3\n", "bases/mid.yaml")
    child = write("recipe: 1\nextends: bases/mid.yaml\nname: leaf\n", "recipe.yaml")
    doc = composed(child)
    assert doc.data["seed"] == 3
    assert doc.data["stages"]["sft"]["kind"] == "sft"
    assert doc.where.locate(("models",)).file == "bases/root.yaml"


def test_extends_loop(write) -> None:
    first = write("recipe: 1\nextends: b.yaml\n", "a.yaml")
    write("recipe: 1\nextends: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match=r"extends loop: a\.yaml -> b\.yaml -> a\.yaml") as info:
        compose(first, display="a.yaml")
    assert info.value.location == Location("b.yaml", 2, 10)


def test_extends_self(write) -> None:
    path = write("recipe: 1\nextends: recipe.yaml\n")
    with pytest.raises(RecipeError, match="extends loop"):
        composed(path)


def test_extends_missing_file(write) -> None:
    path = write("recipe: 1\nextends: [nope.yaml]\n")
    with pytest.raises(RecipeError, match=r"missing file: nope\.yaml") as info:
        composed(path)
    assert info.value.path == ("extends", 0)
    assert info.value.location == Location("recipe.yaml", 2, 11)


def test_extends_must_name_files(write) -> None:
    with pytest.raises(RecipeError, match="extends must be a file name"):
        composed(write("recipe: 1\nextends: {a: 1}\n"))


def test_every_file_needs_a_version(write) -> None:
    write("name: unversioned\n", "base.yaml")
    with pytest.raises(RecipeError, match="missing the format version") as info:
        composed(write("recipe: 1\nextends: base.yaml\n"))
    assert info.value.location.file == "base.yaml"


@pytest.mark.parametrize("version", ["2", "true", "'1'", "1.5", "[1]"])
def test_unsupported_versions(write, version: str) -> None:
    with pytest.raises(RecipeError, match="unsupported recipe format version"):
        composed(write(f"recipe: {version}\nname: x\n"))


# profiles


def test_profiles_apply_in_command_line_order(write) -> None:
    path = write(
        BASE
        + """\
  a:
    seed: 1
    stages.sft.train.lr: 0.1
  b:
    seed: 2
"""
    )
    assert composed(path, profiles=["a", "b"]).data["seed"] == 2
    assert composed(path, profiles=["b", "a"]).data["seed"] == 1
    doc = composed(path, profiles=["tiny", "a"])
    assert doc.data["stages"]["sft"]["train"] == {"epochs": 1, "lr": 0.1, "batch_size": 2}
    assert doc.data["datasets"]["math"]["n"] == 16


def test_profile_values_keep_their_location(write) -> None:
    path = write(BASE)
    doc = composed(path, profiles=["tiny"])
    assert doc.where.locate(("datasets", "math", "n")) == Location("recipe.yaml", 30, 22)


def test_profiles_come_from_the_extends_chain(write, base) -> None:
    child = write(
        """\
        recipe: 1
        extends: base.yaml
        profiles:
          tiny:
            datasets.math.n: 4
          gpu:
            compute.gpus_per_node: 1
        """
    )
    assert sorted(profile_names(child)) == ["gpu", "tiny"]
    doc = composed(child, profiles=["tiny"])
    assert doc.data["datasets"]["math"]["n"] == 4
    assert doc.data["stages"]["sft"]["train"]["batch_size"] == 2


def test_profile_then_set(write) -> None:
    doc = composed(write(BASE), profiles=["tiny"], overrides=["datasets.math.n=3"])
    assert doc.data["datasets"]["math"]["n"] == 3


def test_unknown_profile(write) -> None:
    with pytest.raises(UsageError, match="unknown profile 'tinny'") as info:
        composed(write(BASE), profiles=["tinny"])
    assert info.value.expected == "one of: tiny"
    assert info.value.hint == "did you mean 'tiny'?"
    assert info.value.location == Location("recipe.yaml", 27, 1)


def test_unknown_profile_without_profiles(write, minimal) -> None:
    with pytest.raises(UsageError) as info:
        composed(write(minimal), profiles=["tiny"])
    assert info.value.location == Location("recipe.yaml", 1, 1)
    assert "none" in info.value.expected


def test_profile_with_an_unknown_path(write) -> None:
    path = write(BASE + "  bad:\n    stages.sft.train.lrr: 1\n")
    with pytest.raises(UsageError, match="is not a recipe setting") as info:
        composed(path, profiles=["bad"])
    assert info.value.location == Location("recipe.yaml", 32, 5)
    assert info.value.hint == "did you mean 'stages.sft.train.lr'?"


def test_profile_must_be_a_mapping(write) -> None:
    with pytest.raises(RecipeError, match="a profile must be a mapping"):
        composed(write(BASE + "  odd: [1]\n"), profiles=["odd"])


# --set


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("stages.sft.train.lr=1e-4", ("stages", "sft", "train", "lr"), 1e-4),
        ("seed=11", ("seed",), 11),
        ("description=1.0", ("description",), "1.0"),
        ("description=true", ("description",), "true"),
        ("description=", ("description",), ""),
        ("models.base.revision=0123", ("models", "base", "revision"), "0123"),
        (
            "stages.eval.metrics=[exact_match, perplexity]",
            ("stages", "eval", "metrics"),
            ["exact_match", "perplexity"],
        ),
        (
            "stages.sft.adapter={type: lora, r: 8}",
            ("stages", "sft", "adapter"),
            {"type": "lora", "r": 8},
        ),
        ("stages.eval.models[0]=sft", ("stages", "eval", "models", 0), "sft"),
        ("stages.eval.models.1=base", ("stages", "eval", "models", 1), "base"),
        ("stages.sft.train.max_steps=5", ("stages", "sft", "train", "max_steps"), 5),
        ("compute.gpus_per_node=2", ("compute", "gpus_per_node"), 2),
        ("name=a=b", ("name",), "a=b"),
    ],
)
def test_set_values_are_typed_by_yaml_and_schema(write, override, path, value) -> None:
    doc = composed(write(BASE), overrides=[override])
    node = doc.data
    for part in path:
        node = node[part]
    assert node == value
    assert type(node) is type(value)


def test_set_null_deletes(write) -> None:
    doc = composed(write(BASE), overrides=["stages.sft.description=null"])
    assert "description" not in doc.data["stages"]["sft"]


def test_set_location_points_at_the_value(write) -> None:
    text = "stages.sft.train.batch_size=eight"
    with pytest.raises(RecipeError) as info:
        compile_recipe(write(BASE), overrides=[text])
    assert info.value.location == Location(f"--set {text}", 1, 29)
    assert info.value.path == ("stages", "sft", "train", "batch_size")


def test_set_flow_value_locations(write) -> None:
    doc = composed(write(BASE), overrides=["stages.sft.adapter={type: lora, r: 8}"])
    loc = doc.where.locate(("stages", "sft", "adapter", "r"))
    assert loc.file == "--set stages.sft.adapter={type: lora, r: 8}"
    assert loc.col == 36


def test_set_unknown_path(write) -> None:
    message = r"'stages\.sft\.train\.lrr' is not a recipe setting"
    with pytest.raises(UsageError, match=message) as info:
        composed(write(BASE), overrides=["stages.sft.train.lrr=1"])
    assert info.value.hint == "did you mean 'stages.sft.train.lr'?"
    assert info.value.location == Location("--set stages.sft.train.lrr=1", 1, 1)


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("stages.stf.train.lr=1", "there is no 'stages.stf' in the recipe; did you mean"),
        ("stages.sft.train.lr.x=1", "'stages.sft.train.lr' is a single value"),
        ("models.new.hubb=x", "did you mean 'models.new.hub'?"),
        ("extends=x.yaml", "check the spelling"),
        ("profiles.x=1", "check the spelling"),
    ],
)
def test_set_paths_that_are_not_settings(write, override: str, hint: str) -> None:
    with pytest.raises(UsageError, match="is not a recipe setting") as info:
        composed(write(BASE), overrides=[override])
    assert info.value.hint.startswith(hint)


def test_set_can_add_settings_and_entries(write) -> None:
    doc = composed(
        write(BASE),
        overrides=["stages.sft.adapter.type=lora", "models.other.hub=gpt2", "compute.nodes=2"],
    )
    assert doc.data["stages"]["sft"]["adapter"] == {"type": "lora"}
    assert doc.data["models"]["other"] == {"hub": "gpt2"}
    assert doc.data["compute"] == {"nodes": 2}


def test_set_cannot_add_list_items(write) -> None:
    with pytest.raises(RecipeError, match="is not in the list"):
        composed(write(BASE), overrides=["stages.eval.models[5]=sft"])


@pytest.mark.parametrize("override", ["stages.sft.train.lr", "=1", "a..b=1", "stages.sft!=1"])
def test_set_bad_syntax(write, override: str) -> None:
    with pytest.raises(RecipeError) as info:
        composed(write(BASE), overrides=[override])
    assert info.value.location.file == f"--set {override}"
    assert info.value.expected


def test_set_value_with_bad_yaml(write) -> None:
    with pytest.raises(UsageError, match="invalid YAML") as info:
        composed(write(BASE), overrides=["stages.eval.metrics=[a, b"])
    assert info.value.location == Location("--set stages.eval.metrics=[a, b", 1, 21)
    assert "quote" in info.value.hint


def test_set_value_with_a_tag_is_refused(write) -> None:
    with pytest.raises(UsageError, match="is not allowed"):
        composed(write(BASE), overrides=["seed=!!python/object/apply:os.system [ls]"])


def test_split_path() -> None:
    loc = Location("x", 1, 1)
    assert split_path("stages.sft.train.lr", loc) == ("stages", "sft", "train", "lr")
    assert split_path("phases[0].steps", loc) == ("phases", 0, "steps")
    assert split_path("a.0.b", loc) == ("a", 0, "b")
    assert split_path("a[1][2]", loc) == ("a", 1, 2)
    with pytest.raises(RecipeError):
        split_path("0.a", loc)


# ${vars}


VARS = """\
recipe: 1
name: vars
vars:
  steps: 12
  lr: 3e-4
  flag: true
  model: sshleifer/tiny-gpt2
  tag: v${vars.steps}
  nested: ${vars.tag}-x
models:
  base:
    hub: ${vars.model}
datasets:
  math:
    builtin: arithmetic
    format: gsm8k
    n: ${vars.steps}
tracking:
  uri: ${env:MLFLOW_TRACKING_URI}
  run_name: ${vars.nested}/${vars.lr}/${vars.flag}/$${literal}/${env:USER}
stages:
  sft:
    kind: sft
    model: base
    data: math
    packing: ${vars.flag}
    train:
      lr: ${vars.lr}
      max_steps: ${vars.steps}
"""


def test_whole_value_interpolation_keeps_the_type(write) -> None:
    doc = composed(write(VARS))
    sft = doc.data["stages"]["sft"]
    assert sft["train"] == {"lr": 3e-4, "max_steps": 12}
    assert isinstance(sft["train"]["max_steps"], int)
    assert sft["packing"] is True
    assert doc.data["datasets"]["math"]["n"] == 12
    assert doc.data["models"]["base"]["hub"] == "sshleifer/tiny-gpt2"


def test_embedded_interpolation_stringifies(write) -> None:
    doc = composed(write(VARS))
    assert doc.data["vars"]["tag"] == "v12"
    assert doc.data["tracking"]["run_name"] == "v12-x/0.0003/True/${literal}/${env:USER}"


def test_env_references_stay_literal(write, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://secret")
    doc = composed(write(VARS))
    assert doc.data["tracking"]["uri"] == "${env:MLFLOW_TRACKING_URI}"


def test_set_can_change_a_var(write) -> None:
    doc = composed(write(VARS), overrides=["vars.steps=3"])
    assert doc.data["stages"]["sft"]["train"]["max_steps"] == 3
    assert doc.data["vars"]["tag"] == "v3"


def test_unknown_var(write) -> None:
    with pytest.raises(RecipeError, match=r"unknown variable '\$\{vars.stepz\}'") as info:
        composed(write(VARS.replace("n: ${vars.steps}", "n: ${vars.stepz}")))
    assert info.value.path == ("datasets", "math", "n")
    assert info.value.location == Location("recipe.yaml", 17, 8)
    assert info.value.hint == "did you mean 'steps'?"


def test_vars_loop(write) -> None:
    text = VARS.replace("steps: 12", "steps: ${vars.nested}")
    with pytest.raises(RecipeError, match="vars refer to each other in a loop"):
        composed(write(text))


@pytest.mark.parametrize("ref", ["${foo}", "${env:}", "${vars.}", "${ env:X }", "${vars.a.b}"])
def test_bad_interpolation(write, ref: str) -> None:
    with pytest.raises(RecipeError) as info:
        composed(write(VARS.replace("uri: ${env:MLFLOW_TRACKING_URI}", f"uri: x{ref}")))
    assert info.value.path == ("tracking", "uri")
    assert "$${" in info.value.hint or "vars" in info.value.message


def test_vars_without_references_are_left_alone(write, minimal) -> None:
    doc = composed(write(minimal + "vars:\n  unused: 1\n"))
    assert doc.data["vars"] == {"unused": 1}
