"""Weighted dataset mixtures at plan time: the rules, the plan's view, the fingerprint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from llm_recipe.compiler import compile_recipe, mixtures
from llm_recipe.errors import RecipeError, RecipeErrors
from llm_recipe.report import lineage_tree

RECIPE = """\
recipe: 1
name: m
models:
  base:
    init: {{architecture: llama, size: nano}}
    tokenizer: {{train: {{data: {tokenizer}, vocab_size: 300}}}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 100}}
  arith: {{builtin: arithmetic, split: train, n: 800, format: prompt_completion}}
  small: {{builtin: arithmetic, split: test, n: 100, format: prompt_completion}}
  nli: {{path: nli.jsonl, format: prompt_completion}}
  math: {{builtin: arithmetic, n: 50, format: gsm8k}}
  mix:
{mix}
stages:
  sft:
    kind: sft
    model: base
    data: mix
    train: {{max_steps: 5}}
{extra}"""

WEIGHTS = """\
    mixture:
      - {data: arith, weight: 0.7}
      - {data: small, weight: 0.3}
"""


def write(tmp_path: Path, mix: str = WEIGHTS, extra: str = "", tokenizer: str = "corpus",
          nli: str = '{"prompt": "p", "completion": "c"}\n') -> Path:
    (tmp_path / "nli.jsonl").write_text(nli)
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(mix=mix, extra=extra, tokenizer=tokenizer))
    return path


def plan(tmp_path: Path, mix: str = WEIGHTS, **kwargs):
    return compile_recipe(write(tmp_path, mix, **kwargs), cwd=tmp_path)


def errors(tmp_path: Path, mix: str = WEIGHTS, **kwargs) -> list[RecipeError]:
    with pytest.raises((RecipeError, RecipeErrors)) as caught:
        plan(tmp_path, mix, **kwargs)
    return list(getattr(caught.value, "errors", [caught.value]))


def one_error(tmp_path: Path, mix: str = WEIGHTS, *, hinted: bool = True,
              **kwargs) -> RecipeError:
    """The one error a recipe has: located, and with a hint where a rule of ours made it."""
    (error,) = errors(tmp_path, mix, **kwargs)
    assert error.location is not None and (error.hint or not hinted)
    return error


# ---------------------------------------------------------------------- the plan


def test_a_mixture_is_a_dataset_of_its_members_format_with_expected_counts(tmp_path):
    result = plan(tmp_path)
    entry = result.datasets["mix"]
    assert entry["format"] == "prompt_completion"
    assert entry["seed"] == 0 and entry["stopping"] == "first_exhausted"
    assert "split" not in entry  # a source's defaults are not a mixture's
    arith, small = entry["mixture"]
    # first_exhausted: small (100 rows at 30%) runs out first, after ~333 examples
    assert (arith["data"], arith["weight"], arith["proportion"]) == ("arith", 0.7, 0.7)
    assert (arith["rows"], arith["expected"]) == (800, 233)
    assert (small["rows"], small["expected"]) == (100, 100)
    assert entry["expected_examples"] == 333
    assert len(arith["fingerprint"]) == 64 and arith["fingerprint"] != small["fingerprint"]
    (data,) = [i for i in result.stage("sft").inputs if i.field == "data"]
    assert (data.ref, data.type, data.format) == ("mix", "dataset", "prompt_completion")


def test_all_exhausted_oversamples_to_the_longest_member(tmp_path):
    mix = WEIGHTS + "    stopping: all_exhausted\n    seed: 4\n"
    entry = plan(tmp_path, mix).datasets["mix"]
    assert [m["expected"] for m in entry["mixture"]] == [800, 343]
    assert entry["expected_examples"] == 1143 and entry["seed"] == 4


def test_counts_are_exact_and_need_no_stopping_rule(tmp_path):
    mix = """\
    mixture:
      - {data: arith, count: 700}
      - {data: small, count: 300}
    seed: 2
"""
    entry = plan(tmp_path, mix).datasets["mix"]
    assert "stopping" not in entry
    assert [(m["count"], m["expected"], m["rows"]) for m in entry["mixture"]] == [
        (700, 700, 800), (300, 300, 100)]
    assert entry["expected_examples"] == 1000
    assert mixtures.describe(entry) == (
        "1,000 examples: 700 arith (of 800 rows) + 300 small (of 100 rows, repeated x3) "
        "(seed 2)")


def test_members_of_unknown_size_give_proportions_only(tmp_path):
    mix = """\
    mixture:
      - {data: arith, weight: 7}
      - {data: nli, weight: 3}
"""
    entry = plan(tmp_path, mix).datasets["mix"]
    assert [m["expected"] for m in entry["mixture"]] == [None, None]
    assert [m["rows"] for m in entry["mixture"]] == [800, None]
    assert entry["expected_examples"] is None
    assert mixtures.describe(entry) == (
        "proportions only (unknown at plan time: rows of nli): 70% arith (800 rows) + 30% nli "
        "(seed 0, first_exhausted)")


def test_the_estimate_counts_the_expected_examples(tmp_path):
    mix = """\
    mixture:
      - {data: arith, count: 64}
      - {data: small, count: 64}
"""
    extra = "  epoch: {kind: sft, model: base, data: mix, train: {epochs: 1, batch_size: 8}}\n"
    result = plan(tmp_path, mix, extra=extra)
    assert mixtures.known_rows(result.datasets["mix"]) == 128
    assert result.stage("epoch").estimate["steps"] == 16  # 128 examples, 8 a step


def test_the_human_plan_shows_the_mixture_under_its_stage(tmp_path):
    console = Console(file=io.StringIO(), width=200)
    console.print(lineage_tree(plan(tmp_path)))
    text = console.file.getvalue()
    assert "sft  sft → model  (data: mix)" in text
    assert ("mixture mix: ~333 examples: 70% arith (~233 of 800 rows) + 30% small "
            "(~100 of 100 rows) (seed 0, first_exhausted)") in text


# ---------------------------------------------------------------------- the fingerprint


def fingerprint(tmp_path: Path, mix: str, **kwargs) -> str:
    return plan(tmp_path, mix, **kwargs).stage("sft").fingerprint


def test_the_fingerprint_covers_weights_seed_stopping_and_member_content(tmp_path):
    base = fingerprint(tmp_path, WEIGHTS)
    assert fingerprint(tmp_path, WEIGHTS.replace("0.7", "0.6")) != base
    assert fingerprint(tmp_path, WEIGHTS + "    seed: 1\n") != base
    assert fingerprint(tmp_path, WEIGHTS + "    stopping: all_exhausted\n") != base
    # the same proportions written otherwise are the same mixture; a description is cosmetic
    assert fingerprint(tmp_path, WEIGHTS.replace("0.7", "7").replace("0.3", "3")) == base
    assert fingerprint(tmp_path, WEIGHTS + "    description: two sets\n") == base
    assert fingerprint(tmp_path, WEIGHTS.replace("small", "nli")) != base
    with_file = WEIGHTS.replace("small", "nli")
    assert fingerprint(tmp_path, with_file, nli='{"prompt": "q", "completion": "c"}\n') != \
        fingerprint(tmp_path, with_file)


def test_a_new_weight_makes_the_stage_stale(tmp_path):
    from llm_recipe.compiler.status import stage_status

    first = plan(tmp_path).stage("sft")
    stage_dir = tmp_path / first.dir
    stage_dir.mkdir(parents=True)
    (stage_dir / "out.txt").write_text("weights")
    manifest = {"status": "complete", "fingerprint": first.fingerprint, "config": first.config,
                "inputs": [{"field": i.field, "fingerprint": i.fingerprint}
                           for i in first.inputs],
                "output": {"path": f"{first.dir}/out.txt", "files": {"out.txt": {"size": 7}}}}
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))
    assert stage_status(stage_dir, first.fingerprint, first.config, tmp_path)["state"] == "fresh"
    changed = plan(tmp_path, WEIGHTS.replace("0.3", "0.5")).stage("sft")
    status = stage_status(stage_dir, changed.fingerprint, changed.config, tmp_path,
                          {i.field: i.fingerprint for i in changed.inputs})
    assert status == {"state": "stale", "reason": "input changed: data"}


# ---------------------------------------------------------------------- the rules


def test_weights_and_counts_cannot_be_mixed(tmp_path):
    error = one_error(tmp_path, """\
    mixture:
      - {data: arith, weight: 0.7}
      - {data: small, count: 30}
""")
    assert error.message == "member 1 has a count and member 0 a weight"
    assert error.location.line == 16
    assert "counts (700, 300)" in error.hint


def test_an_unknown_member_suggests_a_name(tmp_path):
    error = one_error(tmp_path, WEIGHTS.replace("data: small", "data: smal"))
    assert error.message == "no dataset named 'smal'"
    assert error.hint == "did you mean 'small'?"
    assert error.path == ("datasets", "mix", "mixture", 1, "data")


def test_members_are_datasets_entries_with_a_source(tmp_path):
    assert one_error(tmp_path, WEIGHTS.replace("data: small", "data: sft")).message == (
        "'sft' is a stage, and a mixture mixes datasets: entries")
    assert one_error(tmp_path, WEIGHTS.replace("data: small", "data: base")).message == (
        "'base' is a model, and a mixture mixes datasets: entries")
    assert one_error(tmp_path, WEIGHTS.replace("data: small", "data: mix")).message == (
        "a mixture cannot contain itself")
    assert one_error(tmp_path, WEIGHTS.replace("data: small", "data: arith")).message == (
        "'arith' is listed twice in this mixture")


def test_no_mixture_of_mixtures(tmp_path):
    extra = "  sft2: {kind: sft, model: base, data: outer, train: {max_steps: 5}}\n"
    mix = WEIGHTS + "  outer:\n    mixture:\n      - {data: mix, weight: 1}\n" \
        "      - {data: arith, weight: 1}\n"
    error = one_error(tmp_path, mix, extra=extra)
    assert error.message == "'mix' is itself a mixture"
    assert "multiplied" in error.hint


def test_members_share_one_format(tmp_path):
    error = one_error(tmp_path, WEIGHTS.replace("data: small", "data: math"))
    assert error.message == ("'math' is a dataset of format gsm8k, and 'arith' (member 0) "
                             "of format prompt_completion")
    assert error.expected == "members of one format"
    error = one_error(tmp_path, WEIGHTS + "    format: gsm8k\n")
    assert error.message == "the mixture says format gsm8k, and its members are prompt_completion"


def test_lineage_checks_the_mixture_format_like_a_single_dataset(tmp_path):
    mix = """\
    mixture:
      - {data: corpus, weight: 1}
      - {data: corpus2, weight: 1}
  corpus2: {builtin: corpus, format: text, n: 10, seed: 3}
"""
    extra = "  dpo: {kind: dpo, policy: base, data: mix, train: {max_steps: 5}}\n"
    error = one_error(tmp_path, mix, extra=extra)
    assert error.message == "got 'mix', a dataset of format text"
    assert error.expected == "a dataset of format preference"
    assert error.path == ("stages", "dpo", "data")
    # sft takes text: the same mixture plans there
    assert plan(tmp_path, mix).stage("sft").inputs[1].format == "text"


def test_keys_of_a_source_do_not_apply_to_a_mixture(tmp_path):
    error = one_error(tmp_path, WEIGHTS + "    limit: 10\n")
    assert error.message == "'limit' does not apply to a mixture"
    error = one_error(tmp_path, WEIGHTS + "    hub: org/x\n")
    assert "exactly one of hub, path, builtin, mixture" in error.expected


def test_stopping_belongs_to_weights_of_a_mixture(tmp_path):
    counts = "    mixture:\n      - {data: arith, count: 5}\n    stopping: all_exhausted\n"
    assert one_error(tmp_path, counts).message == "stopping applies to a mixture by weight"
    mix = WEIGHTS + "  other: {builtin: corpus, format: text, stopping: first_exhausted}\n"
    assert one_error(tmp_path, mix).message == "stopping applies to a mixture only"


STREAMS = """\
    mixture:
      - {data: web, weight: 0.6}
      - {data: books, weight: 0.4}
  web: {path: nli.jsonl, format: text, streaming: true}
  books: {builtin: corpus, format: text, n: 30, streaming: true}
"""
PRETRAIN = "  pretrain: {kind: pretrain, model: base, data: mix, train: {max_steps: 4}}\n"


def pretrain_plan(tmp_path: Path, mix: str = STREAMS):
    return compile_recipe(write(tmp_path, mix, extra=PRETRAIN), cwd=tmp_path,
                          overrides=["stages.sft=null"])


def test_a_mixture_of_streams_is_a_stream(tmp_path):
    result = pretrain_plan(tmp_path)
    entry = result.datasets["mix"]
    assert entry["streaming"] is True and entry["format"] == "text"
    assert [m["rows"] for m in entry["mixture"]] == [None, 30]
    read_whole = pretrain_plan(tmp_path, STREAMS.replace(", streaming: true}", "}"))
    assert "streaming" not in read_whole.datasets["mix"]
    assert read_whole.stage("pretrain").fingerprint != result.stage("pretrain").fingerprint


def test_the_rules_of_streams_apply_to_a_mixture_of_streams(tmp_path):
    error = one_error(tmp_path, STREAMS)  # sft reads its data whole
    assert error.message == ("dataset 'mix' streams (its members stream), and sft reads its "
                             "data whole")
    assert error.hint.startswith("remove streaming: true from the members of datasets.mix")
    no_steps = PRETRAIN.replace("max_steps: 4", "lr: 1.0e-3")
    messages = [e.message for e in errors(tmp_path, STREAMS, extra=no_steps)]
    assert any("the number of steps in the run cannot be known" in m for m in messages)


def test_members_stream_all_or_none_and_streams_take_weights(tmp_path):
    error = one_error(tmp_path, STREAMS.replace("data: books", "data: corpus"))
    assert error.message == "'web' streams (streaming: true) and 'corpus' does not"
    counts = STREAMS.replace("weight: 0.6", "count: 6").replace("weight: 0.4", "count: 4")
    messages = [e.message for e in errors(tmp_path, counts, extra=PRETRAIN)]
    assert "a mixture of streams cannot take counts" in messages


def test_tokenizer_training_on_a_mixture_is_refused(tmp_path):
    error = one_error(tmp_path, tokenizer="mix")
    assert error.message == "'mix' is a mixture, and a tokenizer trains on one dataset's text"


@pytest.mark.parametrize(("member", "expected"), [
    ("{data: arith, weight: 0}", "more than 0"),
    ("{data: arith, weight: -1}", "more than 0"),
    ("{data: arith, count: 0}", "at least 1"),
    ("{data: arith, count: 1.5}", "integer"),
    ("{data: arith}", "exactly one of weight, count"),
    ("{data: arith, weight: 1, count: 3}", "exactly one of weight, count"),
])
def test_the_schema_checks_each_member(tmp_path, member, expected):
    error = one_error(tmp_path, f"    mixture:\n      - {member}\n", hinted=False)
    assert expected in (error.expected or "")


def test_an_empty_mixture_is_refused(tmp_path):
    assert one_error(tmp_path, "    mixture: []\n", hinted=False).message == "must not be empty"


# ---------------------------------------------------------------------- pure functions


def test_expected_counts():
    assert mixtures.expected_counts([0.5, 0.5], [100, 300], "first_exhausted") == [100, 100]
    assert mixtures.expected_counts([0.5, 0.5], [100, 300], "all_exhausted") == [300, 300]
    assert mixtures.expected_counts([0.25, 0.75], [100, 300], "first_exhausted") == [100, 300]
    assert mixtures.expected_counts([0.5, 0.5], [100, None], "first_exhausted") is None


def test_known_rows():
    assert mixtures.known_rows({"builtin": "corpus"}) == 1000
    assert mixtures.known_rows({"builtin": "corpus", "n": 50, "limit": 80}) == 50
    assert mixtures.known_rows({"builtin": "corpus", "n": 500, "limit": 80}) == 80
    assert mixtures.known_rows({"hub": "openai/gsm8k", "split": "test"}) == 1319
    assert mixtures.known_rows({"hub": "org/other"}) is None
    assert mixtures.known_rows({"path": "x.jsonl", "examples": 12}) == 12
    assert mixtures.known_rows({"path": "x.jsonl", "limit": 12}) == 12
    assert mixtures.known_rows({"mixture": [], "expected_examples": None}) is None
    assert mixtures.known_rows({"mixture": [], "expected_examples": 9, "examples": 4}) == 4
