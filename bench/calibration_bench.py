"""Benchmark: the plan's GPU memory estimate against published, measured peak memory.

Each point in ``bench/results/published_peaks.json`` is a fine-tuning run someone measured and
published (litgpt's config and resource tables, the PEFT docs, torchtune's README), with its
setup: model, sequence length, micro-batch, precision mode, full / LoRA / QLoRA, optimizer,
activation checkpointing, attention, processes and sharding, GPU, and what was measured. This
script turns every point into the estimator's own call, ``estimate_stage('sft', config, arch,
compute)``, exactly as a recipe stage would reach it, and compares the estimate's ``total``
(GiB per device, the peak) with the measurement:

- ratio estimate / measured and the error (ratio - 1);
- the fits verdict for that GPU's memory against what happened: a run that was measured has
  fit, so the estimate should fit; a published OOM should not.

The summary (median and max |error|, points within the tolerance, contrary verdicts) is computed
over the points whose setup is complete (``setup_complete``) and that were measured; points
with an incomplete setup are listed, never counted. It is also broken down by framework: the
estimator models transformers + peft + the HF Trainer, and litgpt or torchtune hold some
things differently (each point's ``source_note`` says what).

No torch: the estimator is stdlib only. ``--src`` imports ``llm_recipe`` from another source
tree, e.g. ``git archive HEAD src | tar -x -C /tmp/head`` then ``--src /tmp/head/src``, to
compare the committed estimator with a working tree.

Usage: python bench/calibration_bench.py [--points ...] [--out bench/results/calibration.json]
       [--tolerance 0.15] [--src PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
POINTS = ROOT / "bench" / "results" / "published_peaks.json"
OUT = ROOT / "bench" / "results" / "calibration.json"


def architecture(entry: dict[str, Any]) -> Any:
    """The entry's Architecture: a KNOWN name, or built from the recorded shape."""
    from llm_recipe.compiler.architectures import KNOWN, Architecture

    arch = entry["architecture"]
    if isinstance(arch, str):
        return KNOWN[arch]
    return Architecture(
        family=arch["family"], hidden_size=arch["hidden"], num_layers=arch["layers"],
        num_heads=arch["heads"], num_kv_heads=arch["kv_heads"],
        intermediate_size=arch["intermediate"], vocab_size=arch["vocab"],
        max_position=arch.get("max_position", 2048), tie_embeddings=bool(arch["tie"]),
        qkv_bias=bool(arch.get("qkv_bias", arch["family"] == "qwen2")),
        name=entry["model"].rsplit("/", 1)[-1].lower(),
    )


def stage_config(entry: dict[str, Any]) -> dict[str, Any]:
    """The sft stage's config as a recipe would give it (train block, adapter)."""
    config: dict[str, Any] = {"train": {"batch_size": entry["micro_batch"],
                                        "max_seq_len": entry["seq_len"],
                                        "optimizer": entry["optimizer"]}}
    if entry["method"] in ("lora", "qlora"):
        adapter: dict[str, Any] = {"type": entry["method"], "r": entry["lora"]["r"],
                                   "target_modules": entry["lora"]["targets"]}
        if entry["method"] == "qlora":
            adapter["quant_type"] = entry["qlora"]["quant_type"]
            adapter["double_quant"] = entry["qlora"]["double_quant"]
        config["adapter"] = adapter
    return config


def compute_section(entry: dict[str, Any]) -> dict[str, Any]:
    """The recipe's compute section: one process per GPU (accelerate) when there are several."""
    n = int(entry["processes"])
    dist: dict[str, Any] = {"activation_checkpointing": bool(entry["activation_checkpointing"])}
    if n > 1:
        dist["strategy"] = entry["strategy"]
        if entry["strategy"] == "deepspeed":
            dist["zero_stage"] = entry["zero_stage"]
    if entry.get("offload", "none") != "none":
        dist["offload"] = entry["offload"]
    compute: dict[str, Any] = {"launcher": "accelerate" if n > 1 else "local",
                               "gpus_per_node": n, "precision": entry["precision"],
                               "attn_implementation": entry["attn"], "distributed": dist}
    if entry.get("gpu_memory_gib"):
        compute["gpu"] = {"type": entry["gpu"], "memory_gb": entry["gpu_memory_gib"]}
    return compute


def setup_summary(entry: dict[str, Any]) -> str:
    """One line: method, precision, tokens, optimizer, checkpointing, attention, sharding."""
    method = entry["method"]
    if method in ("lora", "qlora"):
        targets = entry["lora"]["targets"]
        short = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "g",
                 "up_proj": "u", "down_proj": "d", "lm_head": "head"}
        names = [short.get(x, x) for x in ([] if isinstance(targets, str) else targets)]
        t = targets if isinstance(targets, str) else "".join(
            n if len(n) == 1 else "+" + n for n in names)
        method = f"{method} r{entry['lora']['r']} {t}"
        if entry["method"] == "qlora":
            method += " dq" if entry["qlora"]["double_quant"] else " nf4"
    parts = [method, entry["precision"], f"{entry['micro_batch']}x{entry['seq_len']}",
             entry["optimizer"].replace("adamw_", "")]
    if entry["activation_checkpointing"]:
        parts.append("ckpt")
    if entry["attn"] != "sdpa":
        parts.append({"flash_attention_2": "fa2"}.get(entry["attn"], entry["attn"]))
    if entry["processes"] > 1:
        s = entry["strategy"]
        if s == "deepspeed":
            s += f"-z{entry['zero_stage']}"
        parts.append(f"{entry['processes']}x{s}")
    if entry.get("offload", "none") != "none":
        parts.append(f"offload {entry['offload']}")
    return " ".join(parts)


def evaluate(entry: dict[str, Any], tolerance: float) -> dict[str, Any]:
    """Run the estimator on one point and compare."""
    from llm_recipe.compiler.estimate import estimate_stage

    row: dict[str, Any] = {
        "id": entry["id"], "model": entry["model"], "framework": entry["framework"],
        "setup": setup_summary(entry), "setup_complete": entry["setup_complete"],
        "outcome": entry["outcome"], "measured_gb": entry["measured_gb"],
        "measure": entry["measure"], "gpu": entry["gpu"], "gpu_memory_gib": entry["gpu_memory_gib"],
        "estimate_gb": None, "components_gb": None, "ratio": None, "error": None,
        "within_tolerance": None, "estimate_fits": None, "verdict_agrees": None,
        "error_message": None, "act_coeff_estimate": None, "act_coeff_implied": None,
    }
    try:
        result = estimate_stage("sft", stage_config(entry), architecture(entry),
                                compute_section(entry))
    except Exception as exc:  # the estimator is being reworked: record, do not stop
        row["error_message"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=3)
        return row
    mem = result.get("memory_gb") or {}
    total = mem.get("total")
    row.update(estimate_gb=total, components_gb=mem, estimate_setup=result.get("setup"),
               params=result.get("params"), notes=result.get("notes"))
    if total is None:
        row["error_message"] = "no memory estimate (" + "; ".join(result.get("notes") or []) + ")"
        return row
    measured = entry["measured_gb"]
    arch = architecture(entry)
    tokens_layers = (entry["micro_batch"] * entry["seq_len"] * arch.hidden_size * arch.num_layers
                     / GIB)
    if mem.get("activations") is not None:
        # Activations per token, hidden unit and layer in bytes: the estimate's own, and the one
        # the measurement implies if the estimate's non-activation parts are right (diagnostic).
        row["act_coeff_estimate"] = round(mem["activations"] / tokens_layers, 1)
        if measured:
            rest = total - max(mem["activations"], mem.get("optimizer_step") or 0.0)
            row["act_coeff_implied"] = round((measured - rest) / tokens_layers, 1)
    if measured:
        row["ratio"] = round(total / measured, 3)
        row["error"] = round(total / measured - 1, 3)
        row["within_tolerance"] = abs(total / measured - 1) <= tolerance
    gpu = entry["gpu_memory_gib"]
    if gpu:
        row["estimate_fits"] = total <= gpu
        ran = entry["outcome"] == "ran"
        row["verdict_agrees"] = row["estimate_fits"] == ran
    return row


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    verdicts = [r for r in rows if r["verdict_agrees"] is not None]
    signed = [r["error"] for r in rows if r["error"] is not None]
    return {
        "points": len(rows),
        "measured_points": len(errors),
        "median_abs_error": round(statistics.median(errors), 3) if errors else None,
        "max_abs_error": round(max(errors), 3) if errors else None,
        "median_signed_error": round(statistics.median(signed), 3) if signed else None,
        "within_tolerance": sum(1 for r in rows if r["within_tolerance"]),
        "verdicts_checked": len(verdicts),
        "verdicts_contrary": sorted(r["id"] for r in verdicts if not r["verdict_agrees"]),
        "errors": sorted(r["id"] for r in rows if r["error_message"]),
    }


def summarise(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    complete = [r for r in rows if r["setup_complete"]]
    by_framework = {fw: _stats([r for r in complete if r["framework"] == fw])
                    for fw in sorted({r["framework"] for r in complete})}
    return {"tolerance": tolerance, "complete": _stats(complete),
            "complete_by_framework": by_framework,
            "incomplete_listed_only": _stats([r for r in rows if not r["setup_complete"]])}


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    header = (f"{'id':44} {'setup':52} {'meas':>6} {'est':>6} {'ratio':>6} {'fits':>5} "
              f"{'act est/impl':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        meas = _fmt(r["measured_gb"]) if r["outcome"] == "ran" else "OOM"
        verdict = "-" if r["verdict_agrees"] is None else ("ok" if r["verdict_agrees"] else "NO")
        mark = "" if r["setup_complete"] else " *"
        coeff = f"{_fmt(r['act_coeff_estimate'], '.0f')}/{_fmt(r['act_coeff_implied'], '.0f')}"
        line = (f"{r['id'][:44]:44} {r['setup'][:52]:52} {meas:>6} {_fmt(r['estimate_gb']):>6} "
                f"{_fmt(r['ratio'], '.2f'):>6} {verdict:>5} {coeff:>12}{mark}")
        print(line)
        if r["error_message"]:
            print(f"{'':44}   estimator error: {r['error_message']}")
    print("\n* setup incomplete: listed, not counted. GiB per device; ratio = estimate / measured;"
          " fits: the estimate's verdict for that GPU agrees with what happened;\n"
          "act est/impl: activation bytes per token, hidden unit and layer, the estimate's and the"
          " one the measurement implies if everything else in the estimate is right.")
    c = summary["complete"]
    tol = summary["tolerance"]
    print(f"\ncomplete, measured: {c['measured_points']} points; median |error| "
          f"{_fmt(c['median_abs_error'], '.1%')}, max |error| {_fmt(c['max_abs_error'], '.1%')}, "
          f"median signed error {_fmt(c['median_signed_error'], '+.1%')}, within {tol:.0%}: "
          f"{c['within_tolerance']}/{c['measured_points']}; verdicts contrary: "
          f"{len(c['verdicts_contrary'])}/{c['verdicts_checked']} {c['verdicts_contrary'] or ''}")
    for fw, s in summary["complete_by_framework"].items():
        print(f"  {fw:16} {s['measured_points']:2} measured: median |error| "
              f"{_fmt(s['median_abs_error'], '.1%')}, max {_fmt(s['max_abs_error'], '.1%')}, "
              f"signed median {_fmt(s['median_signed_error'], '+.1%')}, within {tol:.0%}: "
              f"{s['within_tolerance']}, contrary verdicts {len(s['verdicts_contrary'])}")
    if c["errors"]:
        print(f"estimator errors on {len(c['errors'])} complete points: {c['errors']}")


def _source(src: Path | None) -> dict[str, Any]:
    import llm_recipe

    path = Path(llm_recipe.__file__).resolve().parent
    info: dict[str, Any] = {"llm_recipe_path": str(path), "src_override": str(src) if src else None}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        info.update(git_head=head, src_dirty=bool(dirty) and src is None)
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=Path, default=POINTS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--src", type=Path, default=None,
                        help="import llm_recipe from this source tree instead of the installed one")
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, str(args.src.resolve()))

    points = json.loads(args.points.read_text())
    rows = [evaluate(e, args.tolerance) for e in points]
    summary = summarise(rows, args.tolerance)
    print_table(rows, summary)
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "estimator": _source(args.src),
        "points_file": str(args.points.relative_to(ROOT) if args.points.is_relative_to(ROOT)
                           else args.points),
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
