"""Benchmark: rollout generation through the stage's code against a plain generate loop.

Both sides sample the same prompts from the same model in the same process, with the
same settings and seeds, interleaved A B A B so machine noise hits both:

- stage: ``rollout.generate_batch`` with the stage's ``TransformersGenerator``, per
  question batch: render every variant's prompt, left-pad, generate all variants x
  samples at once with the KV cache, cut at EOS, decode and score each trajectory with
  the reward registry (everything the stage does per batch but the checkpoint commit).
- plain: the same rendered prompts, per batch ``tokenizer(padding_side=left)`` and one
  ``model.generate(num_return_sequences=samples)`` seeded the same way, then decode.

Tokens are generated tokens up to EOS, counted the same way on both sides; tok/s is
tokens over the wall time of the whole loop. With the same seeds both sides draw the
same tokens, which the result records (``same_completions``).

Target: stage/plain tok/s >= 0.9.
The model is a random ``init`` llama (``--size``, a tokenizer trained on the builtin
corpus) unless ``--model`` names a hub id or folder; random weights rarely stop early,
so both sides generate ``max_new_tokens`` almost every time.
Usage: python bench/rollout_bench.py [--reps 3] [--questions 32] [--batch-size 8]
       [--samples 4] [--max-new-tokens 64] [--size small] [--threads 1] [--model ID]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    import torch

    from llm_recipe.runtime import builtin, models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    else:
        corpus = [row["text"] for row in builtin.generate("corpus", n=500, seed=0)]
        tokenizer = models.train_tokenizer(corpus, vocab_size=512)
        model = models.init_model({"architecture": "llama", "size": args.size,
                                   "context_length": 1024}, tokenizer, seed=0)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer, device


def questions(n: int) -> list[Any]:
    from llm_recipe.runtime import builtin
    from llm_recipe.runtime.stages.rollout import questions_of

    return questions_of(builtin.generate("arithmetic", split="train", n=n, seed=0), "gsm8k")


def stage_side(generator: Any, batches: list, variants: list, samples: int, seed: int,
               rewards: Any) -> dict[str, Any]:
    from llm_recipe.runtime.rl.generation import batch_seed
    from llm_recipe.runtime.stages.rollout import generate_batch

    started = time.perf_counter()
    texts, tokens = [], 0
    for index, batch in enumerate(batches):
        rows, _ = generate_batch(generator, batch, variants, samples, batch_seed(seed, index),
                                 rewards)
        for row in rows:
            for sample in row["samples"]:
                texts.append(sample["full_text"])
                tokens += sample["num_tokens"]
    wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "texts": texts}


def plain_side(model: Any, tokenizer: Any, prompts: list[list[str]], samples: int, seed: int,
               sampling: Any) -> dict[str, Any]:
    """What one would write by hand: no llm_recipe code but the seed function."""
    import torch

    from llm_recipe.runtime.rl.generation import batch_seed

    eos = tokenizer.eos_token_id
    started = time.perf_counter()
    texts, tokens = [], 0
    for index, batch in enumerate(prompts):
        tokenizer.padding_side = "left"
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(model.device)
        torch.manual_seed(batch_seed(seed, index))
        kwargs: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            kwargs = {"do_sample": True, "temperature": sampling.temperature,
                      "top_p": sampling.top_p, "top_k": 0}
        if sampling.temperature > 0:
            kwargs["num_return_sequences"] = samples
        else:  # greedy generate refuses num_return_sequences > 1
            encoded = {k: v.repeat_interleave(samples, dim=0) for k, v in encoded.items()}
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=sampling.max_new_tokens,
                                 use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos, **kwargs)
        for row in out[:, encoded["input_ids"].shape[1]:].tolist():
            cut = row.index(eos) if eos in row else len(row)
            tokens += cut
            texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "texts": texts}


def machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
           .splitlines() if line.startswith("model name")]
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu[0] if cpu else None, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": gpu}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3, help="runs per side")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="questions per batch")
    parser.add_argument("--variants", default="direct,reflective,deliberative")
    parser.add_argument("--samples", type=int, default=4, help="samples per variant")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--size", default="small", help="init size of the random llama")
    parser.add_argument("--model", help="a hub id or folder instead of a random llama")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollout.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from llm_recipe.runtime.data import PROMPT_TEMPLATE
    from llm_recipe.runtime.rl.generation import Sampling, TransformersGenerator
    from llm_recipe.runtime.rl.rewards import WeightedRewards
    from llm_recipe.runtime.stages.rollout import batches_of, build_variants, render

    started = time.perf_counter()
    model, tokenizer, device = load_model(args)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    generator = TransformersGenerator(model, tokenizer, sampling)
    variants = build_variants(args.variants.split(","), PROMPT_TEMPLATE)
    batches = batches_of(questions(args.questions), args.batch_size)
    prompts = [[render(v, q, tokenizer) for q in batch for v in variants] for batch in batches]
    rewards = WeightedRewards([("gsm8k_correctness", 1.0), ("quality", 0.5),
                               ("length_penalty", 0.1)], ROOT)
    runs: dict[str, list[dict[str, Any]]] = {"stage": [], "plain": []}
    stage_side(generator, batches[:1], variants, 1, args.seed, rewards)  # warm-up
    for _ in range(args.reps):
        runs["stage"].append(stage_side(generator, batches, variants, args.samples, args.seed,
                                        rewards))
        runs["plain"].append(plain_side(model, tokenizer, prompts, args.samples, args.seed,
                                        sampling))
    same = all(s["texts"] == p["texts"] for s, p in zip(runs["stage"], runs["plain"],
                                                         strict=True))
    rates = {side: [r["tok_s"] for r in results] for side, results in runs.items()}
    ratio = statistics.median(rates["stage"]) / statistics.median(rates["plain"])
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                 capture_output=True).stdout.strip(),
        "machine": machine(device), "device": device,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {
            "model": args.model or f"init llama {args.size} (random)",
            "sequences_per_batch": args.batch_size * len(variants) * args.samples},
        "stage": {"tok_s_median": statistics.median(rates["stage"]),
                  "tok_s": [round(r, 1) for r in rates["stage"]],
                  "tokens": runs["stage"][0]["tokens"]},
        "plain": {"tok_s_median": statistics.median(rates["plain"]),
                  "tok_s": [round(r, 1) for r in rates["plain"]],
                  "tokens": runs["plain"][0]["tokens"]},
        "ratio": ratio, "target": {"ratio >= 0.9": ratio >= 0.9},
        "same_completions": same,
        "bench_wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("stage", "plain", "ratio", "target",
                                              "same_completions", "bench_wall_s")}, indent=2))


if __name__ == "__main__":
    main()
