"""Benchmark: the dpo stage through `recipe run` against a hand-written trl DPOTrainer script.

Both sides train the same policy on the same preference pairs with the same seed and
hyper-parameters (read from the compiled plan), fp32 on CPU with the same torch
threads, each in a fresh process, interleaved A B A B so machine noise hits both:

- ``--mode continue`` (default, seed 002's phase 4): the LoRA SFT adapter continued, the
  reference being that adapter frozen. The hand side loads the adapter trainable on its
  base and lets trl add the frozen copy (``ref_model=None``), as trl's docs do.
- ``--mode full``: full weights, the reference a second copy of the starting model.

The workspace is built once: a tiny llama pretrained here, a LoRA SFT adapter on it and
synthetic preference pairs (arithmetic word problems: the right result over a wrong one).
Steps/s is taken between the first and the last log step (metrics.jsonl on the recipe
side, a callback on the hand side), so imports, loading and data preparation are
excluded.

Targets: recipe/hand steps/s >= 0.95 and identical losses at every log step.
Usage: python bench/dpo_bench.py [--reps 5] [--steps 200] [--threads 2] [--mode continue]
Quick check that it runs (nothing recorded): python bench/dpo_bench.py --reps 1 --steps 10
  --out /tmp/dpo-bench.json
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

from runtime_bench import _git, _sha256, loop_rate, machine, timed

ROOT = Path(__file__).resolve().parent.parent
RECIPE_CLI = [str(Path(sys.executable).parent / "recipe")]
RECIPE_NAME = "dpo-bench.yaml"
STAGES = {"continue": "dpo", "full": "dpo_full"}
RECIPE = """\
recipe: 1
name: dpo-bench
seed: 42
models:
  base:
    init: {architecture: llama, size: tiny}
    tokenizer: {train: {data: corpus, vocab_size: 512}}
datasets:
  corpus: {builtin: corpus, format: text, n: 500}
  arith: {builtin: arithmetic, split: train, n: 300, format: gsm8k}
  pairs: {path: pairs.jsonl, format: preference}
compute: {launcher: local, gpus_per_node: 0, precision: fp32}
stages:
  pretrain:
    kind: pretrain
    model: base
    data: corpus
    train: {max_steps: 30, lr: 3.0e-3, batch_size: 8, max_seq_len: 128, log_every: 10}
  sft:
    kind: sft
    model: pretrain
    data: arith
    adapter: {type: lora, r: 8, alpha: 16, dropout: 0.05}
    train: {max_steps: 30, lr: 1.0e-3, batch_size: 8, max_seq_len: 256, log_every: 10}
  dpo:
    kind: dpo
    policy: sft
    reference: sft
    data: pairs
    beta: 0.1
    loss_type: sigmoid
    train: {max_steps: 200, lr: 1.0e-4, batch_size: 2, grad_accum: 2, max_seq_len: 256,
            lr_scheduler: cosine, warmup_ratio: 0.1, log_every: 5, save_every: 100}
  dpo_full:
    kind: dpo
    policy: pretrain
    data: pairs
    beta: 0.1
    loss_type: sigmoid
    train: {max_steps: 200, lr: 1.0e-5, batch_size: 2, grad_accum: 2, max_seq_len: 256,
            lr_scheduler: cosine, warmup_ratio: 0.1, log_every: 5, save_every: 100}
"""


def hand_dpo(spec_file: str) -> None:
    """The hand-written side: trl, transformers, peft and datasets only, no llm_recipe code."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    spec = json.loads(Path(spec_file).read_text())
    train = spec["train"]
    rows = [json.loads(line) for line in Path(spec["rows"]).read_text().splitlines()]
    rows = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    ref_model = None
    if spec["adapter"]:
        model = PeftModel.from_pretrained(model, spec["adapter"], is_trainable=True)
        tokenizer = AutoTokenizer.from_pretrained(spec["adapter"])
    else:
        ref_model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    args = DPOConfig(
        output_dir=spec["out"], use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=spec["seed"], max_steps=train["max_steps"],
        learning_rate=train["lr"], per_device_train_batch_size=train["batch_size"],
        gradient_accumulation_steps=train["grad_accum"], lr_scheduler_type=train["lr_scheduler"],
        warmup_steps=train["warmup_ratio"],  # a float below 1 is a ratio in transformers 5
        weight_decay=train["weight_decay"], max_grad_norm=train["max_grad_norm"],
        optim="adamw_torch", logging_steps=train["log_every"], save_steps=train["save_every"],
        save_total_limit=train["keep_checkpoints"], max_length=train["max_seq_len"],
        beta=spec["beta"], loss_type=[spec["loss_type"]], label_smoothing=spec["label_smoothing"],
        report_to="none", disable_tqdm=True)
    logged: dict[int, tuple[float, float, float | None]] = {}

    class LogTimes(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged[state.global_step] = (time.monotonic(), float(logs["loss"]),
                                             logs.get("rewards/margins"))

    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows), callbacks=[LogTimes()])
    output = trainer.train()
    final = trainer.model
    if "ref" in getattr(final, "peft_config", {}):
        final.delete_adapter("ref")
    final.save_pretrained(spec["out"] + "/model")
    Path(spec["result"]).write_text(json.dumps({
        "log": {step: {"time": t, "loss": loss, "rewards/margins": margin}
                for step, (t, loss, margin) in logged.items()},
        "train_runtime_s": output.metrics["train_runtime"], "steps": trainer.state.global_step,
        "torch_threads": torch.get_num_threads()}))


def preference_rows(n: int) -> list[dict[str, str]]:
    """Arithmetic word problems: the right worked answer over one with a wrong result."""
    from llm_recipe.runtime.builtin import arithmetic

    rows = []
    for row in arithmetic(split="train", n=n, seed=5):
        work, result = row["answer"].rsplit("#### ", 1)
        rows.append({"prompt": f"Question: {row['question']}\nAnswer:",
                     "chosen": f" {work}#### {result}",
                     "rejected": f" {work}#### {int(result) + 7}", "pair_type": "correctness"})
    return rows


def setup(ws: Path, env: dict[str, str]) -> None:
    """The recipe, the pairs, and the pretrain and sft stages run once."""
    (ws / RECIPE_NAME).write_text(RECIPE)
    (ws / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(256)))
    for stage in ("pretrain", "sft"):
        timed([*RECIPE_CLI, "run", RECIPE_NAME, "--only", stage, "-q"], ws, env)


def dpo_spec(ws: Path, mode: str, steps: int) -> dict[str, Any]:
    """The hand side's inputs, from the compiled plan: train block, seed, models, rows."""
    from llm_recipe.compiler import compile_recipe

    name = STAGES[mode]
    plan = compile_recipe(ws / RECIPE_NAME, overrides=[f"stages.{name}.train.max_steps={steps}"],
                          cwd=ws)
    stage = plan.stage(name)
    policy = next(i for i in stage.inputs if i.field == "policy")
    if policy.type == "adapter":
        base = str(ws / plan.stage(policy.base or "").output.path)
        adapter: str | None = str(ws / (policy.path or ""))
    else:
        base, adapter = str(ws / (policy.path or "")), None
    config = stage.config
    return {"train": config["train"], "seed": config["seed"], "beta": config["beta"],
            "loss_type": config["loss_type"], "label_smoothing": config["label_smoothing"],
            "rows": str(ws / "pairs.jsonl"), "base": base, "adapter": adapter,
            "stage": name, "output": str(ws / stage.output.path),
            "out": str(ws / "hand-dpo"), "result": str(ws / "hand-result.json")}


def compare(ws: Path, mode: str, reps: int, steps: int, env: dict[str, str]) -> dict[str, Any]:
    spec = dpo_spec(ws, mode, steps)
    (ws / "hand-spec.json").write_text(json.dumps(spec))
    name = spec["stage"]
    recipe_cmd = [*RECIPE_CLI, "run", RECIPE_NAME, "--only", name, "--force", name, "--json",
                  "--set", f"stages.{name}.train.max_steps={steps}"]
    hand_cmd = [sys.executable, str(Path(__file__).resolve()), "--hand-dpo",
                str(ws / "hand-spec.json")]
    stage_dir = ws / "outputs" / "dpo-bench" / name
    runs: dict[str, list[dict[str, Any]]] = {"recipe": [], "hand": []}
    for rep in range(reps):
        for side in ("recipe", "hand"):
            shutil.rmtree(ws / "hand-dpo", ignore_errors=True)
            wall, out, other = timed(recipe_cmd if side == "recipe" else hand_cmd, ws, env)
            if side == "recipe":
                rows = [json.loads(line) for line in
                        (stage_dir / "metrics.jsonl").read_text().splitlines()]
                log = {r["step"]: r for r in rows if r.get("phase") == "train"}
                extra = {"stage_loss": json.loads(out)["stages"][0]["metrics"]["loss"]}
            else:
                result = json.loads(Path(spec["result"]).read_text())
                log = {int(k): v for k, v in result.pop("log").items()}
                extra = result
            run = {"rep": rep, "process_wall_s": wall, "other_load": other, **loop_rate(log),
                   "margins": [log[s].get("rewards/margins") for s in sorted(log)], **extra}
            runs[side].append(run)
            print(f"  dpo {mode} {side:6} rep {rep}: {run['steps_per_s']:.2f} steps/s, "
                  f"last loss {run['last_loss']!r}, process {wall:.1f} s, "
                  f"other load {other:.0%}", flush=True)
    med = {side: statistics.median(r["steps_per_s"] for r in rs) for side, rs in runs.items()}
    best = {side: max(r["steps_per_s"] for r in rs) for side, rs in runs.items()}
    weights = "adapter_model.safetensors" if spec["adapter"] else "model.safetensors"
    recipe_losses = {tuple(r["losses"]) for r in runs["recipe"]}
    hand_losses = {tuple(r["losses"]) for r in runs["hand"]}
    return {"mode": mode, "steps": steps, "train": spec["train"], "seed": spec["seed"],
            "runs": runs, "median_steps_per_s": med,
            "ratio_recipe_over_hand": med["recipe"] / med["hand"],
            "best_steps_per_s": best, "best_ratio": best["recipe"] / best["hand"],
            "max_other_load": max(r["other_load"] for rs in runs.values() for r in rs),
            "final_weights_identical": _sha256(Path(spec["output"]) / weights)
            == _sha256(ws / "hand-dpo" / "model" / weights),
            "first_loss": {"recipe": runs["recipe"][0]["losses"][0],
                           "hand": runs["hand"][0]["losses"][0]},
            "losses_identical": recipe_losses == hand_losses and len(recipe_losses) == 1,
            "max_abs_loss_diff_at_log_steps": max(
                abs(a - b) for r, h in zip(runs["recipe"], runs["hand"], strict=True)
                for a, b in zip(r["losses"], h["losses"], strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5, help="dpo runs per side")
    parser.add_argument("--steps", type=int, default=200, help="dpo steps per run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--mode", choices=sorted(STAGES), default="continue")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dpo.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch workspace")
    parser.add_argument("--hand-dpo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hand_dpo:
        return hand_dpo(args.hand_dpo)
    started = time.perf_counter()
    ws = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "commit": _git("rev-parse", "HEAD"), "uncommitted": _git("status", "--short", "src"),
        "workspace": str(ws), "torch_threads": args.threads}
    try:
        print("workspace: pretrain and LoRA sft ...", flush=True)
        setup(ws, env)
        print(f"dpo ({args.mode}): recipe vs hand-written trl, {args.reps} reps each ...",
              flush=True)
        results["dpo"] = compare(ws, args.mode, args.reps, args.steps, env)
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    dpo = results["dpo"]
    results["targets"] = {"dpo_ratio_ge_0.95": dpo["ratio_recipe_over_hand"] >= 0.95,
                          "dpo_losses_identical": dpo["losses_identical"]}
    results["bench_wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("targets", "bench_wall_s")}, indent=2))
    print(f"dpo ratio {dpo['ratio_recipe_over_hand']:.3f} (steps/s medians "
          f"{dpo['median_steps_per_s']}); first loss {dpo['first_loss']}, max loss diff "
          f"{dpo['max_abs_loss_diff_at_log_steps']:.3g}")


if __name__ == "__main__":
    main()
