"""Benchmark: how fast `recipe plan` is, next to `import torch` on the same machine.

Measures, in one run on one machine:
- cold `recipe plan recipes/abel.yaml` wall time (a fresh interpreter each time), median of N;
- `python -c "import torch"` wall time, median of N, for scale;
- planning generated recipes of 10, 100 and 1,000 stages (cold CLI wall time and the
  in-process compile time), to check growth is linear.

Targets: abel plans in <= 0.25 s cold; 1,000 stages in <= 2 s.
Usage: python bench/plan_bench.py [--runs 15] [--out bench/results/plan.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE_CLI = [sys.executable, "-m", "llm_recipe"]


def wall(cmd: list[str], runs: int) -> dict[str, float]:
    """Median/min/max wall seconds of a command started fresh each time."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "runs": runs}


def generated_recipe(stages: int) -> str:
    """A realistic pipeline: repeated sft -> rollout -> preferences -> dpo rounds, evals."""
    lines = [
        "recipe: 1",
        f"name: generated-{stages}",
        "models:",
        "  base: {hub: mistralai/Mistral-7B-v0.1, revision: main}",
        "datasets:",
        "  train: {hub: openai/gsm8k, subset: main, split: train, format: gsm8k}",
        "  test: {hub: openai/gsm8k, subset: main, split: test, format: gsm8k}",
        "compute: {launcher: accelerate, gpus_per_node: 8, gpu: {type: H100, memory_gb: 80}}",
        "stages:",
    ]
    policy = "base"
    cycle = ["sft", "rollout", "preferences", "dpo"]
    for i in range(stages):
        kind = cycle[i % 4]
        r = i // 4
        if kind == "sft":
            lines.append(f"  sft_{r}: {{kind: sft, model: {policy}, data: train, "
                         "adapter: {type: lora, r: 16}, train: {epochs: 1, lr: 2.0e-5}}")
        elif kind == "rollout":
            lines.append(f"  rollout_{r}: {{kind: rollout, policy: sft_{r}, prompts: train, "
                         "n_questions: 100, variants: [direct, reflective]}")
        elif kind == "preferences":
            lines.append(f"  prefs_{r}: {{kind: preferences, rollouts: rollout_{r}}}")
        else:
            lines.append(f"  dpo_{r}: {{kind: dpo, policy: sft_{r}, data: prefs_{r}, "
                         "train: {lr: 5.0e-6, batch_size: 2, grad_accum: 2}}")
            policy = f"dpo_{r}"
    return "\n".join(lines) + "\n"


def in_process(path: Path, runs: int) -> float:
    from llm_recipe.compiler import compile_recipe

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        compile_recipe(path, cwd=path.parent)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plan.json")
    args = parser.parse_args()

    results: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpu_count": _cpus(),
                    "platform": platform.platform()},
    }
    results["python_startup"] = wall([sys.executable, "-c", "pass"], args.runs)
    results["import_torch"] = wall([sys.executable, "-c", "import torch"], args.runs)
    results["plan_abel_cold"] = wall([*RECIPE_CLI, "plan", "recipes/abel.yaml"], args.runs)
    results["plan_abel_json_cold"] = wall(
        [*RECIPE_CLI, "plan", "recipes/abel.yaml", "--json"], args.runs)
    scaling = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100, 1000):
            path = Path(tmp) / f"gen{n}.yaml"
            path.write_text(generated_recipe(n))
            runs = max(3, args.runs // (3 if n == 1000 else 1))
            cold = wall([*RECIPE_CLI, "plan", str(path), "--json"], runs)
            scaling[str(n)] = {"cli_cold": cold, "compile_in_process_s": in_process(path, 3)}
    results["generated"] = scaling
    per_stage = {n: s["compile_in_process_s"] / int(n) for n, s in scaling.items()}
    results["compile_s_per_stage"] = per_stage
    abel = results["plan_abel_cold"]["median_s"]  # type: ignore[index]
    big = scaling["1000"]["cli_cold"]["median_s"]
    results["targets"] = {"abel_cold_le_0.25s": abel <= 0.25, "stages_1000_le_2s": big <= 2.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
