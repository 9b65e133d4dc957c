"""Resolve pass: references, lineage types, cycles and the stage order."""

from __future__ import annotations

import pytest

from llm_recipe.compiler.load import load_text
from llm_recipe.compiler.resolve import Artifact, Edge, resolve
from llm_recipe.errors import Location, RecipeError

HEAD = """\
recipe: 1
name: lineage
models:
  base:
    hub: gpt2
datasets:
  math:
    builtin: arithmetic
    format: gsm8k
  prefs:
    path: prefs.jsonl
    format: preference
  corpus:
    builtin: corpus
    format: text
stages:
"""

PIPELINE = (
    HEAD
    + """\
  eval:
    kind: eval
    models: [base, sft, dpo]
    data: math
  sft:
    kind: sft
    model: base
    data: math
    adapter: {type: lora}
  rollout:
    kind: rollout
    policy: sft
    prompts: math
  pairs:
    kind: preferences
    rollouts: rollout
  dpo:
    kind: dpo
    policy: sft
    data: pairs
"""
)


def resolved(text: str):
    doc = load_text(text, "r.yaml")
    return resolve(doc.data, doc.where)


def ok(text: str):
    resolution, errors = resolved(text)
    assert errors == [], "\n".join(e.render() for e in errors)
    return resolution


def errors(text: str) -> list[RecipeError]:
    return resolved(text)[1]


def only(text: str) -> RecipeError:
    found = errors(text)
    assert len(found) == 1, "\n".join(e.render() for e in found)
    return found[0]


def test_producers_come_before_consumers_ties_in_declaration_order() -> None:
    assert ok(PIPELINE).order == ("sft", "rollout", "pairs", "dpo", "eval")


def test_independent_stages_keep_declaration_order() -> None:
    stages = "".join(
        f"  {name}:\n    kind: sft\n    model: base\n    data: math\n" for name in "dbca"
    )
    assert ok(HEAD + stages).order == ("d", "b", "c", "a")


def test_after_orders_without_consuming() -> None:
    text = HEAD + (
        "  second:\n    kind: sft\n    model: base\n    data: math\n    after: [first]\n"
        "  first:\n    kind: sft\n    model: base\n    data: math\n"
    )
    resolution = ok(text)
    assert resolution.order == ("first", "second")
    assert resolution.upstream["second"] == ("first",)
    assert resolution.edges["second"] == (
        Edge("second", "model", ("model",), "base"),
        Edge("second", "data", ("data",), "math"),
    )


def test_upstream_in_plan_order() -> None:
    resolution = ok(PIPELINE)
    assert resolution.upstream == {
        "sft": (),
        "rollout": ("sft",),
        "pairs": ("rollout",),
        "dpo": ("sft", "pairs"),
        "eval": ("sft", "dpo"),
    }


def test_adapter_lineage_through_sft_to_dpo() -> None:
    artifacts = ok(PIPELINE).artifacts
    assert artifacts["base"] == Artifact("model")
    assert artifacts["math"] == Artifact("dataset", format="gsm8k")
    assert artifacts["sft"] == Artifact("adapter", base="base", producer="sft")
    assert artifacts["rollout"] == Artifact("dataset", format="rollouts", producer="rollout")
    assert artifacts["pairs"] == Artifact("dataset", format="preference", producer="pairs")
    # dpo has no adapter block of its own: it continues sft's adapter, still on base.
    assert artifacts["dpo"] == Artifact("adapter", base="base", producer="dpo")
    assert artifacts["eval"] == Artifact("report", producer="eval")


def test_full_finetune_produces_a_model() -> None:
    text = PIPELINE.replace("    adapter: {type: lora}\n", "")
    artifacts = ok(text).artifacts
    assert artifacts["sft"] == Artifact("model", producer="sft")
    assert artifacts["dpo"] == Artifact("model", producer="dpo")


def test_continual_produces_a_patch_on_its_model() -> None:
    text = HEAD + (
        "  cl:\n    kind: continual\n    model: base\n"
        "    phases:\n      - {name: one, data: corpus, steps: 10}\n"
        "  eval:\n    kind: eval\n    models: [base, cl]\n    data: math\n"
        "    metrics: [exact_match]\n"
    )
    resolution = ok(text)
    assert resolution.artifacts["cl"] == Artifact("patch", base="base", producer="cl")
    assert resolution.edges["cl"][1] == Edge("cl", "phases[].data", ("phases", 0, "data"), "corpus")
    assert [e.path for e in resolution.edges["eval"]] == [("models", 0), ("models", 1), ("data",)]


def test_missing_reference_lists_only_names_that_can_fit() -> None:
    error = only(PIPELINE.replace("    model: base\n", "    model: bsae\n"))
    assert error.message == "no model or stage named 'bsae'"
    assert error.path == ("stages", "sft", "model")
    assert error.location == Location("r.yaml", 23, 12)
    assert error.expected == "one of: base, dpo"  # eval, rollout and pairs cannot be models
    assert error.hint == "did you mean 'base'?"


def test_missing_dataset_reference() -> None:
    error = only(PIPELINE.replace("    prompts: math\n", "    prompts: gsm8k\n"))
    assert error.message == "no dataset or stage named 'gsm8k'"
    assert error.expected == "one of: math"  # the only prompts-shaped data
    assert error.hint == "define 'gsm8k' under datasets"


def test_missing_reference_without_a_close_match() -> None:
    error = only(PIPELINE.replace("    model: base\n", "    model: llama\n"))
    assert error.hint == "define 'llama' under models"


def test_after_unknown_stage() -> None:
    error = only(
        PIPELINE.replace("    rollouts: rollout\n", "    rollouts: rollout\n    after: [base]\n")
    )
    assert error.message == "no stage named 'base'"
    assert error.path == ("stages", "pairs", "after", 0)


def test_cycle_names_every_stage() -> None:
    text = HEAD + (
        "  a:\n    kind: sft\n    model: c\n    data: math\n"
        "  b:\n    kind: sft\n    model: a\n    data: math\n"
        "  c:\n    kind: sft\n    model: b\n    data: math\n"
        "  d:\n    kind: sft\n    model: base\n    data: math\n"
    )
    resolution, found = resolved(text)
    assert [e.message for e in found] == ["stages form a cycle: a -> c -> b -> a"]
    assert found[0].path == ("stages", "a", "model")
    assert resolution.order == ("d",)


def test_two_cycles_are_two_errors() -> None:
    text = HEAD + (
        "  a:\n    kind: sft\n    model: b\n    data: math\n"
        "  b:\n    kind: sft\n    model: a\n    data: math\n"
        "  c:\n    kind: sft\n    model: base\n    data: math\n    after: [d]\n"
        "  d:\n    kind: sft\n    model: base\n    data: math\n    after: [c]\n"
    )
    messages = sorted(e.message for e in errors(text))
    assert messages == ["stages form a cycle: a -> b -> a", "stages form a cycle: c -> d -> c"]


def test_stage_downstream_of_a_cycle_is_not_ordered_but_not_reported() -> None:
    text = HEAD + (
        "  a:\n    kind: sft\n    model: b\n    data: math\n"
        "  b:\n    kind: sft\n    model: a\n    data: math\n"
        "  e:\n    kind: eval\n    models: [a]\n    data: math\n"
    )
    resolution, found = resolved(text)
    assert len(found) == 1
    assert resolution.order == ()


def test_self_reference() -> None:
    error = only(
        PIPELINE.replace("    policy: sft\n    data: pairs\n", "    policy: dpo\n    data: pairs\n")
    )
    assert error.message == "stage 'dpo' consumes its own output"
    assert error.expected == "an adapter or a model"


@pytest.mark.parametrize(
    ("old", "new", "message", "expected"),
    [
        (
            "    data: pairs\n",
            "    data: sft\n",
            "got stage 'sft', which produces an adapter on 'base'",
            "a dataset of format preference",
        ),
        (
            "    data: pairs\n",
            "    data: math\n",
            "got 'math', a dataset of format gsm8k",
            "a dataset of format preference",
        ),
        (
            "    rollouts: rollout\n",
            "    rollouts: math\n",
            "got 'math', a dataset of format gsm8k",
            "a dataset of format rollouts",
        ),
        (
            "    policy: sft\n    prompts: math\n",
            "    policy: math\n    prompts: math\n",
            "got 'math', a dataset of format gsm8k",
            "an adapter or a model",
        ),
        (
            "    models: [base, sft, dpo]\n",
            "    models: [base, pairs]\n",
            "got stage 'pairs', which produces a dataset of format preference",
            "an adapter or a model or a patch",
        ),
    ],
)
def test_lineage_mismatch(old: str, new: str, message: str, expected: str) -> None:
    assert old in PIPELINE
    error = only(PIPELINE.replace(old, new))
    assert (error.message, error.expected) == (message, expected)
    assert error.hint


def test_pretrain_needs_full_weights_not_an_adapter() -> None:
    error = only(PIPELINE + "  more:\n    kind: pretrain\n    model: sft\n    data: corpus\n")
    assert error.message == "got stage 'sft', which produces an adapter on 'base'"
    assert error.expected == "a model"


def test_mismatch_hint_names_what_fits() -> None:
    error = only(PIPELINE.replace("    data: pairs\n", "    data: math\n"))
    assert error.hint == "names that fit here: prefs, pairs"


def test_eval_metric_needs_a_matching_format() -> None:
    text = PIPELINE.replace(
        "    data: math\n", "    data: corpus\n    metrics: [perplexity, exact_match]\n", 1
    )
    error = only(text)
    assert error.path == ("stages", "eval", "metrics", 1)
    assert (
        error.message
        == "metric exact_match cannot be computed on 'corpus', a dataset of format text"
    )


def test_eval_default_metric_is_checked() -> None:
    error = only(PIPELINE.replace("    data: math\n", "    data: corpus\n", 1))
    assert error.message.startswith("the default metric gsm8k_accuracy cannot be computed")
    assert error.path == ("stages", "eval")
    assert error.hint == "set metrics for this data, e.g. metrics: [perplexity]"


def test_name_collision_is_one_error() -> None:
    text = HEAD + "  math:\n    kind: sft\n    model: base\n    data: math\n"
    error = only(text)
    assert error.message == "'math' is already the name of a dataset"
    assert error.location == Location("r.yaml", 17, 3)


def test_tokenizer_training_data() -> None:
    text = (
        HEAD.replace(
            "    hub: gpt2\n",
            "    init: {architecture: gpt2}\n    tokenizer: {train: {data: corpsu}}\n",
        )
        + "  pre:\n    kind: pretrain\n    model: base\n    data: corpus\n"
    )
    error = only(text)
    assert error.path == ("models", "base", "tokenizer", "train", "data")
    assert error.hint == "did you mean 'corpus'?"
    assert errors(text.replace("corpsu", "corpus")) == []
    error = only(text.replace("corpsu", "base"))
    assert error.message == "got 'base', a model"


REGISTER = (
    PIPELINE
    + """\
tracking:
  register:
    name: gsm8k-lora
    stage: dpo
    gate: {report: eval, metric: gsm8k_accuracy, min: 0.5}
"""
)


def test_register_references() -> None:
    assert errors(REGISTER) == []
    assert only(REGISTER.replace("stage: dpo", "stage: pairs")).expected == (
        "an adapter or a model or a patch"
    )
    assert only(REGISTER.replace("report: eval", "report: dpo")).expected == "a report"
    error = only(REGISTER.replace("stage: dpo", "stage: base"))
    assert error.message == "no stage named 'base'"


def test_unknown_and_odd_kinds_do_not_crash() -> None:
    for kind in ("sfft", "[sft]", "{a: 1}", "null", "3"):
        resolution, _ = resolved(HEAD + f"  x:\n    kind: {kind}\n    model: base\n")
        assert resolution.order == ("x",)


@pytest.mark.parametrize(
    "section",
    ["models: [1, 2]", "stages: [a]", "datasets: 3", "stages:\n  x: [1]", "stages:\n  x: null"],
)
def test_malformed_sections_do_not_crash(section: str) -> None:
    resolved(f"recipe: 1\nname: x\n{section}\n")
