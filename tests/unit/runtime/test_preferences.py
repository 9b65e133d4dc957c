"""The preferences stage on hand-made rollouts (pure Python, no torch).

Every strategy, the margin's edge, the per-question cap and its order, duplicates, the
no-quality warning and the no-pairs error, then one run of the stage itself on a
compiled plan whose rollouts are a local file, and a check that it never imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import PROMPT_TEMPLATE, check_rows, read_jsonl
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import preferences
from llm_recipe.runtime.stages.preferences import PreferencesConfig, build_pairs

REFERENCE = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
             "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


def sample(text: str, reward: float, correct: bool, variant: str = "direct",
           prompt: str = "P-direct") -> dict:
    return {"variant": variant, "sample": 0, "prompt": prompt, "full_text": text,
            "answer": None, "num_tokens": len(text.split()), "correct": correct,
            "reward": reward, "components": {}}


def row(*samples: dict, qid: int = 0) -> dict:
    return {"question_id": qid, "question": f"question {qid}", "reference": REFERENCE,
            "reference_answer": "72", "samples": list(samples)}


def config(strategy: str = "correctness_first", margin: float = 0.1, cap: int = 4
           ) -> PreferencesConfig:
    return PreferencesConfig(strategy=strategy, margin=margin, max_pairs_per_question=cap)


def triples(pairs: list[dict]) -> list[tuple[str, str, str]]:
    return [(p["chosen"], p["rejected"], p["pair_type"]) for p in pairs]


# Two correct (A 1.5, B 1.2) and two incorrect (X 0.3, Y 0.1) trajectories.
MIXED = row(sample("A", 1.5, True), sample("B", 1.2, True), sample("X", 0.3, False),
            sample("Y", 0.1, False))


def test_correctness_pairs_largest_gap_first() -> None:
    pairs, counts = build_pairs([MIXED], config("correctness"))
    assert triples(pairs) == [("A", "Y", "correctness"), ("A", "X", "correctness"),
                              ("B", "Y", "correctness"), ("B", "X", "correctness")]
    assert counts.pairs == {"correctness": 4, "quality": 0}


def test_correctness_first_adds_quality_pairs_among_correct_ones() -> None:
    pairs, counts = build_pairs([MIXED], config("correctness_first", cap=5))
    assert triples(pairs)[-1] == ("A", "B", "quality")  # gap 0.3 > 0.1; X vs Y is not asked
    assert counts.pairs == {"correctness": 4, "quality": 1}


def test_cap_keeps_correctness_pairs_first() -> None:
    pairs, counts = build_pairs([MIXED], config("correctness_first", cap=2))
    assert triples(pairs) == [("A", "Y", "correctness"), ("A", "X", "correctness")]
    assert counts.capped == 3  # two correctness pairs and the quality pair


def test_quality_strategy_pairs_every_trajectory_by_reward() -> None:
    pairs, _ = build_pairs([MIXED], config("quality", margin=0.25, cap=10))
    # Gaps: A-Y 1.4, A-X 1.2, B-Y 1.1, B-X 0.9, A-B 0.3; X-Y 0.2 is within the margin.
    assert triples(pairs) == [("A", "Y", "quality"), ("A", "X", "quality"),
                              ("B", "Y", "quality"), ("B", "X", "quality"),
                              ("A", "B", "quality")]


def test_margin_is_strict_and_rounding_does_not_decide() -> None:
    on_edge = row(sample("A", 1.3, True), sample("B", 1.2, True))  # 1.3-1.2 = 0.1000...09
    pairs, _ = build_pairs([on_edge], config("quality", margin=0.1))
    assert pairs == []
    past = row(sample("A", 1.3001, True), sample("B", 1.2, True))
    assert triples(build_pairs([past], config("quality", margin=0.1))[0]) == [
        ("A", "B", "quality")]
    equal = row(sample("A", 1.0, True), sample("B", 1.0, True))
    assert build_pairs([equal], config("quality", margin=0.0))[0] == []
    assert len(build_pairs([row(sample("A", 1.0, True), sample("B", 0.99, True))],
                           config("quality", margin=0.0))[0]) == 1


def test_duplicate_texts_make_one_pair() -> None:
    twice = row(sample("A", 1.0, True), sample("A", 1.0, True, "reflective", "P-reflective"),
                sample("X", 0.0, False), sample("X", 0.0, False))
    pairs, counts = build_pairs([twice], config("correctness"))
    assert triples(pairs) == [("A", "X", "correctness")]
    assert counts.duplicates_skipped == 3


def test_prompt_is_the_chosen_trajectorys_and_same_prompt_pairs_come_first() -> None:
    rows = [row(sample(" right, direct", 1.0, True, "direct", "P-direct"),
                sample(" wrong, reflective", -0.5, False, "reflective", "P-reflective"),
                sample(" wrong, direct", 0.0, False, "direct", "P-direct"))]
    pairs, counts = build_pairs(rows, config("correctness"))
    # The reflective pair has the larger gap, but both of the first were given P-direct.
    assert [(p["prompt"], p["chosen"], p["rejected"], p["same_prompt"]) for p in pairs] == [
        ("P-direct", " right, direct", " wrong, direct", True),
        ("P-direct", " right, direct", " wrong, reflective", False)]
    assert pairs[0]["chosen_reward"] == 1.0 and pairs[0]["rejected_reward"] == 0.0
    assert pairs[1]["rejected_variant"] == "reflective"
    assert counts.cross_prompt_pairs == 1


def test_order_is_by_question_and_deterministic() -> None:
    rows = [row(sample("A", 1.0, True), sample("X", 0.0, False), qid=7),
            row(sample("C", 1.0, True), sample("Z", 0.0, False), qid=3)]
    first, _ = build_pairs(rows, config())
    again, _ = build_pairs(json.loads(json.dumps(rows)), config())
    assert [p["question_id"] for p in first] == [7, 3] and first == again


def test_missing_fields_fall_back_and_are_named() -> None:
    foreign = {"question": "Q?", "reference": "#### 72",
               "samples": [{"completion": "so #### 72", "reward": 1.0},
                           {"completion": "so #### 70", "reward": 0.0}]}
    pairs, _ = build_pairs([foreign], config("correctness"))
    assert pairs[0]["prompt"] == PROMPT_TEMPLATE.format(question="Q?")
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("so #### 72", "so #### 70")
    broken = {"question": "Q?", "reference": "#### 72", "samples": [{"reward": 1.0}]}
    with pytest.raises(RecipeError, match="rollouts row 1, sample 0 has no text"):
        build_pairs([broken], config())


# --- the stage ----------------------------------------------------------------------


def stage_ctx(root: Path, rows: list[dict], **settings) -> StageContext:
    (root / "rolls.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = "".join(f"\n    {k}: {v}" for k, v in settings.items())
    (root / "recipe.yaml").write_text(textwrap.dedent("""\
        recipe: 1
        name: prefs
        datasets:
          rolls: {path: rolls.jsonl, format: rollouts}
        stages:
          pairs:
            kind: preferences
            rollouts: rolls"""
    ) + options + "\n")
    plan = compile_recipe(root / "recipe.yaml", cwd=root)
    stage = plan.stage("pairs")
    return StageContext(plan, stage, root, StageLog(root / stage.dir, stage.name))


def test_stage_writes_preference_rows_and_a_summary(tmp_path: Path) -> None:
    ctx = stage_ctx(tmp_path, [MIXED, row(sample("C", 1.0, True), sample("Z", 0.0, False),
                                          qid=1)], max_pairs_per_question=5)
    result = preferences.run(ctx)
    written = read_jsonl(ctx.output_path)
    check_rows(written, "preference", "preferences.jsonl")  # what dpo's ctx.rows checks
    assert ctx.output_path.name == "preferences.jsonl"
    assert [r["pair_type"] for r in written] == ["correctness"] * 4 + ["quality", "correctness"]
    summary = json.loads((ctx.dir / "summary.json").read_text())
    assert (summary["pairs"], summary["correctness_pairs"], summary["quality_pairs"]) == (6, 5, 1)
    assert result.key_metric == "pairs" and result.metrics["pairs"] == 6
    assert result.metrics["quality_pairs"] == 1 and "no_quality_pairs" not in result.metrics
    assert read_metrics(ctx.dir)[-1]["correctness_pairs"] == 5


def test_no_quality_pairs_is_a_warning_that_names_the_settings(tmp_path: Path) -> None:
    same = row(sample("A", 1.0, True), sample("B", 1.05, True), sample("X", 0.0, False))
    ctx = stage_ctx(tmp_path, [same], margin=0.1)
    result = preferences.run(ctx)
    log = (ctx.dir / "train.log").read_text()
    assert "warning: no quality pairs" in log
    assert "within margin 0.1" in log and "largest gap is 0.05" in log
    assert "stages.pairs.margin" in log and "rewards.quality" in log
    assert result.metrics["quality_pairs"] == 0 and result.metrics["correctness_pairs"] == 2
    assert "within margin" in result.metrics["no_quality_pairs"]


def test_no_quality_pairs_when_the_cap_is_full(tmp_path: Path) -> None:
    ctx = stage_ctx(tmp_path, [MIXED], max_pairs_per_question=4)
    preferences.run(ctx)
    assert "raise stages.pairs.max_pairs_per_question" in (ctx.dir / "train.log").read_text()


def test_no_pairs_at_all_is_a_recipe_error(tmp_path: Path) -> None:
    all_right = row(sample("A", 1.0, True), sample("B", 1.0, True))
    ctx = stage_ctx(tmp_path, [all_right, row(sample("C", 1.0, True), sample("D", 1.02, True),
                                             qid=1)], strategy="correctness_first")
    with pytest.raises(RecipeError) as caught:
        preferences.run(ctx)
    text = str(caught.value)
    assert "stage pairs: no preference pairs from 2 questions" in text
    assert "strategy correctness_first, margin 0.1" in text
    assert "2 all correct" in text and "within margin 0.1" in text
    assert "stages.pairs.margin" in caught.value.hint
    assert not ctx.output_path.exists()


def test_correctness_strategy_without_mixed_questions_says_what_to_change(tmp_path) -> None:
    ctx = stage_ctx(tmp_path, [row(sample("A", 0.0, False), sample("B", 0.5, False))],
                    strategy="correctness")
    with pytest.raises(RecipeError, match=r"strategy correctness, margin 0\.1") as caught:
        preferences.run(ctx)
    assert "0 all correct, 1 none correct" in str(caught.value)
    assert "stages.pairs.strategy: quality" in caught.value.hint


def test_the_stage_never_imports_torch(tmp_path: Path) -> None:
    stage_ctx(tmp_path, [MIXED])
    code = textwrap.dedent("""\
        import sys
        from pathlib import Path
        from llm_recipe.compiler import compile_recipe
        from llm_recipe.runtime.context import StageContext
        from llm_recipe.runtime.log import StageLog
        from llm_recipe.runtime.stages import preferences
        root = Path.cwd()
        plan = compile_recipe(root / "recipe.yaml", cwd=root)
        stage = plan.stage("pairs")
        preferences.run(StageContext(plan, stage, root, StageLog(root / stage.dir, "pairs")))
        assert "torch" not in sys.modules, "torch imported"
        """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_quality_strategy_with_equal_rewards_says_to_lower_the_margin(tmp_path: Path) -> None:
    flat = row(sample("A", 0.5, False), sample("B", 0.5, True), sample("C", 0.55, False))
    ctx = stage_ctx(tmp_path, [flat], strategy="quality", margin=0.1)
    with pytest.raises(RecipeError) as caught:
        preferences.run(ctx)
    assert "strategy quality, margin 0.1" in str(caught.value)
    assert "the trajectories of every question have rewards within margin 0.1" in str(
        caught.value)
    assert "lower stages.pairs.margin below 0.05" in caught.value.hint
