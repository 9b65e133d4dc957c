"""Benchmark: `recipe run` against a hand-written trl script, and a cached re-run.

Measures, in one run on this machine, every command in a fresh process:
- the quickstart, complete, once in a scratch workspace (wall time, base vs sft accuracy);
- a fully cached re-run of it (every stage fresh), median of N, next to `python -c pass`
  and `python -c "import torch"`;
- the sft stage through `recipe run --only sft` against a hand-written trl script doing
  the same training (that workspace's pretrained model, the same rows, seed, steps and
  hyper-parameters from the compiled plan, fp32 on CPU, the same torch threads),
  interleaved A B A B so machine noise hits both. Steps/s is taken between the first and
  the last log step (metrics.jsonl on the recipe side, a callback on the hand side), so
  imports, loading and data preparation are excluded.

Targets: recipe/hand steps/s >= 0.95 and the same last-step loss; the cached re-run
<= 1 s beyond interpreter start-up.
Usage: python bench/runtime_bench.py [--reps 5] [--steps 200] [--reruns 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "quickstart.yaml"
RECIPE_CLI = [str(Path(sys.executable).parent / "recipe")]
STAGES = Path("outputs") / "quickstart"


def hand_sft(spec_file: str) -> None:
    """The hand-written side: trl, transformers and datasets only, no llm_recipe code."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    spec = json.loads(Path(spec_file).read_text())
    train = spec["train"]
    rows = [json.loads(line) for line in Path(spec["rows"]).read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    args = SFTConfig(
        output_dir=spec["out"], use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, seed=spec["seed"], max_steps=train["max_steps"],
        learning_rate=train["lr"], per_device_train_batch_size=train["batch_size"],
        gradient_accumulation_steps=train["grad_accum"], lr_scheduler_type=train["lr_scheduler"],
        warmup_steps=train["warmup_ratio"],  # a float below 1 is a ratio in transformers 5
        weight_decay=train["weight_decay"], max_grad_norm=train["max_grad_norm"],
        optim="adamw_torch", logging_steps=train["log_every"], save_steps=train["save_every"],
        save_total_limit=train["keep_checkpoints"], max_length=train["max_seq_len"],
        packing=False, completion_only_loss=True, report_to="none", disable_tqdm=True)
    logged: dict[int, tuple[float, float]] = {}

    class LogTimes(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged[state.global_step] = (time.monotonic(), float(logs["loss"]))

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[LogTimes()])
    output = trainer.train()
    trainer.save_model(spec["out"] + "/model")
    Path(spec["result"]).write_text(json.dumps({
        "log": {step: {"time": t, "loss": loss} for step, (t, loss) in logged.items()},
        "train_runtime_s": output.metrics["train_runtime"], "steps": trainer.state.global_step,
        "torch_threads": torch.get_num_threads()}))


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str, float]:
    """(wall s, stdout, share of the machine's CPU that other processes used meanwhile)."""
    busy, child = _busy_s(), _children_s()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    other = (_busy_s() - busy) - (_children_s() - child)
    return wall, done.stdout, max(other, 0.0) / (wall * (os.cpu_count() or 1))


def _busy_s() -> float:
    """Non-idle CPU seconds of the whole machine (steal included) from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _children_s() -> float:
    return sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])  # user + system seconds


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": len(times), "raw_s": [round(t, 4) for t in times]}


def loop_rate(log: dict[int, dict[str, float]]) -> dict[str, float]:
    """Steps/s between the first and the last log step, and the last step's loss."""
    steps = sorted(log)
    first, last = steps[0], steps[-1]
    seconds = log[last]["time"] - log[first]["time"]
    return {"steps_per_s": (last - first) / seconds, "window": f"{first}-{last}",
            "window_s": seconds, "last_step": last, "last_loss": log[last]["loss"],
            "losses": [log[s]["loss"] for s in steps]}


def full_run(ws: Path) -> dict[str, Any]:
    wall, out, _ = timed([*RECIPE_CLI, "run", str(RECIPE), "--json"], ws)
    report = json.loads((ws / STAGES / "eval" / "report.json").read_text())
    return {"wall_s": wall,
            "stages": {s["name"]: {"wall_s": s["wall_s"], "metrics": s["metrics"]}
                       for s in json.loads(out)["stages"]},
            "accuracy": {name: m["gsm8k_accuracy"] for name, m in report["models"].items()}}


def cached_reruns(ws: Path, runs: int) -> dict[str, Any]:
    """Interleaved: python -c pass, python -c 'import torch', a cached `recipe run`."""
    cmds = {"python_startup": [sys.executable, "-c", "pass"],
            "import_torch": [sys.executable, "-c", "import torch"],
            "cached_rerun": [*RECIPE_CLI, "run", str(RECIPE)]}
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            wall, out, _ = timed(cmd, ws)
            if name == "cached_rerun" and out.count("skipped") != 3:
                raise SystemExit(f"the re-run was not fully cached:\n{out}")
            times[name].append(wall)
    result: dict[str, Any] = {name: summary(t) for name, t in times.items()}
    result["rerun_beyond_startup_s"] = (statistics.median(times["cached_rerun"])
                                        - statistics.median(times["python_startup"]))
    return result


def sft_spec(ws: Path, steps: int) -> dict[str, Any]:
    """The hand side's inputs, from the compiled plan: train block, seed and the rows."""
    from llm_recipe.compiler import compile_recipe
    from llm_recipe.runtime.data import PROMPT_TEMPLATE, load_rows

    plan = compile_recipe(RECIPE, overrides=[f"stages.sft.train.max_steps={steps}"], cwd=ws)
    stage = plan.stage("sft")
    assert stage.config["loss"] == "completion_only" and not stage.config["packing"]
    data = stage.config["data"]
    rows = load_rows(data, plan.datasets[data])  # the builtin generator, as the runtime does
    with (ws / "hand-rows.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps({"prompt": PROMPT_TEMPLATE.format(question=row["question"]),
                                     "completion": " " + row["answer"]}) + "\n")
    return {"train": stage.config["train"], "seed": stage.config["seed"],
            "rows": str(ws / "hand-rows.jsonl"), "model": str(ws / STAGES / "pretrain" / "model"),
            "out": str(ws / "hand-sft"), "result": str(ws / "hand-result.json")}


def sft_compare(ws: Path, reps: int, steps: int, env: dict[str, str]) -> dict[str, Any]:
    spec = sft_spec(ws, steps)
    (ws / "hand-spec.json").write_text(json.dumps(spec))
    recipe_cmd = [*RECIPE_CLI, "run", str(RECIPE), "--only", "sft", "--force", "sft", "--json",
                  "--set", f"stages.sft.train.max_steps={steps}"]
    hand_cmd = [sys.executable, str(Path(__file__).resolve()), "--hand-sft",
                str(ws / "hand-spec.json")]
    runs: dict[str, list[dict[str, Any]]] = {"recipe": [], "hand": []}
    for rep in range(reps):
        for side in ("recipe", "hand"):
            shutil.rmtree(ws / "hand-sft", ignore_errors=True)
            wall, out, other = timed(recipe_cmd if side == "recipe" else hand_cmd, ws, env)
            if side == "recipe":
                rows = [json.loads(line) for line in
                        (ws / STAGES / "sft" / "metrics.jsonl").read_text().splitlines()]
                log = {r["step"]: r for r in rows if r.get("phase") == "train"}
                extra = {"stage_loss": json.loads(out)["stages"][0]["metrics"]["loss"]}
            else:
                result = json.loads(Path(spec["result"]).read_text())
                log = {int(k): v for k, v in result.pop("log").items()}
                extra = result
            run = {"rep": rep, "process_wall_s": wall, "other_load": other, **loop_rate(log),
                   **extra}
            runs[side].append(run)
            print(f"  sft {side:6} rep {rep}: {run['steps_per_s']:.2f} steps/s, "
                  f"last loss {run['last_loss']!r}, process {wall:.1f} s, "
                  f"other load {other:.0%}", flush=True)
    med = {side: statistics.median(r["steps_per_s"] for r in rs) for side, rs in runs.items()}
    best = {side: max(r["steps_per_s"] for r in rs) for side, rs in runs.items()}
    weights = [ws / STAGES / "sft" / "model", ws / "hand-sft" / "model"]  # the last rep's
    recipe_losses = {r["last_loss"] for r in runs["recipe"]}
    hand_losses = {r["last_loss"] for r in runs["hand"]}
    return {"steps": steps, "train": spec["train"], "seed": spec["seed"], "runs": runs,
            "median_steps_per_s": med, "ratio_recipe_over_hand": med["recipe"] / med["hand"],
            "best_steps_per_s": best, "best_ratio": best["recipe"] / best["hand"],
            "max_other_load": max(r["other_load"] for rs in runs.values() for r in rs),
            "final_weights_identical": len({_sha256(p / "model.safetensors")
                                            for p in weights}) == 1,
            "last_loss": {"recipe": sorted(recipe_losses), "hand": sorted(hand_losses)},
            "losses_identical": recipe_losses == hand_losses and len(recipe_losses) == 1,
            "max_abs_loss_diff_at_log_steps": max(
                abs(a - b) for r, h in zip(runs["recipe"], runs["hand"], strict=True)
                for a, b in zip(r["losses"], h["losses"], strict=True))}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=ROOT, text=True, capture_output=True)
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
           .splitlines() if line.startswith("model name")]
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu[0] if cpu else None, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "gpu": None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5, help="sft runs per side")
    parser.add_argument("--steps", type=int, default=200, help="sft steps per run")
    parser.add_argument("--reruns", type=int, default=10, help="cached re-runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "runtime.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch workspace")
    parser.add_argument("--hand-sft", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hand_sft:
        return hand_sft(args.hand_sft)
    started = time.perf_counter()
    ws = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
        "commit": _git("rev-parse", "HEAD"), "uncommitted": _git("status", "--short", "src"),
        "workspace": str(ws), "torch_threads": args.threads}
    try:
        print("quickstart, complete run ...", flush=True)
        results["quickstart_full"] = full_run(ws)
        print(f"cached re-runs x{args.reruns} ...", flush=True)
        results["cached"] = cached_reruns(ws, args.reruns)
        print(f"sft: recipe vs hand-written trl, {args.reps} reps each ...", flush=True)
        results["sft"] = sft_compare(ws, args.reps, args.steps, env)
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    sft, cached = results["sft"], results["cached"]
    results["targets"] = {
        "sft_ratio_ge_0.95": sft["ratio_recipe_over_hand"] >= 0.95,
        "sft_last_loss_identical": sft["losses_identical"],
        "cached_rerun_le_1s_beyond_startup": cached["rerun_beyond_startup_s"] <= 1.0}
    results["bench_wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("targets", "bench_wall_s")}, indent=2))
    print(f"sft ratio {sft['ratio_recipe_over_hand']:.3f} (steps/s medians "
          f"{sft['median_steps_per_s']}); cached re-run {cached['cached_rerun']['median_s']:.2f} s")


if __name__ == "__main__":
    main()
