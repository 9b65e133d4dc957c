"""How a matrix shows: ``recipe plan``'s variant x stage table and the run's variants table."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from llm_recipe.compiler import compile_recipe
from llm_recipe.matrix_view import matrix_summary, matrix_table
from llm_recipe.progress import variant_table
from llm_recipe.report import print_plan
from llm_recipe.runtime.records import StageOutcome

RECIPE = """\
recipe: 1
name: m
models:
  base: {hub: sshleifer/tiny-gpt2, revision: main}
datasets:
  corpus: {builtin: corpus, format: text, n: 50}
  train: {builtin: arithmetic, split: train, n: 40, format: gsm8k}
  test: {builtin: arithmetic, split: test, n: 8, format: gsm8k}
stages:
  pretrain: {kind: pretrain, model: base, data: corpus, train: {max_steps: 4}}
  sft: {kind: sft, model: pretrain, data: train, train: {max_steps: 4, lr: 1.0e-4}}
  eval: {kind: eval, models: [pretrain, sft], data: test, limit: 8}
matrix:
"""


def text(renderable: object) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def plan(tmp_path: Path, block: str):
    (tmp_path / "r.yaml").write_text(RECIPE + block)
    return compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)


def test_plan_shows_each_variants_copies_and_what_is_shared(tmp_path: Path) -> None:
    p = plan(tmp_path, "  sft.train.lr: [1.0e-5, 3.0e-5]\n  eval.limit: [4, 8]\n")
    assert matrix_summary(p) == (
        "[bold]matrix[/]  4 variants of lr (stages.sft.train.lr): 1e-5, 3e-5; "
        "limit (stages.eval.limit): 4, 8 · shared: pretrain · varied: sft, eval (6 copies)")
    assert text(matrix_table(p)).splitlines() == [
        "variant          pretrain  sft          eval",
        "lr=1e-5,limit=4  shared    sft@lr=1e-5  own",
        "lr=1e-5,limit=8  shared    sft@lr=1e-5  own",
        "lr=3e-5,limit=4  shared    sft@lr=3e-5  own",
        "lr=3e-5,limit=8  shared    sft@lr=3e-5  own"]


def test_named_variants_show_their_settings(tmp_path: Path) -> None:
    p = plan(tmp_path, "  include:\n    - variant: default\n"
                       "    - {variant: fast, sft.train.lr: 1.0e-3, eval.limit: 4}\n")
    assert text(matrix_table(p)).splitlines() == [
        "variant  pretrain  sft  eval  settings",
        "default  shared    own  own   (the recipe as written)",
        "fast     shared    own  own   sft.train.lr=0.001, eval.limit=4"]
    console = Console(record=True, width=200)
    print_plan(p, console)
    printed = console.export_text()
    assert "matrix  2 variants · shared: pretrain · varied: sft, eval (4 copies)" in printed
    assert "sft@fast  sft → model" in printed  # the lineage tree has every copy


def test_a_plan_without_a_matrix_shows_none(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(RECIPE.replace("matrix:\n", ""))
    p = compile_recipe(tmp_path / "r.yaml", cwd=tmp_path)
    assert matrix_table(p) is None and matrix_summary(p) is None and "matrix" not in p.extra
    assert variant_table(p, [], tmp_path) is None


def test_run_table_compares_the_variants_metrics(tmp_path: Path) -> None:
    p = plan(tmp_path, "  sft.train.lr: [1.0e-5, 3.0e-5]\n")
    outcomes = [StageOutcome("pretrain", "pretrain", "skipped", "x", metrics={"loss": 5.0})]
    for label, loss, accuracy in (("1e-5", 4.25, 0.5), ("3e-5", 3.5, 0.75)):
        report = tmp_path / f"eval@lr={label}" / "report.json"
        report.parent.mkdir()
        report.write_text(json.dumps({
            "metrics": ["gsm8k_accuracy"], "models": {
                "pretrain": {"gsm8k_accuracy": 0.0, "correct": 0, "total": 8},
                f"sft@lr={label}": {"gsm8k_accuracy": accuracy, "correct": int(8 * accuracy),
                                    "total": 8}}}))
        outcomes += [StageOutcome(f"sft@lr={label}", "sft", "ran", "x",
                                  metrics={"loss": loss, "eval_loss": loss + 1}),
                     StageOutcome(f"eval@lr={label}", "eval", "ran",
                                  f"eval@lr={label}/report.json")]
    assert text(variant_table(p, outcomes, tmp_path)).splitlines() == [
        "matrix: 2 variants",
        "variant  sft loss  sft eval_loss  eval: pretrain gsm8k_accuracy  "
        "eval: sft gsm8k_accuracy",
        "lr=1e-5      4.25           5.25                     0.0% (0/8)"
        "               50.0% (4/8)",
        "lr=3e-5       3.5            4.5                     0.0% (0/8)"
        "               75.0% (6/8)"]
