"""preferences: DPO preference pairs from rollouts (the Abel GSM8K pipeline's phase 3). Pure Python.

Pairs are made within one question's trajectories:

- ``correctness``: a correct and an incorrect trajectory; the correct one is chosen.
- ``correctness_first`` (the Abel pipeline's strategy): those first, then *quality* pairs among
  the correct trajectories whose rewards differ by more than ``margin``; the higher
  reward is chosen.
- ``quality``: pairs among all trajectories whose rewards differ by more than
  ``margin``; the higher reward is chosen.

"More than margin" is strict, with 1e-9 of slack so that float rounding (1.3 - 1.2 is
0.10000000000000009) does not decide a pair that sits exactly on the margin.

Per question, candidate pairs are kept in this order until ``max_pairs_per_question``:
correctness pairs before quality pairs (``correctness_first``); within a type, pairs of
two trajectories sampled from the same prompt (the same variant) first, then the largest
reward gap, then the trajectories' order in the rollouts. A pair whose chosen and
rejected texts repeat a kept pair (or are the same text) is skipped. Output order is
question order, then that order, so the file is the same run to run.

Each output row is ``{prompt, chosen, rejected, pair_type}`` (the ``preference``
format) plus ``question_id``, ``question``, both rewards, both variants and
``same_prompt``. ``prompt`` is the prompt the chosen trajectory was sampled from
(rollouts record it), and ``chosen`` / ``rejected`` are completions only, so DPO trains
on what the policy was given and what it wrote. A rollouts file that records no prompt
gets the sft default prompt for its question.

When no quality pair can be made the log says why and which setting to change; when no
pair at all can be made the stage stops with a RecipeError that says the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.data import PROMPT_TEMPLATE, DataError
from llm_recipe.runtime.metrics import gsm8k_correct
from llm_recipe.runtime.workspace import atomic_write_json, atomic_write_text

SUMMARY_FILE = "summary.json"
CORRECTNESS = "correctness"
QUALITY = "quality"
SLACK = 1e-9
"""A quality pair's reward gap must exceed the margin by this much (float rounding)."""


@dataclass(frozen=True)
class PreferencesConfig:
    strategy: str
    margin: float
    max_pairs_per_question: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PreferencesConfig:
        return cls(strategy=str(config.get("strategy", "correctness_first")),
                   margin=float(config.get("margin", 0.1)),
                   max_pairs_per_question=int(config.get("max_pairs_per_question", 4)))

    @property
    def correctness_pairs(self) -> bool:
        return self.strategy in ("correctness_first", "correctness")

    @property
    def quality_pairs(self) -> bool:
        return self.strategy in ("correctness_first", "quality")


@dataclass(frozen=True)
class Trajectory:
    index: int
    """Position in the question's samples."""
    prompt: str
    text: str
    reward: float
    correct: bool
    variant: str | None = None


@dataclass(frozen=True)
class Pair:
    chosen: Trajectory
    rejected: Trajectory
    pair_type: str

    @property
    def gap(self) -> float:
        return self.chosen.reward - self.rejected.reward

    @property
    def same_prompt(self) -> bool:
        return self.chosen.prompt == self.rejected.prompt

    def order(self) -> tuple[bool, float, int, int]:
        return (not self.same_prompt, -self.gap, self.chosen.index, self.rejected.index)


@dataclass
class Counts:
    """What :func:`build_pairs` did, summed over questions (summary.json, metrics, hints)."""

    questions: int = 0
    questions_with_pairs: int = 0
    pairs: dict[str, int] = field(default_factory=lambda: {CORRECTNESS: 0, QUALITY: 0})
    duplicates_skipped: int = 0
    capped: int = 0
    """Candidate pairs left out by max_pairs_per_question."""
    cross_prompt_pairs: int = 0
    questions_mixed: int = 0
    """Questions with a correct and an incorrect trajectory."""
    questions_all_correct: int = 0
    questions_none_correct: int = 0
    questions_with_quality_pool: int = 0
    """Questions with two trajectories that quality pairs may compare."""
    largest_quality_gap: float | None = None
    quality_candidates: int = 0
    """Quality pairs over the margin, before the cap and duplicates."""

    def as_dict(self) -> dict[str, Any]:
        return {"questions": self.questions, "questions_with_pairs": self.questions_with_pairs,
                "pairs": sum(self.pairs.values()),
                "correctness_pairs": self.pairs[CORRECTNESS],
                "quality_pairs": self.pairs[QUALITY],
                "duplicates_skipped": self.duplicates_skipped, "capped": self.capped,
                "cross_prompt_pairs": self.cross_prompt_pairs,
                "questions_mixed": self.questions_mixed,
                "questions_all_correct": self.questions_all_correct,
                "questions_none_correct": self.questions_none_correct,
                "largest_quality_gap": self.largest_quality_gap}


def trajectories_of(row: dict[str, Any], number: int, *, needs_reward: bool) -> list[Trajectory]:
    """A rollouts row's samples; ``number`` (1-based) names the row in errors."""
    samples = row["samples"]
    if not isinstance(samples, list):
        raise DataError(f"rollouts row {number}: 'samples' is not a list of trajectories")
    default_prompt = PROMPT_TEMPLATE.replace("{question}", str(row["question"]))
    out = []
    for index, sample in enumerate(samples):
        where = f"rollouts row {number}, sample {index}"
        if not isinstance(sample, dict):
            raise DataError(f"{where} is not an object")
        text = next((sample[k] for k in ("full_text", "completion", "text")
                     if isinstance(sample.get(k), str)), None)
        if text is None:
            raise DataError(f"{where} has no text", expected="full_text (the completion)")
        reward = sample.get("reward")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)):
            if needs_reward:
                raise DataError(f"{where} has no numeric reward",
                                hint="quality pairs compare rewards; use strategy: correctness "
                                "for rollouts without them")
            reward = 0.0
        correct = sample.get("correct")
        if not isinstance(correct, bool):
            correct = gsm8k_correct(text, str(row["reference"]))[2]
        prompt = sample.get("prompt")
        out.append(Trajectory(index, prompt if isinstance(prompt, str) else default_prompt,
                              text, float(reward), correct,
                              sample.get("variant") if isinstance(sample.get("variant"), str)
                              else None))
    return out


def candidates(trajectories: Sequence[Trajectory], config: PreferencesConfig
               ) -> tuple[list[Pair], list[Pair]]:
    """(correctness pairs, quality pairs) the strategy allows, each in keep-first order."""
    right = [t for t in trajectories if t.correct]
    wrong = [t for t in trajectories if not t.correct]
    by_correctness = []
    if config.correctness_pairs:
        by_correctness = sorted((Pair(c, w, CORRECTNESS) for c in right for w in wrong),
                                key=Pair.order)
    by_quality = []
    if config.quality_pairs:
        pool = right if config.strategy == "correctness_first" else list(trajectories)
        for i, a in enumerate(pool):
            for b in pool[i + 1:]:
                high, low = (a, b) if a.reward >= b.reward else (b, a)
                if high.reward - low.reward > config.margin + SLACK:
                    by_quality.append(Pair(high, low, QUALITY))
        by_quality.sort(key=Pair.order)
    return by_correctness, by_quality


def select(trajectories: Sequence[Trajectory], config: PreferencesConfig,
           counts: Counts | None = None) -> list[Pair]:
    """The pairs kept for one question (see the module doc for the order)."""
    counts = counts if counts is not None else Counts()
    by_correctness, by_quality = candidates(trajectories, config)
    _diagnose(trajectories, config, counts, len(by_quality))
    kept: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for pair in [*by_correctness, *by_quality]:
        key = (pair.chosen.text, pair.rejected.text)
        if key in seen or pair.chosen.text == pair.rejected.text:
            counts.duplicates_skipped += 1
            continue
        if len(kept) == config.max_pairs_per_question:
            counts.capped += 1
            continue
        seen.add(key)
        kept.append(pair)
    counts.questions += 1
    counts.questions_with_pairs += bool(kept)
    for pair in kept:
        counts.pairs[pair.pair_type] += 1
        counts.cross_prompt_pairs += not pair.same_prompt
    return kept


def _diagnose(trajectories: Sequence[Trajectory], config: PreferencesConfig, counts: Counts,
              quality_candidates: int) -> None:
    verdicts = {t.correct for t in trajectories}
    counts.questions_mixed += verdicts == {True, False}
    counts.questions_all_correct += verdicts == {True}
    counts.questions_none_correct += verdicts == {False}
    pool = ([t for t in trajectories if t.correct] if config.strategy != "quality"
            else list(trajectories))
    counts.quality_candidates += quality_candidates
    if len(pool) >= 2:
        counts.questions_with_quality_pool += 1
        gap = max(t.reward for t in pool) - min(t.reward for t in pool)
        if counts.largest_quality_gap is None or gap > counts.largest_quality_gap:
            counts.largest_quality_gap = gap


def build_pairs(rows: Sequence[dict[str, Any]], config: PreferencesConfig
                ) -> tuple[list[dict[str, Any]], Counts]:
    """(preferences.jsonl rows, counts) for every question of the rollouts."""
    counts = Counts()
    out = []
    for number, row in enumerate(rows, start=1):
        trajectories = trajectories_of(row, number, needs_reward=config.quality_pairs)
        for pair in select(trajectories, config, counts):
            out.append({
                "prompt": pair.chosen.prompt, "chosen": pair.chosen.text,
                "rejected": pair.rejected.text, "pair_type": pair.pair_type,
                "question_id": row.get("question_id", number - 1),
                "question": row["question"],
                "chosen_reward": pair.chosen.reward, "rejected_reward": pair.rejected.reward,
                "chosen_variant": pair.chosen.variant, "rejected_variant": pair.rejected.variant,
                "same_prompt": pair.same_prompt})
    return out, counts


# --- why there are no pairs, in the recipe's terms ----------------------------------


def no_quality_reason(counts: Counts, config: PreferencesConfig, stage: str,
                      rollout: str | None) -> tuple[str, str]:
    """(why no quality pair was made, which setting to change)."""
    pool = "correct trajectories" if config.strategy == "correctness_first" else "trajectories"
    more = (f"raise stages.{rollout}.samples_per_variant or add variants" if rollout
            else "give the rollouts more trajectories per question")
    if counts.questions_with_quality_pool == 0:
        return (f"no question has two {pool} to compare",
                more + (" (or improve the policy)" if config.strategy != "quality" else ""))
    if counts.quality_candidates == 0:
        gap = counts.largest_quality_gap or 0.0
        separate = (f"weight a reward that separates them (stages.{rollout}.rewards.quality)"
                    if rollout else "score the rollouts with a reward that separates them "
                    "(a rollout stage's rewards.quality weight)")
        return (f"the {pool} of every question have rewards within margin {config.margin:g} "
                f"of each other (the largest gap is {gap:.4g})",
                f"lower stages.{stage}.margin below {gap:.4g}, or {separate}")
    if counts.capped:
        return (f"every question's max_pairs_per_question ({config.max_pairs_per_question}) "
                "was filled by correctness pairs first",
                f"raise stages.{stage}.max_pairs_per_question")
    return ("every quality pair repeats the texts of a pair already kept",
            "sample more varied trajectories (a higher generation.temperature)")


def no_pairs_error(counts: Counts, config: PreferencesConfig, stage: str,
                   rollout: str | None) -> RecipeError:
    where = (f"stage {stage}: no preference pairs from {counts.questions} questions "
             f"(strategy {config.strategy}, margin {config.margin:g})")
    reasons, hints = [], []
    if config.correctness_pairs:
        reasons.append(f"no question has both a correct and an incorrect trajectory "
                       f"({counts.questions_all_correct} all correct, "
                       f"{counts.questions_none_correct} none correct)")
        if config.strategy == "correctness":
            hints.append(f"use stages.{stage}.strategy: quality (pairs by reward) or "
                         "correctness_first")
        if rollout:
            hints.append(f"sample more varied trajectories (stages.{rollout}.generation."
                         f"temperature, stages.{rollout}.samples_per_variant)")
    if config.quality_pairs:
        why, fix = no_quality_reason(counts, config, stage, rollout)
        reasons.append(why)
        hints.append(fix)
    if config.strategy == "correctness_first" and counts.questions_none_correct == counts.questions:
        hints.append(f"a policy that is never correct gets pairs only by reward: "
                     f"stages.{stage}.strategy: quality")
    return RecipeError(f"{where}: {'; and '.join(reasons)}",
                       expected="at least one pair", hint="; or ".join(hints))


def run(ctx: StageContext) -> StageResult:
    """Write preferences.jsonl and summary.json from the rollouts."""
    config = PreferencesConfig.from_config(ctx.config)
    name = ctx.stage.name
    item = ctx.input("rollouts")
    rollout = item.producer
    rows = ctx.rows("rollouts")
    if not rows:
        raise RecipeError(f"stage {name}: the rollouts '{item.ref}' have no questions",
                          hint=f"run stages.{rollout} again" if rollout
                          else "check the rollouts file")
    pairs, counts = build_pairs(rows, config)
    if not pairs:
        raise no_pairs_error(counts, config, name, rollout)
    summary = {**counts.as_dict(), "strategy": config.strategy, "margin": config.margin,
               "max_pairs_per_question": config.max_pairs_per_question}
    if config.strategy == "correctness_first" and counts.pairs[QUALITY] == 0:
        why, fix = no_quality_reason(counts, config, name, rollout)
        summary["no_quality_pairs"] = why
        ctx.log.line(f"[preferences] warning: no quality pairs: {why}; to get some, {fix}")
    atomic_write_text(ctx.output_path,
                      "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    atomic_write_json(ctx.dir / SUMMARY_FILE, summary)
    ctx.log.metrics(len(rows), {k: v for k, v in summary.items()
                                if k not in ("strategy", "no_quality_pairs")},
                    prefix="preferences")
    metrics = {k: summary[k] for k in ("pairs", "correctness_pairs", "quality_pairs",
                                       "questions", "questions_with_pairs",
                                       "duplicates_skipped", "capped")}
    if "no_quality_pairs" in summary:
        metrics["no_quality_pairs"] = summary["no_quality_pairs"]
    return StageResult(metrics=metrics, key_metric="pairs")
