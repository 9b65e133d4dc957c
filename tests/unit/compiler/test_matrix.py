"""The ablation matrix at plan time: expansion, naming, sharing by fingerprint, errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe, matrix, validate_recipe
from llm_recipe.compiler.plan_types import Plan
from llm_recipe.compiler.render import render_plan
from llm_recipe.errors import RecipeError, RecipeErrors

BASE = """\
recipe: 1
name: m
vars:
  steps: 5
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  corpus: {builtin: corpus, format: text, n: 50}
  train: {builtin: arithmetic, split: train, n: 40, format: gsm8k}
  other: {builtin: arithmetic, split: train, n: 30, format: gsm8k}
  test: {builtin: arithmetic, split: test, n: 8, format: gsm8k}
stages:
  pretrain: {kind: pretrain, model: base, data: corpus, train: {max_steps: 4}}
  sft:
    kind: sft
    model: pretrain
    data: train
    adapter: {type: lora, r: 8}
    train: {max_steps: "${vars.steps}", lr: 1.0e-4}
  eval: {kind: eval, models: [pretrain, sft], data: test, limit: 8}
"""


def recipe(tmp_path: Path, matrix_block: str, extra: str = "") -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(BASE + extra + "matrix:\n" + textwrap.indent(textwrap.dedent(matrix_block),
                                                                  "  "))
    return path


def plan(tmp_path: Path, block: str, **kwargs) -> Plan:
    return compile_recipe(recipe(tmp_path, block, kwargs.pop("extra", "")), cwd=tmp_path,
                          **kwargs)


def errors(tmp_path: Path, block: str, extra: str = "") -> list[RecipeError]:
    with pytest.raises(RecipeError) as caught:
        plan(tmp_path, block, extra=extra)
    error = caught.value
    return list(error.errors) if isinstance(error, RecipeErrors) else [error]


def variants(p: Plan) -> list[str]:
    return [v["name"] for v in p.extra["matrix"]["variants"]]


def names(p: Plan) -> list[str]:
    return [s.name for s in p.stages]


# -- expansion and naming -------------------------------------------------------------


def test_grid_variants_in_order_first_axis_slowest(tmp_path: Path) -> None:
    p = plan(tmp_path, """\
        sft.train.lr: [1.0e-5, 3.0e-5]
        sft.adapter.r: [8, 16]
    """)
    assert variants(p) == ["lr=1e-5,r=8", "lr=1e-5,r=16", "lr=3e-5,r=8", "lr=3e-5,r=16"]
    axes = p.extra["matrix"]["axes"]
    assert [(a["path"], a["name"], a["values"]) for a in axes] == [
        ("stages.sft.train.lr", "lr", ["1e-5", "3e-5"]),
        ("stages.sft.adapter.r", "r", ["8", "16"])]
    first = p.extra["matrix"]["variants"][0]
    assert first["settings"] == {"stages.sft.train.lr": 1e-5, "stages.sft.adapter.r": 8}


@pytest.mark.parametrize(("value", "label"), [
    (1.0e-5, "1e-5"), (3e-05, "3e-5"), (2.0e-4, "0.0002"), (3.0, "3.0"), (1e16, "1e16"),
    (16, "16"), (-1, "-1"), (True, "true"), (False, "false"), (None, "null"),
    ("nf4", "nf4"), ("cosine_with_restarts", "cosine_with_restarts"), ("a/b", None),
    ("two words", None), ("x=1", None), ("", None), ([1, 2], None), ({"r": 8}, None)])
def test_value_labels_are_plain_and_stable(value: object, label: str | None) -> None:
    assert matrix.value_label(value) == label


def test_short_names_grow_until_unique() -> None:
    paths = [("stages", "sft", "train", "lr"), ("stages", "dpo", "train", "lr"),
             ("seed",), ("stages", "sft", "seed"), ("vars", "steps")]
    assert matrix.short_names(paths) == {
        ("stages", "sft", "train", "lr"): "sft.train.lr",
        ("stages", "dpo", "train", "lr"): "dpo.train.lr",
        ("seed",): "seed", ("stages", "sft", "seed"): "sft.seed", ("vars", "steps"): "steps"}


def test_full_paths_and_vars_are_axes_too(tmp_path: Path) -> None:
    p = plan(tmp_path, """\
        stages.sft.train.lr: [1.0e-4]
        vars.steps: [5, 10]
    """)
    assert variants(p) == ["lr=0.0001,steps=5", "lr=0.0001,steps=10"]
    steps = [p.stage(v["stages"]["sft"]).config["train"]["max_steps"]
             for v in p.extra["matrix"]["variants"]]
    assert steps == [5, 10]  # the variable is interpolated per variant, typed


def test_labelled_values_name_themselves_by_label(tmp_path: Path) -> None:
    p = plan(tmp_path, """\
        sft.adapter:
          small: {type: lora, r: 4}
          large: {type: lora, r: 32, alpha: 64}
    """)
    assert variants(p) == ["adapter=small", "adapter=large"]
    assert p.stage("sft@adapter=large").config["adapter"]["r"] == 32


def test_exclude_drops_matching_combinations_and_says_when_one_matches_none(
        tmp_path: Path) -> None:
    p = plan(tmp_path, """\
        sft.train.lr: [1.0e-5, 3.0e-5]
        sft.adapter.r: [8, 16]
        exclude:
          - {sft.train.lr: 3.0e-5, sft.adapter.r: 8}
          - {sft.adapter.r: 64}
    """)
    assert variants(p) == ["lr=1e-5,r=8", "lr=1e-5,r=16", "lr=3e-5,r=16"]
    assert "matrix: exclude entry 2 matches no combination" in p.warnings


def test_include_extends_matches_adds_unmatched_and_named_entries(tmp_path: Path) -> None:
    """GitHub Actions' include: alpha joins every r=16 combination; lr=1e-3 matches none
    and is a variant of its own; a named entry is always its own."""
    p = plan(tmp_path, """\
        sft.train.lr: [1.0e-5, 3.0e-5]
        sft.adapter.r: [8, 16]
        include:
          - {sft.adapter.r: 16, sft.adapter.alpha: 32}
          - {sft.train.lr: 1.0e-3, sft.adapter.r: 8}
          - {variant: wide, sft.adapter.r: 64}
    """)
    assert variants(p) == ["lr=1e-5,r=8", "lr=1e-5,r=16,alpha=32", "lr=3e-5,r=8",
                           "lr=3e-5,r=16,alpha=32", "lr=0.001,r=8", "wide"]
    assert p.stage("sft@lr=3e-5,r=16,alpha=32").config["adapter"]["alpha"] == 32
    assert p.stage("sft@wide").config["adapter"]["r"] == 64
    assert p.stage("sft@wide").config["train"]["lr"] == 1.0e-4  # the recipe's own


def test_a_matrix_of_includes_alone_plans_exactly_those(tmp_path: Path) -> None:
    p = plan(tmp_path, """\
        include:
          - variant: default
          - {variant: other_data, sft.data: other}
    """)
    assert variants(p) == ["default", "other_data"]
    assert names(p) == ["pretrain", "sft@default", "sft@other_data", "eval@default",
                        "eval@other_data"]
    matrix_table = p.extra["matrix"]["variants"]
    assert matrix_table[0]["settings"] == {}
    assert p.stage("sft@other_data").config["data"] == "other"


# -- sharing by fingerprint -----------------------------------------------------------


def test_upstream_stage_shared_varied_stage_and_downstream_copied(tmp_path: Path) -> None:
    p = plan(tmp_path, "sft.train.lr: [1.0e-5, 3.0e-5]\n")
    single = compile_recipe(recipe(tmp_path, "sft.train.lr: [1.0e-5]\n"), cwd=tmp_path,
                            overrides=["matrix=null"])
    assert names(p) == ["pretrain", "sft@lr=1e-5", "sft@lr=3e-5", "eval@lr=1e-5",
                        "eval@lr=3e-5"]
    shared = p.stage("pretrain")
    # planned exactly as without a matrix: same folder, same fingerprint, outputs reused
    assert (shared.dir, shared.fingerprint) == (single.stage("pretrain").dir,
                                                single.stage("pretrain").fingerprint)
    copies = p.extra["matrix"]["copies"]
    assert copies["pretrain"] == {"stage": "pretrain", "variants": ["lr=1e-5", "lr=3e-5"]}
    assert copies["sft@lr=1e-5"] == {"stage": "sft", "variants": ["lr=1e-5"]}
    assert p.extra["matrix"]["variants"][1]["stages"] == {
        "pretrain": "pretrain", "sft": "sft@lr=3e-5", "eval": "eval@lr=3e-5"}
    assert [s.index for s in p.stages] == [0, 1, 2, 3, 4]
    assert len({s.fingerprint for s in p.stages}) == 5


def test_copies_point_at_their_own_variants_copies(tmp_path: Path) -> None:
    p = plan(tmp_path, "sft.train.lr: [1.0e-5, 3.0e-5]\n")
    sft, evaluation = p.stage("sft@lr=3e-5"), p.stage("eval@lr=3e-5")
    assert sft.dir == "outputs/m/sft@lr=3e-5"
    assert sft.output.path == "outputs/m/sft@lr=3e-5/adapter"
    assert sft.output.base == "pretrain" and sft.upstream == ("pretrain",)
    models = {i.field: (i.ref, i.producer, i.path) for i in evaluation.inputs
              if i.field.startswith("models")}
    assert models == {"models.0": ("pretrain", "pretrain", "outputs/m/pretrain/model"),
                      "models.1": ("sft@lr=3e-5", "sft@lr=3e-5",
                                   "outputs/m/sft@lr=3e-5/adapter")}
    assert evaluation.config["models"] == ["pretrain", "sft@lr=3e-5"]
    assert evaluation.upstream == ("pretrain", "sft@lr=3e-5")
    assert evaluation.status["state"] == "blocked"


def test_a_stage_reading_one_axis_is_shared_by_the_variants_that_agree_on_it(
        tmp_path: Path) -> None:
    """lr x eval.limit: sft reads only lr, so 2 copies serve 4 variants; eval has 4."""
    p = plan(tmp_path, """\
        sft.train.lr: [1.0e-5, 3.0e-5]
        eval.limit: [4, 8]
    """)
    assert [s.name for s in p.stages if s.kind == "sft"] == ["sft@lr=1e-5", "sft@lr=3e-5"]
    assert [s.name for s in p.stages if s.kind == "eval"] == [
        "eval@lr=1e-5,limit=4", "eval@lr=1e-5,limit=8", "eval@lr=3e-5,limit=4",
        "eval@lr=3e-5,limit=8"]
    assert p.extra["matrix"]["copies"]["sft@lr=1e-5"]["variants"] == [
        "lr=1e-5,limit=4", "lr=1e-5,limit=8"]


def test_named_variants_sharing_a_copy_join_their_names(tmp_path: Path) -> None:
    p = plan(tmp_path, """\
        include:
          - variant: a
          - {variant: b, eval.limit: 4}
          - {variant: c, sft.train.lr: 1.0e-3}
    """)
    assert names(p) == ["pretrain", "sft@a+b", "sft@c", "eval@a", "eval@b", "eval@c"]


def test_variants_that_change_no_fingerprint_are_said(tmp_path: Path) -> None:
    p = plan(tmp_path, "sft.description: [one, two]\n")
    assert names(p) == ["pretrain", "sft", "eval"]
    assert ("matrix: variants description=one and description=two plan the same stages "
            "(their settings change no stage's fingerprint)") in p.warnings
    assert ("matrix: stage sft is planned once for variants description=one, "
            "description=two (the same fingerprint); they differ only in description, and "
            "description=one's are used") in p.warnings
    assert p.stage("sft").config["description"] == "one"


def test_plan_round_trips_and_renders_every_copy(tmp_path: Path) -> None:
    p = plan(tmp_path, "sft.train.lr: [1.0e-5, 3.0e-5]\n")
    assert Plan.from_dict(json.loads(p.to_json())) == p
    scripts = sorted(f for f in render_plan(p) if f.startswith("stages/"))
    assert scripts == ["stages/01-pretrain.sh", "stages/02-sft@lr=1e-5.sh",
                       "stages/03-sft@lr=3e-5.sh", "stages/04-eval@lr=1e-5.sh",
                       "stages/05-eval@lr=3e-5.sh"]


def test_an_eval_gate_follows_its_variants_copies(tmp_path: Path) -> None:
    base = BASE.replace("limit: 8}", "limit: 8, metrics: [exact_match], "
                                     "gate: {metric: sft/exact_match, better_than: pretrain}}")
    (tmp_path / "r.yaml").write_text(base + "matrix:\n  sft.train.lr: [1.0e-5, 3.0e-5]\n")
    p = compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)
    gate = p.stage("eval@lr=3e-5").config["gate"]
    assert (gate["metric"], gate["better_than"]) == ("sft@lr=3e-5/exact_match", "pretrain")


def test_profiles_and_set_can_replace_or_drop_the_matrix(tmp_path: Path) -> None:
    extra = "profiles:\n  small:\n    matrix: {sft.train.lr: [1.0e-3]}\n"
    path = recipe(tmp_path, "sft.train.lr: [1.0e-5, 3.0e-5]\n", extra)
    assert variants(compile_recipe(path, cwd=tmp_path, profiles=["small"])) == ["lr=0.001"]
    plain = compile_recipe(path, cwd=tmp_path, overrides=["matrix=null"])
    assert names(plain) == ["pretrain", "sft", "eval"] and "matrix" not in plain.extra
    assert validate_recipe(path) == ["small"]


def test_the_matrix_applies_after_profiles_and_set(tmp_path: Path) -> None:
    path = recipe(tmp_path, "sft.train.lr: [1.0e-5, 3.0e-5]\n")
    p = compile_recipe(path, cwd=tmp_path, overrides=["stages.sft.train.lr=0.5",
                                                      "stages.sft.train.max_steps=3"])
    assert p.stage("sft@lr=1e-5").config["train"]["lr"] == 1e-5
    assert p.stage("sft@lr=1e-5").config["train"]["max_steps"] == 3
    assert [w for w in p.warnings if w.startswith("--set")] == [
        "--set stages.sft.train.lr: the matrix sets stages.sft.train.lr, which replaces it "
        "in the variants that set it"]


# -- errors ---------------------------------------------------------------------------


def test_unknown_stage_or_key_says_did_you_mean(tmp_path: Path) -> None:
    found = errors(tmp_path, "sfft.train.lr: [1.0e-5]\n")
    assert found[0].message == "'sfft.train.lr' names no stage or setting"
    assert found[0].hint == "did you mean 'sft.train.lr'?"
    assert str(found[0].location).startswith(f"{tmp_path / 'r.yaml'}:")
    found = errors(tmp_path, "sft.train.lrr: [1.0e-5]\n")
    assert found[0].hint == "did you mean 'stages.sft.train.lr'?"


@pytest.mark.parametrize(("block", "message"), [
    ("sft.train.lr: []\n", "sft.train.lr has no values to try"),
    ("sft.train.lr: {}\n", "sft.train.lr has no values to try"),
    ("sft.train.lr: 1.0e-5\n", "sft.train.lr: an axis is a list of values or a mapping "
                               "label -> value"),
    ("sft.train.lr: [1.0e-5, 0.00001]\n", "variant name collision: values 1 and 2 of "
                                          "sft.train.lr are both named '1e-5'"),
    ("sft.data: [train, other/x]\n", "cannot name this value of sft.data in a variant name"),
    ("sft: [{kind: sft}]\n", "'sft' is a whole stage: a matrix varies settings inside stages, "
                             "it cannot add or remove one"),
    ("datasets.train.n: [10, 20]\n", "a matrix cannot vary datasets: entries are shared by "
                                     "every variant"),
    ("name: [a, b]\n", "a matrix cannot vary name: the variants share the recipe's workspace; "
                       "their stage folders are named after them"),
    ("include: [{variant: a}, {variant: a, sft.train.lr: 1.0}]\n",
     "variant name collision: two variants are named 'a'"),
    ("include: [{sft.train.lr: [1, 2]}]\n",
     "cannot name this variant: a value has no plain text"),
    ("exclude: [{sft.train.lr: 1.0}]\nsft.adapter.r: [8]\n",
     "exclude names a path that is not an axis of the matrix"),
    ("include: [{variant: 1a}]\n", "'1a' cannot name a variant"),
])
def test_block_errors(tmp_path: Path, block: str, message: str) -> None:
    assert message in [e.message for e in errors(tmp_path, block)]


def test_too_many_variants_is_refused_before_expanding(tmp_path: Path) -> None:
    block = "\n".join(f"eval.{k}: [{', '.join(str(i) for i in range(1, 9))}]"
                      for k in ("limit", "seed", "generation.max_new_tokens"))
    (found,) = errors(tmp_path, block + "\n")
    assert found.message == "the matrix expands to 512 variants"
    assert found.expected == f"at most {matrix.MAX_VARIANTS}"
    assert "exclude" in (found.hint or "")


def test_an_error_in_some_variants_names_them(tmp_path: Path) -> None:
    (found,) = errors(tmp_path, "sft.train.lr: [1.0e-5, -1.0]\n")
    assert found.message.endswith("(in variant lr=-1.0)")
    assert found.location is not None and found.location.line == BASE.count("\n") + 2


def test_a_variable_that_changes_an_entry_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("n: 40,", 'n: "${vars.steps}",')
    (tmp_path / "r.yaml").write_text(text + "matrix:\n  vars.steps: [5, 10]\n")
    with pytest.raises(RecipeError) as caught:
        compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)
    assert caught.value.message == ("variant steps=10 changes datasets entry 'train' "
                                    "(through a variable)")
    assert caught.value.hint == matrix.ENTRY_HINT


def test_registering_a_varied_stage_is_refused(tmp_path: Path) -> None:
    extra = "tracking: {backend: mlflow, register: {name: m, stage: sft}}\n"
    (found,) = errors(tmp_path, "sft.train.lr: [1.0e-5, 3.0e-5]\n", extra)
    assert found.message == "'sft' differs between the matrix's variants: which one to register?"


def test_validate_checks_every_variant(tmp_path: Path) -> None:
    path = recipe(tmp_path, "sft.train.max_steps: [2, 0]\n")
    with pytest.raises(RecipeError) as caught:
        validate_recipe(path)
    assert "(in variant max_steps=0)" in caught.value.message
