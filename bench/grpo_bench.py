"""Benchmark: the grpo stage through `recipe run` against a hand-written trl GRPOTrainer.

In one scratch workspace, every command in a fresh process:

1. setup, once: a bench recipe that extends recipes/quickstart.yaml (its tiny llama,
   tokenizer, pretrain and sft stages; eval removed) and adds a `grpo` stage on the sft
   model, rewarded by two functions in `bench_rewards.py` next to it (`correct`: the
   final `#### <number>` equals the reference answer; `formatted`: there is one),
   weights 1.0 and 0.2. `recipe run` trains pretrain and sft;
2. `recipe run bench.yaml --only grpo --force grpo --json` against `hand_grpo()` below,
   a script of only trl, transformers and datasets (it imports bench_rewards, no
   llm_recipe code) doing the same training: the sft model from its folder, the same
   prompt rows (`Question: {question}\\nAnswer:`, with the `answer` column the reward
   reads), seed, steps and hyper-parameters from the compiled plan, fp32 on CPU, the
   same torch threads. Runs alternate recipe, hand, recipe, hand... so machine noise
   hits both.

Steps/s is taken between the first and the last log step (metrics.jsonl on the recipe
side, an on_log callback on the hand side), so imports, loading and data preparation
are excluded; `--steps` should be a multiple of the stage's save_every so both sides
save the same checkpoints (the runtime always saves the last step).

Targets: recipe/hand steps/s >= 0.95; the same loss (and mean reward) at every log step.
Usage: python bench/grpo_bench.py [--reps 3] [--steps 60] [--threads 2]
       python bench/grpo_bench.py --reps 1 --steps 10 --sft-steps 20 --no-save  (smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime_bench import _git, _sha256, loop_rate, machine, timed

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
RECIPE_CLI = [str(Path(sys.executable).parent / "recipe")]
STAGES = Path("outputs") / "grpo-bench"
SAVE_EVERY = 30

REWARDS = '''\
"""The bench's reward functions, imported by both sides (trl's reward signature)."""
import re

MARK = re.compile(r"####\\s*(-?[\\d,]+(?:\\.\\d+)?)")


def _final(text):
    found = MARK.findall(text)
    return found[-1].replace(",", "") if found else None


def correct(prompts, completions, answer, **kwargs):
    return [float(_final(c) is not None and _final(c) == _final(a))
            for c, a in zip(completions, answer)]


def formatted(prompts, completions, **kwargs):
    return [float(_final(c) is not None) for c in completions]
'''


def bench_recipe(steps: int, sft_steps: int | None, pretrain_steps: int | None) -> str:
    sizes = ""
    if pretrain_steps:
        sizes += f"  pretrain: {{train: {{max_steps: {pretrain_steps}}}}}\n"
    if sft_steps:
        sizes += f"  sft: {{train: {{max_steps: {sft_steps}}}}}\n"
    return f"""\
recipe: 1
extends: {json.dumps(str(QUICKSTART))}
name: grpo-bench
stages:
  eval: null
{sizes}  grpo:
    kind: grpo
    policy: sft
    prompts: arith_train
    rewards:
      - {{function: "bench_rewards:correct", weight: 1.0}}
      - {{function: "bench_rewards:formatted", weight: 0.2}}
    num_generations: 8
    beta: 0.04
    generation: {{max_new_tokens: 64, temperature: 0.9, top_p: 1.0}}
    train: {{max_steps: {steps}, lr: 1.0e-5, batch_size: 16, max_seq_len: 256,
            log_every: {max(1, min(5, steps // 4))}, save_every: {SAVE_EVERY}}}
"""


def hand_grpo(spec_file: str) -> None:
    """The hand-written side: trl, transformers and datasets only, no llm_recipe code."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    spec = json.loads(Path(spec_file).read_text())
    sys.path.insert(0, spec["rewards_dir"])
    import bench_rewards

    train, gen = spec["train"], spec["generation"]
    rows = [json.loads(line) for line in Path(spec["rows"]).read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    args = GRPOConfig(
        output_dir=spec["out"], use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=spec["seed"], max_steps=train["max_steps"],
        learning_rate=train["lr"], per_device_train_batch_size=train["batch_size"],
        gradient_accumulation_steps=train["grad_accum"], lr_scheduler_type=train["lr_scheduler"],
        warmup_steps=train["warmup_ratio"],  # a float below 1 is a ratio in transformers 5
        weight_decay=train["weight_decay"], max_grad_norm=train["max_grad_norm"],
        optim="adamw_torch", logging_steps=train["log_every"], save_steps=train["save_every"],
        save_total_limit=train["keep_checkpoints"], report_to="none", disable_tqdm=True,
        num_generations=spec["num_generations"], beta=spec["beta"],
        max_completion_length=gen["max_new_tokens"], temperature=gen["temperature"],
        top_p=gen["top_p"], reward_weights=spec["weights"])
    logged: dict[int, dict[str, float]] = {}

    class LogTimes(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged[state.global_step] = {"time": time.monotonic(), "loss": float(logs["loss"]),
                                             "reward": float(logs["reward"])}

    trainer = GRPOTrainer(model=model, reward_funcs=[bench_rewards.correct,
                                                     bench_rewards.formatted],
                          args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[LogTimes()])
    output = trainer.train()
    trainer.save_model(spec["out"] + "/model")
    Path(spec["result"]).write_text(json.dumps({
        "log": logged, "train_runtime_s": output.metrics["train_runtime"],
        "steps": trainer.state.global_step, "torch_threads": torch.get_num_threads()}))


def grpo_spec(ws: Path, overrides: list[str]) -> dict[str, Any]:
    """The hand side's inputs, from the compiled plan: the stage's settings and its rows."""
    from transformers import AutoTokenizer

    from llm_recipe.compiler import compile_recipe
    from llm_recipe.runtime.data import PROMPT_TEMPLATE, load_rows

    plan = compile_recipe(ws / "bench.yaml", overrides=overrides, cwd=ws)
    stage = plan.stage("grpo")
    config = stage.config
    steps, every = config["train"]["max_steps"], config["train"]["save_every"]
    if steps % every:
        raise SystemExit(f"--steps {steps} is not a multiple of save_every {every}: the "
                         "runtime saves the last step and the hand script would not")
    data = config["prompts"]
    rows = [{"prompt": PROMPT_TEMPLATE.format(question=row["question"]), "answer": row["answer"]}
            for row in load_rows(data, plan.datasets[data])]
    model = ws / STAGES / "sft" / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    room = config["train"]["max_seq_len"] - config["generation"]["max_new_tokens"]
    longest = max(len(ids) for ids in tokenizer([r["prompt"] for r in rows])["input_ids"])
    if longest > room:  # the runtime would drop such prompts; the hand side would not
        raise SystemExit(f"a prompt has {longest} tokens, over the {room} the stage allows")
    with (ws / "hand-rows.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return {"train": config["train"], "generation": config["generation"],
            "num_generations": config["num_generations"], "beta": config["beta"],
            "weights": [float(r["weight"]) for r in config["rewards"]], "seed": config["seed"],
            "rows": str(ws / "hand-rows.jsonl"), "model": str(model), "rewards_dir": str(ws),
            "out": str(ws / "hand-grpo"), "result": str(ws / "hand-result.json")}


def compare(ws: Path, reps: int, overrides: list[str], env: dict[str, str]) -> dict[str, Any]:
    spec = grpo_spec(ws, overrides)
    (ws / "hand-spec.json").write_text(json.dumps(spec))
    sets = [arg for o in overrides for arg in ("--set", o)]
    recipe_cmd = [*RECIPE_CLI, "run", "bench.yaml", "--only", "grpo", "--force", "grpo",
                  "--json", *sets]
    hand_cmd = [sys.executable, str(Path(__file__).resolve()), "--hand-grpo",
                str(ws / "hand-spec.json")]
    runs: dict[str, list[dict[str, Any]]] = {"recipe": [], "hand": []}
    for rep in range(reps):
        for side in ("recipe", "hand"):
            shutil.rmtree(ws / "hand-grpo", ignore_errors=True)
            wall, out, other = timed(recipe_cmd if side == "recipe" else hand_cmd, ws, env)
            if side == "recipe":
                rows = [json.loads(line) for line in
                        (ws / STAGES / "grpo" / "metrics.jsonl").read_text().splitlines()]
                log = {r["step"]: r for r in rows if r.get("phase") == "train"}
                extra = {"stage_metrics": json.loads(out)["stages"][0]["metrics"]}
            else:
                result = json.loads(Path(spec["result"]).read_text())
                log = {int(k): v for k, v in result.pop("log").items()}
                extra = result
            run = {"rep": rep, "process_wall_s": wall, "other_load": other, **loop_rate(log),
                   "rewards": [log[s]["reward"] for s in sorted(log)], **extra}
            runs[side].append(run)
            print(f"  grpo {side:6} rep {rep}: {run['steps_per_s']:.3f} steps/s, last loss "
                  f"{run['last_loss']!r}, last reward {run['rewards'][-1]:.3f}, process "
                  f"{wall:.1f} s, other load {other:.0%}", flush=True)
    med = {side: statistics.median(r["steps_per_s"] for r in rs) for side, rs in runs.items()}
    best = {side: max(r["steps_per_s"] for r in rs) for side, rs in runs.items()}
    pairs = list(zip(runs["recipe"], runs["hand"], strict=True))
    weights = [ws / STAGES / "grpo" / "model", ws / "hand-grpo" / "model"]  # the last rep's
    return {"spec": {k: spec[k] for k in ("train", "generation", "num_generations", "beta",
                                          "weights", "seed")},
            "runs": runs, "median_steps_per_s": med,
            "ratio_recipe_over_hand": med["recipe"] / med["hand"],
            "best_steps_per_s": best, "best_ratio": best["recipe"] / best["hand"],
            "max_other_load": max(r["other_load"] for rs in runs.values() for r in rs),
            "losses_identical": all(r["losses"] == h["losses"] for r, h in pairs)
            and len({tuple(r["losses"]) for r, _ in pairs}) == 1,
            "rewards_identical": all(r["rewards"] == h["rewards"] for r, h in pairs),
            "max_abs_loss_diff_at_log_steps": max(
                abs(a - b) for r, h in pairs
                for a, b in zip(r["losses"], h["losses"], strict=True)),
            "final_weights_identical": len({_sha256(p / "model.safetensors")
                                            for p in weights}) == 1}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3, help="grpo runs per side")
    parser.add_argument("--steps", type=int, default=60, help="grpo steps per run")
    parser.add_argument("--sft-steps", type=int, help="shorter sft setup (smoke runs)")
    parser.add_argument("--pretrain-steps", type=int, help="shorter pretrain setup")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpo.json")
    parser.add_argument("--no-save", action="store_true", help="print, write no results file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch workspace")
    parser.add_argument("--hand-grpo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hand_grpo:
        return hand_grpo(args.hand_grpo)
    started = time.perf_counter()
    ws = Path(tempfile.mkdtemp(prefix="grpo-bench-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    (ws / "bench.yaml").write_text(bench_recipe(args.steps, args.sft_steps, args.pretrain_steps))
    (ws / "bench_rewards.py").write_text(REWARDS)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "commit": _git("rev-parse", "HEAD"), "uncommitted": _git("status", "--short", "src"),
        "workspace": str(ws), "torch_threads": args.threads}
    try:
        print("setup: pretrain and sft of the quickstart ...", flush=True)
        results["setup_wall_s"] = sum(
            timed([*RECIPE_CLI, "run", "bench.yaml", "--only", stage, "-q"], ws, env)[0]
            for stage in ("pretrain", "sft"))
        print(f"grpo: recipe vs hand-written trl, {args.reps} reps each ...", flush=True)
        results["grpo"] = compare(ws, args.reps, [], env)
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    grpo = results["grpo"]
    results["targets"] = {"grpo_ratio_ge_0.95": grpo["ratio_recipe_over_hand"] >= 0.95,
                          "grpo_losses_identical": grpo["losses_identical"],
                          "grpo_rewards_identical": grpo["rewards_identical"]}
    results["bench_wall_s"] = time.perf_counter() - started
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("targets", "bench_wall_s")}, indent=2))
    print(f"grpo ratio {grpo['ratio_recipe_over_hand']:.3f} (steps/s medians "
          f"{grpo['median_steps_per_s']}); losses identical: {grpo['losses_identical']}")


if __name__ == "__main__":
    main()
