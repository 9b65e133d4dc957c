"""Benchmark: what the continual stage's patch costs, in time and in bytes.

1. **Step time.** One process, one model shape with random weights (no download; the
   default is GPT-2 small's shape, 124M parameters), fp32 on CPU with ``--threads``
   torch threads. Interleaved A B C A B C ... over ``--reps`` rounds of ``--steps``
   steps each (after one warm-up step per side), median seconds per step:

   - ``plain``: a plain LM training step of the base (every weight trained, AdamW):
     forward, cross-entropy, backward, optimizer step;
   - ``patch``: the continual stage's own step (``trainer.Run.step``: the patched
     forward with the regularisers, backward, clipping and AdamW on the patch only) on
     the same rows, phase 0 (no replay);
   - ``patch_replay``: the same in phase 1, a quarter of the rows replayed, with the
     teacher's forward pass and the KL term;
   - ``forward_base`` / ``forward_patch``: inference (no grad), bare base vs base + patch.

   Reported: the ratios ``patch/plain``, ``patch_replay/plain`` and
   ``forward_patch/forward_base`` (the patch's overhead at training and at inference).

2. **Ledger entry size** per architecture and rank: each model of the built-in table
   (``compiler/architectures.py``: GPT-2 sizes, Llama-2/3, Mistral, Qwen2) is built on
   torch's meta device (its real shape, no memory, no download), its patch set is
   created at that shape and written as a real ledger entry (``Ledger.write``) and as
   the stage's output folder; the sizes are those of the files written. GPT-2 small at
   rank 16 is about 1.2 MB.

Usage: python bench/continual_bench.py [--model gpt2] [--rank 16] [--batch 4] [--seq 128]
  [--steps 10] [--reps 3] [--threads 1] [--out bench/results/continual.json]
Quick check that it runs (nothing recorded): python bench/continual_bench.py
  --model init:gpt2:tiny --steps 3 --reps 1 --out /tmp/continual-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from runtime_bench import _git, machine

ROOT = Path(__file__).resolve().parent.parent

SIZE_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama-2-7b", "llama-3-8b",
               "mistral-7b", "qwen2-0.5b", "qwen2-7b")
SIZE_RANKS = (8, 16, 32)


def hf_config(name: str) -> Any:
    """A transformers config for a built-in table name or ``init:<family>:<size>``."""
    import transformers

    from llm_recipe.compiler import architectures
    from llm_recipe.runtime.models import hf_config as init_config

    if name.startswith("init:"):
        _, family, size = name.split(":")
        ids = SimpleNamespace(pad_token_id=0, eos_token_id=0, bos_token_id=0)
        return init_config(architectures.from_init({"architecture": family, "size": size},
                                                   None), ids)
    arch = architectures.KNOWN[name]
    if arch.family == "mistral":
        return transformers.MistralConfig(
            vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
            num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_kv_heads, intermediate_size=arch.intermediate_size,
            max_position_embeddings=arch.max_position)
    return init_config(arch)


def build(name: str, seed: int = 0) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config(name)).eval()


# ---------------------------------------------------------------------- step time


def stage_run(name: str, rank: int, blocks: list[list[list[int]]],
              batch: int) -> tuple[Any, list[Any]]:
    """(a ``trainer.Run`` around a frozen base with a fresh patch, its two phases): the
    stage's own step code, without a StageContext (the step never uses one)."""
    from llm_recipe.runtime.continual import state, trainer
    from llm_recipe.runtime.continual.ledger import Ledger
    from llm_recipe.runtime.continual.patch import attach, freeze_base, patch_config
    from llm_recipe.runtime.stages.continual import ContinualConfig, Phase

    model = build(name)
    freeze_base(model)
    shape = patch_config(model, rank, "all", -4.0)
    attachment = attach(model, shape, seed=0)
    config = ContinualConfig.from_config({
        "seed": 0, "replay_ratio": 0.25, "kl_weight": 0.1,
        "phases": [{"name": "a", "data": "a", "steps": 10**6},
                   {"name": "b", "data": "b", "steps": 10**6}],
        "train": {"lr": 1e-4, "batch_size": batch, "grad_accum": 1, "max_seq_len": 1024,
                  "lr_scheduler": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0,
                  "max_grad_norm": 1.0, "optimizer": "adamw_torch", "log_every": 1,
                  "save_every": 1, "keep_checkpoints": 1}})
    run = trainer.Run(ctx=None, config=config, model=model,
                      tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=0),
                      attachment=attachment, device="cpu", ledger=Ledger(Path("/nonexistent")),
                      phase_blocks=blocks, probe_blocks=[], progress=state.Progress())
    run.optimizer = run.new_optimizer()
    run.teacher = None  # phase 1's teacher: the base (the cost is the same forward pass)
    return run, [Phase(0, "a", "a", 10**6), Phase(1, "b", "b", 10**6)]


def patch_step(run: Any, phase: Any) -> None:
    from llm_recipe.runtime.continual import data

    run.progress.phase_step += 1
    n_old = data.replay_rows(run.config.batch_size, run.config.replay_ratio, phase.index)
    run.step(phase, n_old)


def plain_step(model: Any, optimizer: Any, ids: Any) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    optimizer.step()


def forward(model: Any, ids: Any) -> None:
    import torch

    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


def step_times(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    vocab = hf_config(args.model).vocab_size
    generator = torch.Generator().manual_seed(1)
    rows = torch.randint(0, vocab, (args.batch, args.seq), generator=generator).tolist()
    # phase 0's stream is the batch's rows; phase 1 replays from it
    run, phases = stage_run(args.model, args.rank, [rows, rows], args.batch)
    plain = build(args.model)
    plain.train(False)  # the same mode as the stage's base (no dropout) for a fair compare
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    ids = torch.tensor(rows)
    base_only = build(args.model)
    sides = {
        "plain": lambda: plain_step(plain, optimizer, ids),
        "patch": lambda: patch_step(run, phases[0]),
        "patch_replay": lambda: patch_step(run, phases[1]),
        "forward_base": lambda: forward(base_only, ids),
        "forward_patch": lambda: forward(run.model, ids),
    }
    times: dict[str, list[float]] = {side: [] for side in sides}
    for fn in sides.values():  # warm-up: allocator, optimizer states
        fn()
    for rep in range(args.reps):
        for side, fn in sides.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[side].append((time.perf_counter() - started) / args.steps)
        print(f"round {rep + 1}/{args.reps}: " + ", ".join(
            f"{s} {v[-1] * 1000:.1f} ms" for s, v in times.items()), flush=True)
    median = {side: statistics.median(v) for side, v in times.items()}
    patch_params = sum(p.numel() for p in run.student.parameters())
    base_params = sum(p.numel() for p in plain.parameters())
    return {"model": args.model, "rank": args.rank, "batch": args.batch, "seq": args.seq,
            "threads": args.threads, "steps": args.steps, "reps": args.reps,
            "base_parameters": base_params, "patch_parameters": patch_params,
            "seconds_per_step": times, "median_s": median,
            "ratio_patch_over_plain": median["patch"] / median["plain"],
            "ratio_patch_replay_over_plain": median["patch_replay"] / median["plain"],
            "ratio_forward_patch_over_base": median["forward_patch"] / median["forward_base"]}


# ---------------------------------------------------------------------- entry sizes


def entry_sizes(models: list[str], ranks: list[int]) -> list[dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    from llm_recipe.runtime.continual.ledger import Ledger
    from llm_recipe.runtime.continual.patch import PatchSet, patch_config, save_patch_dir

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(hf_config(name))
            for rank in ranks:
                shape = patch_config(model, rank, "all", -4.0)
                patches = PatchSet(shape)
                ledger = Ledger(Path(tmp) / f"{name}-{rank}" / "ledger")
                row = ledger.write(patches.tensors(), kind="good", phase_idx=0,
                                   phase="wikitext", step=1000,
                                   metrics={"wikitext": 3.0, "imdb": 3.5})
                folder = Path(tmp) / f"{name}-{rank}" / "patch"
                save_patch_dir(folder, patches.tensors(), shape, base=name)
                entry_bytes = (ledger.folder / row["file"]).stat().st_size
                out.append({"model": name, "rank": rank, "blocks": shape.num_blocks,
                            "hidden": shape.hidden_size,
                            "parameters": sum(p.numel() for p in patches.parameters()),
                            "entry_bytes": entry_bytes, "entry_mb": entry_bytes / 1e6,
                            "output_bytes": sum(p.stat().st_size for p in folder.iterdir())})
                print(f"{name:12s} rank {rank:3d}: {shape.num_blocks} blocks x "
                      f"{shape.hidden_size}, {out[-1]['parameters']:,} parameters, "
                      f"ledger entry {entry_bytes / 1e6:.2f} MB", flush=True)
            del model
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt2",
                        help="a built-in table name (gpt2, llama-2-7b...) or init:<family>:<size>")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per side per round")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", default=",".join(SIZE_MODELS),
                        help="models for the entry-size table (comma-separated)")
    parser.add_argument("--ranks", default=",".join(map(str, SIZE_RANKS)))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "continual.json"))
    args = parser.parse_args()

    import transformers

    transformers.utils.logging.set_verbosity_error()
    steps = step_times(args)
    print(f"patch/plain {steps['ratio_patch_over_plain']:.3f}, patch+replay/plain "
          f"{steps['ratio_patch_replay_over_plain']:.3f}, forward patch/base "
          f"{steps['ratio_forward_patch_over_base']:.3f}")
    sizes = entry_sizes([m for m in args.sizes.split(",") if m],
                        [int(r) for r in args.ranks.split(",") if r])
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
              "commit": _git("rev-parse", "HEAD"), "machine": machine(),
              "step_time": steps, "entry_sizes": sizes}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
