"""The run summary's comparison table: each eval stage's models side by side."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from llm_recipe.progress import comparison_tables
from llm_recipe.runtime.executor import StageOutcome


def render(table) -> str:
    console = Console(width=120, record=True)
    console.print(table)
    return console.export_text()


def test_an_eval_report_becomes_the_seed_table(tmp_path: Path) -> None:
    report = {"data": "gsm8k_test", "examples": 100, "metrics": ["gsm8k_accuracy", "perplexity"],
              "models": {"base": {"gsm8k_accuracy": 0.0, "correct": 0, "total": 100,
                                  "perplexity": 12.5},
                         "sft": {"gsm8k_accuracy": 0.5, "correct": 50, "total": 100,
                                 "perplexity": 3.25},
                         "dpo": {"gsm8k_accuracy": 0.53, "correct": 53, "total": 100,
                                 "perplexity": 3.5}},
              "table": [{"model": "base"}, {"model": "sft"}, {"model": "dpo"}]}
    (tmp_path / "report.json").write_text(json.dumps(report, sort_keys=True))
    outcomes = [StageOutcome("sft", "sft", "ran", "model"),
                StageOutcome("eval", "eval", "skipped", "report.json")]
    (table,) = comparison_tables(outcomes, tmp_path)
    text = render(table)
    assert "eval: gsm8k_test, 100 examples" in text
    lines = [line.split() for line in text.splitlines()][1:]
    assert lines[:3] == [["base", "0.0%", "(0/100)", "12.5"], ["sft", "50.0%", "(50/100)", "3.25"],
                         ["dpo", "53.0%", "(53/100)", "3.5"]]  # the stage's order


def test_no_table_without_a_readable_report(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text('{"models": 3}')
    outcomes = [StageOutcome("eval", "eval", "ran", "report.json"),
                StageOutcome("eval2", "eval", "would run", "missing.json")]
    assert comparison_tables(outcomes, tmp_path) == []
