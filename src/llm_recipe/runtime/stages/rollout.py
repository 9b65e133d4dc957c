"""rollout: sample trajectories from a policy with prompt variants and score each one.

Seed 002's phase 2. For each selected question, every variant's prompt is sampled
``samples_per_variant`` times; each trajectory is scored with the reward registry
(:mod:`llm_recipe.runtime.rl.rewards`) and written to ``rollouts.jsonl``, one row per
question, in the ``rollouts`` format::

    {"question_id": 17, "question": "...", "reference": "... #### 72",
     "reference_answer": "72",
     "samples": [{"variant": "direct", "sample": 0, "prompt": "...",
                  "full_text": " He sold 48/2 = 24 ... #### 72", "answer": "72",
                  "num_tokens": 41, "correct": true, "reward": 1.49,
                  "components": {"correctness": 1.0, "quality": 1.0, ...}}, ...]}

``prompt`` is exactly what the policy was given and ``full_text`` exactly what it
generated (the completion only), so the preferences stage can hand DPO the prompt the
trajectories were sampled from.

Questions: ``n_questions`` is a seeded sample (the recipe seed) of the prompt rows,
kept in dataset order (``question_id`` is the row's index); all rows without it.

Variants: ``direct`` is the prompt the policy was trained with: the ``prompt_template``
of the sft stage in the policy's lineage, else the one sft uses by default for gsm8k
rows (``Question: {question}\\nAnswer:``), filled in exactly as sft fills it. The
built-in ``reflective`` and ``deliberative`` variants put one instruction before that
same prompt (see :data:`llm_recipe.runtime.rl.prompts.INSTRUCTIONS`), so every variant
still ends where the policy learned to start answering. A custom ``{name, template}`` is
used as written (``{question}`` replaced, other braces kept). Questions, variants and
prompts are built in :mod:`llm_recipe.runtime.rl.prompts`.

Generation: ``generation.batch_size`` questions per batch, all their variants x
samples generated together (:mod:`llm_recipe.runtime.rl.generation`: transformers
``generate``, left-padded with the KV cache, or vLLM), sampled with a seed derived from
(stage seed, batch index) alone, so a batch generated again is the same batch.

Resume: each finished batch ``k`` (1-based) is committed as
``checkpoints/checkpoint-<k>/records.jsonl`` (its questions' rows) with ``files.json``,
then ``checkpoints/latest`` names it. A resumed run reads checkpoint-1..k, generates
again any that is damaged or missing, continues with batch k+1, and writes
``rollouts.jsonl`` with every question exactly once, in question order
(:mod:`llm_recipe.runtime.rl.batches`).

Summary: accuracy, mean reward and mean length per variant and overall, in the stage's
metrics and in ``summary.json`` beside the output.

This module is the stage: its config, :func:`run`, scoring, the summary and the log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.context import StageContext, StageResult
from llm_recipe.runtime.metrics import extract_answer, format_number, gsm8k_correct
from llm_recipe.runtime.rl.batches import (
    batches_of,
    commit_batch,
    jsonl,
    restore_batches,
    rows_in_order,
)
from llm_recipe.runtime.rl.generation import Completion, Sampling, batch_seed, choose_backend
from llm_recipe.runtime.rl.prompts import (
    Question,
    Variant,
    build_variants,
    direct_template,
    questions_of,
    render,
    select_questions,
)
from llm_recipe.runtime.rl.rewards import WeightedRewards
from llm_recipe.runtime.workspace import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from llm_recipe.runtime.rl.generation import Generator

SUMMARY_FILE = "summary.json"
REWARD_FUNCTIONS = {"correctness": "gsm8k_correctness", "quality": "quality",
                    "length_penalty": "length_penalty", "format": "format"}
"""Recipe reward components -> reward registry functions (in this order in records)."""


@dataclass(frozen=True)
class RolloutConfig:
    """A rollout stage's settings, schema defaults filled (generation block included)."""

    n_questions: int | None
    variants: tuple[Any, ...]
    samples_per_variant: int
    sampling: Sampling
    batch_size: int
    backend: str
    rewards: tuple[tuple[str, float], ...]
    """(component, weight) in :data:`REWARD_FUNCTIONS` order."""
    seed: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RolloutConfig:
        from llm_recipe.compiler.schema import fill_defaults, recipe_schema

        gen = fill_defaults(dict(config.get("generation") or {}),
                            recipe_schema()["$defs"]["generation"])
        weights = config.get("rewards") or {"correctness": 1.0}
        return cls(
            n_questions=config.get("n_questions"),
            variants=tuple(config.get("variants") or ("direct",)),
            samples_per_variant=int(config.get("samples_per_variant", 4)),
            sampling=Sampling(max_new_tokens=int(gen["max_new_tokens"]),
                              temperature=float(gen["temperature"]), top_p=float(gen["top_p"])),
            batch_size=int(gen["batch_size"]), backend=str(gen["backend"]),
            rewards=tuple((name, float(weights[name])) for name in REWARD_FUNCTIONS
                          if name in weights),
            seed=int(config.get("seed", 0)))


# --- scoring ------------------------------------------------------------------------


def reward_model(config: RolloutConfig, base_dir: Path) -> WeightedRewards:
    return WeightedRewards([(REWARD_FUNCTIONS[n], w) for n, w in config.rewards], base_dir)


def score_batch(questions: Sequence[Question], variants: Sequence[Variant],
                prompts: Sequence[str], completions: Sequence[Sequence[Completion]],
                rewards: WeightedRewards) -> list[dict[str, Any]]:
    """One rollouts row per question from the batch's completions.

    ``prompts`` and ``completions`` are question-major, then variant (what
    :func:`generate_batch` sends); each inner list holds the samples of one prompt.
    """
    flat: list[tuple[int, Variant, int, str, Completion]] = []
    for p, (prompt, samples) in enumerate(zip(prompts, completions, strict=True)):
        q, v = divmod(p, len(variants))
        flat.extend((q, variants[v], s, prompt, c) for s, c in enumerate(samples))
    texts = [c.text for *_, c in flat]
    answers = [questions[q].reference for q, *_ in flat]
    parts = rewards.components([prompt for *_, prompt, _ in flat], texts, answer=answers)
    totals = rewards.total(parts)
    component_of = {fn: name for name, fn in REWARD_FUNCTIONS.items()}
    rows = [{"question_id": q.id, "question": q.text, "reference": q.reference,
             "reference_answer": format_number(extract_answer(q.reference)), "samples": []}
            for q in questions]
    for i, (q, variant, sample, prompt, completion) in enumerate(flat):
        answer, _, correct = gsm8k_correct(completion.text, questions[q].reference)
        rows[q]["samples"].append({
            "variant": variant.name, "sample": sample, "prompt": prompt,
            "full_text": completion.text, "answer": answer,
            "num_tokens": completion.num_tokens, "correct": correct, "reward": totals[i],
            "components": {component_of.get(fn, fn): parts[fn][i] for fn in rewards.names}})
    return rows


def generate_batch(generator: Generator, questions: Sequence[Question],
                   variants: Sequence[Variant], samples: int, seed: int,
                   rewards: WeightedRewards) -> tuple[list[dict[str, Any]], float]:
    """(rows, generation seconds) of one question batch, every variant and sample at once."""
    prompts = [render(v, q, generator.tokenizer) for q in questions for v in variants]
    started = time.monotonic()
    completions = generator.generate(prompts, samples, seed)
    seconds = time.monotonic() - started
    return score_batch(questions, variants, prompts, completions, rewards), seconds



# --- summary ------------------------------------------------------------------------


def summarize(rows: Sequence[dict[str, Any]], variants: Sequence[Variant]) -> dict[str, Any]:
    """Accuracy, mean reward and mean length per variant and overall, and how many
    questions can give correctness pairs (some trajectories right, some wrong)."""
    samples = [s for row in rows for s in row["samples"]]

    def stats(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        count = len(group)
        correct = sum(bool(s["correct"]) for s in group)
        return {"trajectories": count, "correct": correct,
                "accuracy": correct / count if count else 0.0,
                "mean_reward": sum(s["reward"] for s in group) / count if count else 0.0,
                "mean_tokens": sum(s["num_tokens"] for s in group) / count if count else 0.0}

    verdicts = [{bool(s["correct"]) for s in row["samples"]} for row in rows]
    return {
        "questions": len(rows), **stats(samples),
        "questions_all_correct": sum(v == {True} for v in verdicts),
        "questions_none_correct": sum(v == {False} for v in verdicts),
        "questions_mixed": sum(v == {True, False} for v in verdicts),
        "variants": {v.name: {**stats([s for s in samples if s["variant"] == v.name]),
                              "template": v.template} for v in variants},
    }


def result_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    metrics = {key: summary[key] for key in (
        "accuracy", "mean_reward", "mean_tokens", "questions", "trajectories",
        "questions_mixed")}
    for name, values in summary["variants"].items():
        for key in ("accuracy", "mean_reward", "mean_tokens"):
            metrics[f"{name}/{key}"] = values[key]
    return metrics


# --- the stage ----------------------------------------------------------------------


OpenGenerator = Callable[[StageContext, str, RolloutConfig], Any]


def run(ctx: StageContext) -> StageResult:
    """Sample, score and write rollouts.jsonl and summary.json; resumable by batch."""
    return collect(ctx, open_generator)


def collect(ctx: StageContext, opener: OpenGenerator) -> StageResult:
    """The stage with the generator opener passed in (tests give a fake one)."""
    config = RolloutConfig.from_config(ctx.config)
    name = ctx.stage.name
    every, questions, variants, origin = sampled_questions(ctx, config)
    per_question = len(variants) * config.samples_per_variant
    batches = batches_of(questions, config.batch_size)
    backend, why = choose_backend(config.backend, int(ctx.compute.get("gpus_per_node") or 0),
                                  stage=name)
    rewards = reward_model(config, ctx.root)
    _log_setup(ctx, config, questions, len(every), variants, origin, backend, why, batches)

    done, notes, latest = restore_batches(ctx.checkpoints, ctx.resume_from, batches,
                                          per_question)
    for note in notes:
        ctx.log.line(note)
    if done:
        ctx.log.line(f"[rollout] {len(done)} of {len(batches)} batches restored from "
                     "checkpoints")
    ctx.log.start(len(batches), f"rollout {len(questions)} questions x {len(variants)} "
                  f"variants x {config.samples_per_variant} samples ({backend})")
    ctx.log.update(len(done))
    with contextlib.ExitStack() as stack:
        generator = None
        for index, batch in enumerate(batches):
            if index in done:
                continue
            if generator is None:
                generator = stack.enter_context(opener(ctx, backend, config))
            rows, seconds = _generate(ctx, generator, batch, variants, config, index, rewards,
                                      per_question)
            done[index] = rows
            k = index + 1
            # The row first: a kill before the commit leaves it past the latest
            # checkpoint, where a resume drops it (the batch is logged again).
            _log_batch(ctx, k, rows, seconds, regenerated=k <= latest)
            latest = commit_batch(ctx.checkpoints, k, rows, latest)
            sampled = [s for kept in done.values() for row in kept for s in row["samples"]]
            ctx.log.update(len(done), acc=round(sum(bool(s["correct"]) for s in sampled)
                                                / max(len(sampled), 1), 4))
    rows = rows_in_order(done, len(batches))
    atomic_write_text(ctx.output_path, jsonl(rows))
    summary = summarize(rows, variants)
    summary.update(
        backend=backend, direct_template_from=origin,
        selection=(f"{len(questions)} of {len(every)} prompts, seeded sample (seed "
                   f"{config.seed})" if len(questions) < len(every) else
                   f"all {len(every)} prompts"),
        samples_per_variant=config.samples_per_variant,
        generation={"max_new_tokens": config.sampling.max_new_tokens,
                    "temperature": config.sampling.temperature,
                    "top_p": config.sampling.top_p, "batch_size": config.batch_size},
        rewards=dict(config.rewards))
    atomic_write_json(ctx.dir / SUMMARY_FILE, summary)
    for variant in variants:
        values = summary["variants"][variant.name]
        ctx.log.metrics(len(batches), {"variant": variant.name,
                                       **{k: v for k, v in values.items() if k != "template"}},
                        prefix="summary")
    ctx.log.metrics(len(batches), {"variant": "all", **{
        k: summary[k] for k in ("trajectories", "correct", "accuracy", "mean_reward",
                                "mean_tokens", "questions_mixed")}}, prefix="summary")
    return StageResult(metrics=result_metrics(summary), key_metric="accuracy",
                       steps=len(batches))


def sampled_questions(ctx: StageContext, config: RolloutConfig) -> tuple[
        list[Question], list[Question], list[Variant], str]:
    """(every question, the ones sampled, the prompt variants, where the direct template
    comes from): what the stage generates from, and what ``recipe data`` shows."""
    prompts_input = ctx.input("prompts")
    fmt = prompts_input.format or "gsm8k"
    every = questions_of(ctx.rows("prompts"), fmt)
    questions = select_questions(every, config.n_questions, config.seed)
    if not questions:
        raise RecipeError(f"stage {ctx.stage.name}: dataset '{prompts_input.ref}' has no "
                          "questions", hint="check the dataset's source, limit and format")
    template, origin = direct_template(ctx.plan, ctx.input("policy").ref, fmt)
    return every, questions, build_variants(config.variants, template), origin


def _generate(ctx: StageContext, generator: Generator, batch: list[Question],
              variants: list[Variant], config: RolloutConfig, index: int,
              rewards: WeightedRewards, per_question: int) -> tuple[list[dict], float]:
    try:
        return generate_batch(generator, batch, variants, config.samples_per_variant,
                              batch_seed(config.seed, index), rewards)
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
            from llm_recipe.runtime.rl.generation import oom_hint

            raise RecipeError(f"stage {ctx.stage.name}: out of GPU memory generating batch "
                              f"{index + 1} ({len(batch) * per_question} sequences)",
                              hint=oom_hint(ctx.stage.name, per_question)) from exc
        raise


def _log_setup(ctx: StageContext, config: RolloutConfig, questions: list[Question],
               available: int, variants: list[Variant], origin: str, backend: str, why: str,
               batches: list[list[Question]]) -> None:
    log = ctx.log.line
    if config.n_questions and config.n_questions > available:
        log(f"[rollout] n_questions {config.n_questions} is more than the {available} "
            "prompts: all of them are used")
    log(f"[rollout] {len(questions)} questions x {len(variants)} variants "
        f"({', '.join(v.name for v in variants)}) x {config.samples_per_variant} samples; "
        f"{len(batches)} batches of up to {config.batch_size} questions")
    log(f"[rollout] direct prompt from {origin}")
    log(f"[rollout] generation backend: {why}"
        + (", left-padded batches with the KV cache" if backend == "transformers" else ""))
    if config.sampling.greedy and config.samples_per_variant > 1:
        log(f"[rollout] warning: temperature 0 is greedy: the {config.samples_per_variant} "
            f"samples of a variant are identical; set stages.{ctx.stage.name}.generation."
            "temperature above 0 for different trajectories")
    missing = sum(extract_answer(q.reference) is None for q in questions)
    if missing:
        log(f"[rollout] warning: {missing} of {len(questions)} references have no number, "
            "so no trajectory of theirs can count as correct")


def _log_batch(ctx: StageContext, k: int, rows: list[dict], seconds: float, *,
               regenerated: bool) -> None:
    samples = [s for row in rows for s in row["samples"]]
    tokens = sum(s["num_tokens"] for s in samples)
    accuracy = sum(bool(s["correct"]) for s in samples) / max(len(samples), 1)
    mean_reward = sum(s["reward"] for s in samples) / max(len(samples), 1)
    rate = tokens / seconds if seconds > 0 else None
    if regenerated:  # its metrics row from before the interruption is kept
        ctx.log.line(f"[rollout] batch {k} generated again: accuracy={accuracy:.4f} "
                     f"mean_reward={mean_reward:.4f}")
    else:
        ctx.log.metrics(k, {"questions": len(rows), "trajectories": len(samples),
                            "accuracy": accuracy, "mean_reward": mean_reward,
                            "tokens": tokens, "tok/s": round(rate) if rate else None},
                        prefix="rollout")


@contextlib.contextmanager
def open_generator(ctx: StageContext, backend: str, config: RolloutConfig) -> Iterator[Any]:
    """The policy, loaded for ``backend``; freed on exit."""
    from llm_recipe.runtime.rl import generation

    item = ctx.input("policy")
    if backend == "vllm":
        with generation.vllm_source(ctx, item) as source:
            generator = generation.open_vllm(ctx, source, config.sampling, config.seed)
            try:
                yield generator
            finally:
                generator.close()
        return
    from llm_recipe.runtime import compute as compute_rules

    model, tokenizer = ctx.load_model(item, trainable=False)
    if hasattr(model, "merge_and_unload"):  # sampling from the merged weights is faster
        model = model.merge_and_unload()
    generator = generation.TransformersGenerator(
        model.to(compute_rules.device(ctx.compute)), tokenizer, config.sampling)
    try:
        yield generator
    finally:
        if generator.truncated:
            ctx.log.line(f"[rollout] warning: {generator.truncated} prompts were cut from the "
                         "left to fit the policy's context with max_new_tokens")
        generator.close()
