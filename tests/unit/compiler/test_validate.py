"""Validate pass: schema errors said in the user's terms, and the semantic rules."""

from __future__ import annotations

import pytest

from conftest import MINIMAL
from llm_recipe.compiler import check
from llm_recipe.compiler.load import load_text
from llm_recipe.compiler.validate import validate
from llm_recipe.errors import Location, RecipeError, RecipeErrors


def errors_of(text: str) -> list[RecipeError]:
    """Every error the validate pass finds in ``text`` (no compose: no vars, no extends)."""
    doc = load_text(text, "r.yaml")
    return validate(doc.data, doc.where)


def only(text: str) -> RecipeError:
    errors = errors_of(text)
    assert len(errors) == 1, "\n".join(e.render() for e in errors)
    return errors[0]


def test_minimal_is_valid() -> None:
    assert errors_of(MINIMAL) == []


def test_unknown_key_is_reported_at_the_key_with_did_you_mean() -> None:
    error = only(MINIMAL.replace("      lr: 1e-4", "      lrr: 1e-4"))
    assert error.message == "unknown key 'lrr'"
    assert error.path == ("stages", "sft", "train", "lrr")
    assert error.location == Location("r.yaml", 19, 7)
    assert error.hint == "did you mean 'lr'?"
    assert "max_steps" in error.expected


def test_unknown_key_without_a_close_match() -> None:
    error = only(MINIMAL + "zzz: 1\n")
    assert error.hint.startswith("check the spelling")
    assert error.expected.startswith("one of: recipe, name")


def test_unknown_key_of_a_kind_specific_stage() -> None:
    error = only(MINIMAL.replace("    data: math\n", "    data: math\n    beta: 0.1\n"))
    assert error.path == ("stages", "sft", "beta")
    assert error.message == "unknown key 'beta'"


def test_missing_required_keys() -> None:
    errors = errors_of("recipe: 1\n")
    assert [e.message for e in errors] == [
        "missing required key 'name'",
        "missing required key 'stages'",
    ]


def test_stage_without_kind() -> None:
    error = only(MINIMAL.replace("    kind: sft\n", ""))
    assert error.message == "missing required key 'kind'"
    assert error.path == ("stages", "sft")
    assert error.location == Location("r.yaml", 13, 3)
    assert "kind: sft" in error.hint


def test_unknown_stage_kind() -> None:
    error = only(MINIMAL.replace("kind: sft", "kind: dpoo"))
    assert error.message == "unknown stage kind 'dpoo'"
    assert error.hint == "did you mean 'dpo'?"
    assert error.expected.startswith("one of: pretrain, sft")


def test_stage_kind_of_the_wrong_type() -> None:
    error = only(MINIMAL.replace("kind: sft", "kind: [sft]"))
    assert error.message == "got a list"


def test_enum_value_with_did_you_mean() -> None:
    text = MINIMAL.replace("    revision: main\n", "    revision: main\n    dtype: bf16\n")
    error = only(text)
    assert (error.message, error.hint) == ("unknown value 'bf16'", "did you mean 'bfloat16'?")
    assert error.expected == "one of: auto, bfloat16, float16, float32"


def test_model_needs_a_source() -> None:
    error = only(MINIMAL.replace("    hub: sshleifer/tiny-gpt2\n", ""))
    assert error.message == "needs one of: hub, path, init"
    assert error.path == ("models", "base")


def test_model_with_two_sources_points_at_the_second() -> None:
    error = only(MINIMAL.replace("    revision: main\n", "    revision: main\n    path: w/\n"))
    assert error.message == "'hub' and 'path' cannot be used together"
    assert error.path == ("models", "base", "path")
    assert error.location == Location("r.yaml", 7, 5)


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("yes", "recipes use YAML 1.2: write true or false"),
        ("'8'", "write the number without quotes: 8"),
        ("eight", "e.g. batch_size: 8"),
        ("${env:BATCH}", "${env:...} references are only allowed in string settings"),
    ],
)
def test_type_errors_have_hints(value: str, hint: str) -> None:
    error = only(MINIMAL.replace("      lr: 1e-4", f"      lr: 1e-4\n      batch_size: {value}"))
    assert error.expected == "an integer"
    assert error.hint == hint
    assert error.path == ("stages", "sft", "train", "batch_size")


def test_boolean_type_error() -> None:
    error = only(MINIMAL.replace("    data: math\n", "    data: math\n    packing: on\n"))
    assert error.expected == "true or false"
    assert "YAML 1.2" in error.hint


def test_number_without_default_gets_a_generic_hint() -> None:
    error = only(MINIMAL.replace("lr: 1e-4", "lr: fast"))
    assert error.expected == "a number"
    assert error.hint


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("max_steps: 10", "max_steps: 0", "at least 1"),
        ("lr: 1e-4", "lr: 0", "more than 0"),
        ("lr: 1e-4", "lr: 1e-4\n      warmup_ratio: 2", "at most 1"),
    ],
)
def test_bounds(old: str, new: str, expected: str) -> None:
    assert only(MINIMAL.replace(old, new)).expected == expected


def test_bad_names() -> None:
    error = only(MINIMAL.replace("name: demo", "name: my recipe"))
    assert error.path == ("name",)
    assert "a letter" in error.expected
    error = only(MINIMAL.replace("  sft:\n", "  1sft:\n"))
    assert error.message == "'1sft' is not a valid name"
    assert error.path == ("stages", "1sft")
    assert error.location == Location("r.yaml", 13, 3)
    assert error.expected == "a letter, then up to 63 letters, digits, '_' or '-'"


def test_bad_environment_variable_name() -> None:
    error = only(MINIMAL + "compute:\n  env:\n    MY-VAR: 1\n")
    assert error.message == "'MY-VAR' is not a valid name"
    assert error.location == Location("r.yaml", 22, 5)


def test_unknown_key_under_property_names_enum() -> None:
    rollout = "  roll:\n    kind: rollout\n    policy: sft\n    prompts: math\n"
    error = only(MINIMAL + rollout + "    rewards: {corectness: 1}\n")
    assert error.message == "unknown key 'corectness'"
    assert error.hint == "did you mean 'correctness'?"


def test_path_with_a_line_break() -> None:
    text = MINIMAL.replace(
        "    hub: sshleifer/tiny-gpt2\n    revision: main\n", '    path: "a\\nb"\n'
    )
    assert only(text).message == "contains a line break or NUL"


EVAL = (
    MINIMAL
    + """\
  eval:
    kind: eval
    models: [base, sft]
    data: math
"""
)


def test_empty_and_repeated_lists() -> None:
    assert only(EVAL.replace("[base, sft]", "[]")).message == "must not be empty"
    error = only(EVAL.replace("[base, sft]", "[base, base]"))
    assert error.message == "has repeated entries"


def test_any_of() -> None:
    text = MINIMAL.replace("    data: math\n", "    data: math\n    adapter:\n      type: lora\n")
    assert errors_of(text) == []
    error = only(text.replace("type: lora\n", "type: lora\n      target_modules: 5\n"))
    assert error.expected == "'all-linear' or a list"


def test_empty_stages() -> None:
    error = only("recipe: 1\nname: x\nstages: {}\n")
    assert error.message == "must not be empty"
    assert error.path == ("stages",)


def test_vars_values_must_be_scalars() -> None:
    error = only(MINIMAL + "vars:\n  a: [1]\n")
    assert error.path == ("vars", "a")


# semantic rules


def test_epochs_and_max_steps() -> None:
    error = only(MINIMAL.replace("lr: 1e-4", "lr: 1e-4\n      epochs: 2"))
    assert error.path == ("stages", "sft", "train", "max_steps")
    assert error.location == Location("r.yaml", 18, 7)


INIT = """\
recipe: 1
name: scratch
models:
  tiny:
    init: {architecture: llama}
stages:
  pretrain:
    kind: pretrain
    model: tiny
    data: tiny
"""


def test_init_without_tokenizer() -> None:
    error = only(INIT)
    assert error.path == ("models", "tiny", "init")
    assert error.location == Location("r.yaml", 5, 5)


def test_init_with_tokenizer() -> None:
    assert (
        errors_of(
            INIT.replace(
                "{architecture: llama}", "{architecture: llama}\n    tokenizer: {hub: gpt2}"
            )
        )
        == []
    )


def test_init_and_hub_is_one_error_not_two() -> None:
    error = only(INIT.replace("    init:", "    hub: gpt2\n    init:"))
    assert "cannot be used together" in error.message


@pytest.mark.parametrize("indent", [0, 4])
def test_deepspeed_needs_a_zero_stage(indent: int) -> None:
    block = "compute:\n  distributed:\n    strategy: deepspeed\n"
    text = MINIMAL + "".join(" " * indent + line + "\n" for line in block.splitlines())
    error = only(text)
    assert error.message == "deepspeed needs a ZeRO stage"
    prefix = ("stages", "sft") if indent else ()
    assert error.path == (*prefix, "compute", "distributed", "strategy")
    fixed = " " * (indent + 4) + "zero_stage: 3\n"
    assert errors_of(text.replace("deepspeed\n", "deepspeed\n" + fixed)) == []


def test_docker_needs_an_image() -> None:
    error = only(MINIMAL + "compute:\n  launcher: docker\n")
    assert error.expected == "compute.docker.image"
    assert errors_of(MINIMAL + "compute:\n  launcher: docker\n  docker: {image: lab}\n") == []


@pytest.mark.parametrize(
    "block",
    [
        "compute:\n  env:\n    HF_TOKEN: hf_abc\n",
        "compute:\n  env:\n    WANDB_API_KEY: abc\n",
        "compute:\n  env:\n    AWS_SECRET_ACCESS_KEY: abc\n",
        "compute:\n  env:\n    DB_PASSWORD: hunter2\n",
        "tracking:\n  tags:\n    api_key: abc\n",
    ],
)
def test_inline_secrets(block: str) -> None:
    error = only(MINIMAL + block)
    assert "looks like a secret written inline" in error.message
    assert error.expected.startswith("a reference such as ${env:")


@pytest.mark.parametrize(
    "block",
    [
        "compute:\n  env:\n    HF_TOKEN: ${env:HF_TOKEN}\n",
        "compute:\n  env:\n    HF_TOKEN: ''\n",
        "compute:\n  env:\n    TOKENIZERS_PARALLELISM: 'false'\n",
        "compute:\n  env:\n    MAX_TOKENS: 5\n",
    ],
)
def test_not_secrets(block: str) -> None:
    assert errors_of(MINIMAL + block) == []


def test_all_errors_at_once_sorted_by_line() -> None:
    text = MINIMAL.replace("name: demo", "name: 'a b'").replace("lr: 1e-4", "lrr: 1e-4")
    text = text.replace("max_steps: 10", "max_steps: ten") + "compute:\n  env:\n    HF_TOKEN: x\n"
    doc = load_text(text, "r.yaml")
    with pytest.raises(RecipeErrors) as info:
        check(doc)
    lines = [e.location.line for e in info.value.errors]
    assert len(lines) == 4
    assert lines == sorted(lines)


def test_schema_and_reference_errors_come_together() -> None:
    text = MINIMAL.replace("model: base", "model: nope").replace("max_steps: 10", "max_steps: x")
    with pytest.raises(RecipeErrors) as info:
        check(load_text(text, "r.yaml"))
    messages = [e.message for e in info.value.errors]
    assert messages == ["no model or stage named 'nope'", "got 'x'"]


SECRET = "hf_DoNotPrintMe0123456789"


@pytest.mark.parametrize(
    ("block", "quoted"),
    [
        (f"compute:\n  env:\n    HF_TOKEN: {SECRET}\n", "    HF_TOKEN: ****"),
        (f"compute:\n  env:\n    'HF_TOKEN': \"{SECRET}\"  # mine\n", "    'HF_TOKEN': ****"),
        (f"compute:\n  env: {{A: 1, HF_TOKEN: {SECRET}, B: 2}}\n", "  env: {A: 1, HF_TOKEN: ****"),
        (f"compute:\n  env:\n    HF_TOKEN:\n      {SECRET}\n", "      ****"),
    ],
)
def test_inline_secret_is_not_quoted_back(block: str, quoted: str) -> None:
    """The error quotes its source line: the value there is masked, the key kept."""
    error = only(MINIMAL + block)
    rendered = error.render()
    assert SECRET not in rendered and "HF_TOKEN" in rendered
    assert f"| {quoted}\n" in rendered


def test_other_errors_on_a_secret_line_do_not_quote_it_either() -> None:
    errors = errors_of(MINIMAL + f"compute:\n  env: {{HF_TOKEN: {SECRET}, X: [1]}}\n")
    assert len(errors) == 2
    assert all(SECRET not in error.render() for error in errors)


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "+.inf", "-.inf", ".INF"])
def test_non_finite_numbers_are_refused_where_written(value: str) -> None:
    error = only(MINIMAL.replace("lr: 1e-4", f"lr: {value}"))
    assert error.path == ("stages", "sft", "train", "lr")
    assert error.location == Location("r.yaml", 19, 11)
    assert error.message.startswith("got ") and error.message.endswith(("nan", "inf"))
    assert error.expected == "a finite number"
    assert error.hint


def test_non_finite_numbers_anywhere_and_once_each() -> None:
    """A range check (weight_decay >= 0) does not say it a second time; vars count too."""
    text = MINIMAL.replace("lr: 1e-4", "weight_decay: -.inf") + "vars:\n  x: .nan\n"
    errors = errors_of(text)
    assert [(e.path, e.expected) for e in errors] == [
        (("stages", "sft", "train", "weight_decay"), "a finite number"),
        (("vars", "x"), "a finite number"),
    ]
