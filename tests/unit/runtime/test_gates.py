"""Gates: judging metrics, the manifest record, and the plan-time checks (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime import gates

RECIPE = """\
recipe: 1
name: gated
models:
  base: {init: {architecture: llama, size: nano}, tokenizer: {train: {data: corpus}}}
datasets:
  corpus: {builtin: corpus, n: 50, format: text}
  train: {builtin: arithmetic, split: train, n: 16, format: gsm8k}
  test: {builtin: arithmetic, split: test, n: 4, format: gsm8k}
stages:
  sft:
    kind: sft
    model: base
    data: train
    train: {max_steps: 2}
  eval:
    kind: eval
    models: [base, sft]
    data: test
    metrics: [gsm8k_accuracy, perplexity]
    gate: {metric: sft/gsm8k_accuracy, min: 0.5}
  after_eval:
    kind: eval
    models: [sft]
    data: test
    after: [eval]
"""


def plan_of(tmp_path: Path, text: str = RECIPE, *sets: str):
    (tmp_path / "r.yaml").write_text(text)
    return compile_recipe(tmp_path / "r.yaml", overrides=sets, cwd=tmp_path)


def errors_of(tmp_path: Path, text: str) -> list[RecipeError]:
    try:
        plan_of(tmp_path, text)
    except RecipeError as error:
        return list(getattr(error, "errors", [error]))
    return []


def test_min_max_and_better_than() -> None:
    gate = gates.Gate("eval", "sft/gsm8k_accuracy", min=0.5)
    assert gate.judge({"sft/gsm8k_accuracy": 0.5})["passed"]
    failed = gate.judge({"sft/gsm8k_accuracy": 0.25})
    assert failed == {"passed": False, "metric": "sft/gsm8k_accuracy", "value": 0.25,
                      "threshold": 0.5, "op": ">=", "than": None, "source": "",
                      "message": "sft/gsm8k_accuracy = 0.25, needs >= 0.5"}
    assert not gates.Gate("e", "m/x", max=0.1).judge({"m/x": 0.2})["passed"]
    better = gates.Gate("e", "sft/gsm8k_accuracy", better_than="base/gsm8k_accuracy")
    assert better.judge({"sft/gsm8k_accuracy": 0.3, "base/gsm8k_accuracy": 0.2})["passed"]
    tie = better.judge({"sft/gsm8k_accuracy": 0.2, "base/gsm8k_accuracy": 0.2})
    assert not tie["passed"] and tie["threshold"] == 0.2 and tie["than"] == "base/gsm8k_accuracy"


def test_lower_is_better_for_perplexity_and_a_missing_value_fails() -> None:
    gate = gates.Gate("e", "sft/perplexity", better_than="base/perplexity")
    assert gate.judge({"sft/perplexity": 9.0, "base/perplexity": 12.0})["passed"]
    assert not gate.judge({"sft/perplexity": 13.0, "base/perplexity": 12.0})["passed"]
    missing = gates.Gate("e", "sft/x", min=0).judge({})
    assert not missing["passed"] and missing["value"] is None
    assert "missing" in missing["message"]
    assert not gates.Gate("e", "sft/x", min=0).judge({"sft/x": float("nan")})["passed"]


def test_gates_of_a_plan(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, RECIPE + "tracking:\n  backend: mlflow\n  register:\n"
                   "    name: m\n    stage: sft\n    alias: champion\n"
                   "    gate: {report: eval, metric: perplexity, better_than: base}\n")
    found = gates.gates_of(plan, plan.stage("eval"))
    assert [(g.metric, g.min, g.better_than, g.source) for g in found] == [
        ("sft/gsm8k_accuracy", 0.5, None, "stages.eval.gate"),
        ("sft/perplexity", None, "base/perplexity", "tracking.register.gate")]
    assert gates.gates_of(plan, plan.stage("sft")) == []
    record = gates.record(plan, plan.stage("eval"), {"sft/gsm8k_accuracy": 0.75,
                                                     "sft/perplexity": 20.0,
                                                     "base/perplexity": 10.0})
    assert record is not None and record["passed"] is False
    assert record["metric"] == "sft/perplexity" and record["source"] == "tracking.register.gate"
    assert [c["passed"] for c in record["checks"]] == [True, False]


def test_check_reads_the_manifest_and_records_a_changed_judgement(tmp_path: Path) -> None:
    plan = plan_of(tmp_path)
    stage = plan.stage("eval")
    folder = tmp_path / stage.dir
    assert gates.check(plan, stage, tmp_path) is None  # not complete: nothing to judge
    folder.mkdir(parents=True)
    manifest = {"status": "complete", "fingerprint": stage.fingerprint,
                "metrics": {"sft/gsm8k_accuracy": 0.25}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = gates.check(plan, stage, tmp_path)
    assert result is not None and not result["passed"]
    written = json.loads((folder / "manifest.json").read_text())
    assert written["gate"]["passed"] is False and written["gate"]["value"] == 0.25
    with pytest.raises(gates.GateFailed) as info:
        gates.refuse_if_gated(plan, plan.stage("after_eval"), tmp_path)
    assert "gate failed in stage eval" in info.value.message
    assert info.value.exit_code == gates.EXIT_GATE == 3

    lowered = plan_of(tmp_path, RECIPE, "stages.eval.gate.min=0.2")
    assert lowered.stage("eval").fingerprint == stage.fingerprint  # not fingerprinted
    assert gates.check(lowered, lowered.stage("eval"), tmp_path)["passed"]
    assert json.loads((folder / "manifest.json").read_text())["gate"]["passed"] is True
    gates.refuse_if_gated(lowered, lowered.stage("after_eval"), tmp_path)


@pytest.mark.parametrize(("gate", "message"), [
    ("{metric: dpo/gsm8k_accuracy, min: 0.5}", "stage eval does not evaluate 'dpo'"),
    ("{metric: sft/exact_match, min: 0.5}", "stage eval does not compute exact_match"),
    ("{metric: gsm8k_accuracy, min: 0.5}", "which model's gsm8k_accuracy?"),
    ("{metric: sft/gsm8k_accuracy, better_than: bsae}", "stage eval does not evaluate 'bsae'"),
    ("{metric: sft/gsm8k_accuracy, better_than: base/perplexity}",
     "compares gsm8k_accuracy with perplexity"),
])
def test_plan_time_errors(tmp_path: Path, gate: str, message: str) -> None:
    text = RECIPE.replace("gate: {metric: sft/gsm8k_accuracy, min: 0.5}", f"gate: {gate}")
    found = errors_of(tmp_path, text)
    assert len(found) == 1 and found[0].message.startswith(message)
    assert found[0].path[:3] == ("stages", "eval", "gate")


def test_a_gate_needs_a_threshold_and_only_eval_stages_have_one(tmp_path: Path) -> None:
    text = RECIPE.replace("gate: {metric: sft/gsm8k_accuracy, min: 0.5}",
                          "gate: {metric: sft/gsm8k_accuracy}")
    assert errors_of(tmp_path, text)
    text = RECIPE.replace("    train: {max_steps: 2}\n",
                          "    train: {max_steps: 2}\n    gate: {metric: loss, max: 1}\n")
    assert errors_of(tmp_path, text)
    one_model = RECIPE.replace("    models: [sft]\n    data: test\n    after: [eval]\n",
                               "    models: [sft]\n    data: test\n    after: [eval]\n"
                               "    gate: {metric: gsm8k_accuracy, min: 0.1}\n")
    plan = plan_of(tmp_path, one_model)
    assert gates.stage_gate(plan.stage("after_eval")).metric == "sft/gsm8k_accuracy"


def test_registration_needs_mlflow_and_a_metric_the_report_computes(tmp_path: Path) -> None:
    register = ("tracking:\n  register:\n    name: m\n    stage: sft\n"
                "    gate: {report: eval, metric: gsm8k_accuracy, min: 0.1}\n")
    found = errors_of(tmp_path, RECIPE + register)
    assert [e.message for e in found] == [
        "registering a model needs the MLflow model registry; tracking.backend is none"]
    with_mlflow = register.replace("tracking:\n", "tracking:\n  backend: mlflow\n")
    assert errors_of(tmp_path, RECIPE + with_mlflow) == []
    wrong = with_mlflow.replace("metric: gsm8k_accuracy", "metric: exact_match")
    assert [e.message for e in errors_of(tmp_path, RECIPE + wrong)] == [
        "stage eval does not compute exact_match"]
    other = with_mlflow.replace("report: eval,", "report: eval, model: dpo,")
    assert [e.path for e in errors_of(tmp_path, RECIPE + other)] == [
        ("tracking", "register", "gate", "model")]
    bad_alias = with_mlflow + "    alias: latest\n"
    assert errors_of(tmp_path, RECIPE + bad_alias)


def test_failure_message_names_what_did_not_run() -> None:
    result = gates.Gate("eval", "sft/x", min=0.5, source="stages.eval.gate").judge({"sft/x": 0})
    error = gates.failure("eval", result, ["deploy"], "planner_model")
    assert error.message == ("gate failed in stage eval: sft/x = 0, needs >= 0.5; "
                             "not run: deploy; planner_model not registered")
    assert "stages.eval.gate" in (error.hint or "")
