"""Benchmark: a pretrain stage over a 1 GiB text file: memory, tokenization, the cache.

In one scratch workspace (a temporary directory), every command in a fresh process:

1. A jsonl file of ``--gib`` GiB of generated English documents (the builtin corpus's
   sentences, 8 to 24 per document, about 1 KB each; seeded).
2. ``recipe run bench.yaml``: a tiny llama from ``init`` with a tokenizer trained on the
   builtin corpus, pretrained for a few steps on the file (packed 512-token blocks). The
   whole process tree (``recipe`` and its tokenizing workers) is sampled every 0.2 s with
   psutil: the peak of the sum of RSS (file pages of memory-mapped Arrow included, and
   pages the forked workers share counted once per process) and of the sum of PSS
   (shared pages split between the processes sharing them). Conversion and
   tokenization times come from the stage's ``[data]`` lines.
3. ``tokenizers``' own ``encode_batch`` on the same texts (read from the converted Arrow
   file, the first ``--sample-mb`` MB, batches of 1,000 documents, special tokens added)
   with ``RAYON_NUM_THREADS`` = the stage's ``data_workers`` (the same cores), timed
   around the encode calls only. The stage's throughput is the text bytes over its
   tokenization build time (``datasets.map`` in worker processes, writing Arrow, then
   packing), so reading, writing and packing count against it.
4. ``recipe run bench.yaml --force-all``: the same stage forced to run again, which reuses
   the converted and the tokenized datasets.

Targets: peak RSS of the run < 3 GiB; the stage's tokenization >= 0.8 x encode_batch;
the forced re-run <= 0.25 x the first run's wall time.
Usage: python bench/data_bench.py [--gib 1.0] [--sample-mb 200] [--steps 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPE_CLI = [str(Path(sys.executable).parent / "recipe")]
RECIPE = """\
recipe: 1
name: databench
seed: 1
models:
  tiny:
    init: {{architecture: llama, size: tiny, context_length: 512}}
    tokenizer: {{train: {{data: sample, vocab_size: 512}}}}
datasets:
  sample: {{builtin: corpus, format: text, n: 2000}}
  web: {{path: web.jsonl, format: text}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  pretrain:
    kind: pretrain
    model: tiny
    data: web
    train: {{max_steps: {steps}, batch_size: 8, max_seq_len: 512, log_every: 1,
             save_every: {steps}}}
"""
GIB = 1024 ** 3


def generate(path: Path, size: int, seed: int = 0) -> dict[str, Any]:
    """A jsonl file of ``size`` bytes: a pool of distinct documents written in random order."""
    from llm_recipe.runtime.builtin import _sentences

    rng = random.Random(seed)
    sentences = _sentences(random.Random(f"bench:{seed}"))
    pool = [json.dumps({"text": " ".join(next(sentences) for _ in range(rng.randint(8, 24)))})
            + "\n" for _ in range(50_000)]
    written = rows = 0
    started = time.perf_counter()
    with path.open("w", encoding="utf-8") as handle:
        while written < size:
            chunk = [pool[rng.randrange(len(pool))] for _ in range(10_000)]
            text = "".join(chunk)
            handle.write(text)
            written += len(text)
            rows += len(chunk)
    return {"bytes": written, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}


class TreeMemory:
    """Peak memory of a process and its descendants, sampled on a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.peak_rss = self.peak_pss = self.peak_single_rss = 0
        self.peak_processes = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        import psutil

        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            rss = pss = 0
            for proc in procs:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
                self.peak_single_rss = max(self.peak_single_rss, info.rss)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(procs))
            time.sleep(self.every)

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.thread.join()
        return {"peak_rss_sum_gib": round(self.peak_rss / GIB, 3),
                "peak_pss_sum_gib": round(self.peak_pss / GIB, 3),
                "peak_single_process_rss_gib": round(self.peak_single_rss / GIB, 3),
                "processes": self.peak_processes}


def recipe_run(ws: Path, *extra: str) -> dict[str, Any]:
    """``recipe run bench.yaml`` in ``ws``: wall time, tree memory, the [data] lines."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    child = subprocess.Popen([*RECIPE_CLI, "run", "bench.yaml", "--json", *extra], cwd=ws,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(child.pid)
    _, err = child.communicate()
    wall = time.perf_counter() - started
    peaks = memory.stop()
    if child.returncode:
        raise SystemExit(f"recipe run failed ({child.returncode}):\n{err[-3000:]}")
    log = (ws / "outputs" / "databench" / "pretrain" / "train.log").read_text()
    run_log = log[log.rfind("=== pretrain: starting"):]
    lines = [line for line in run_log.splitlines() if line.startswith("[data]")]
    return {"wall_s": round(wall, 1), **peaks, "data_lines": lines}


def built_seconds(lines: list[str], prefix: str) -> float | None:
    for line in lines:
        if line.startswith(prefix):
            found = re.search(r"built in ([0-9.]+) s", line)
            return float(found.group(1)) if found else None
    return None


def encode_batch(ws: Path, threads: int, sample_mb: int) -> dict[str, Any]:
    """tokenizers' encode_batch on the stage's texts, in a fresh process on ``threads``."""
    cache = ws / "outputs" / "databench" / ".cache"
    tokenizer = next((cache / "tokenizers").glob("tiny-*")) / "tokenizer.json"
    data = next(p for p in (cache / "datasets").glob("web-*/data.arrow"))
    script = f"""
import json, time
import pyarrow as pa
from tokenizers import Tokenizer
tok = Tokenizer.from_file({str(tokenizer)!r})
texts, size = [], 0
with pa.OSFile({str(data)!r}) as handle:
    for batch in pa.ipc.open_stream(handle):
        for text in batch.column("text").to_pylist():
            texts.append(text); size += len(text.encode())
        if size >= {sample_mb} * 10**6:
            break
tokens = 0
started = time.perf_counter()
for i in range(0, len(texts), 1000):
    tokens += sum(len(e.ids) for e in tok.encode_batch(texts[i:i + 1000], add_special_tokens=True))
seconds = time.perf_counter() - started
print(json.dumps({{"bytes": size, "documents": len(texts), "tokens": tokens,
                  "seconds": seconds}}))
"""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
    done = subprocess.run([sys.executable, "-c", script], env=env, text=True,
                          capture_output=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["mb_s"] = round(result["bytes"] / result["seconds"] / 1e6, 2)
    result["threads"] = threads
    return result


def machine() -> dict[str, Any]:
    import datasets
    import pyarrow
    import tokenizers

    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
           .splitlines() if line.startswith("model name")]
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu[0] if cpu else None, "cpu_count": os.cpu_count(),
            "datasets": datasets.__version__, "pyarrow": pyarrow.__version__,
            "tokenizers": tokenizers.__version__, "load_before": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0, help="size of the generated file")
    parser.add_argument("--sample-mb", type=int, default=200,
                        help="text encode_batch is timed on")
    parser.add_argument("--steps", type=int, default=5, help="pretrain steps")
    parser.add_argument("--keep", action="store_true", help="keep the scratch workspace")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data.json")
    args = parser.parse_args()
    from llm_recipe.runtime.data.tokenize import default_workers

    started = time.perf_counter()
    ws = Path(tempfile.mkdtemp(prefix="data-bench-"))
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                               "machine": machine(), "workspace": str(ws)}
    try:
        (ws / "bench.yaml").write_text(RECIPE.format(steps=args.steps))
        results["file"] = generate(ws / "web.jsonl", int(args.gib * GIB))
        print("generated", results["file"], flush=True)
        first = recipe_run(ws)
        print("first run", first, flush=True)
        workers = default_workers()
        first["convert_s"] = built_seconds(first["data_lines"], "[data] web:")
        first["tokenize_s"] = built_seconds(first["data_lines"], "[data] tokenized")
        results["first_run"] = first
        reference = encode_batch(ws, workers, args.sample_mb)
        text_bytes = _text_bytes(ws)
        ours = {"bytes": text_bytes, "seconds": first["tokenize_s"], "workers": workers,
                "mb_s": round(text_bytes / first["tokenize_s"] / 1e6, 2)}
        results["tokenization"] = {"stage": ours, "encode_batch": reference,
                                   "ratio": round(ours["mb_s"] / reference["mb_s"], 3)}
        print("tokenization", results["tokenization"], flush=True)
        forced = recipe_run(ws, "--force-all")
        results["forced_rerun"] = forced
        print("forced re-run", forced, flush=True)
        results["targets"] = {
            "peak_rss_under_3_gib": first["peak_rss_sum_gib"] < 3.0,
            "tokenization_within_80_percent": results["tokenization"]["ratio"] >= 0.8,
            "forced_rerun_under_a_quarter": forced["wall_s"] <= 0.25 * first["wall_s"],
            "forced_over_first": round(forced["wall_s"] / first["wall_s"], 3),
        }
    finally:
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("targets", "bench_wall_s")}, indent=2))


def _text_bytes(ws: Path) -> int:
    """UTF-8 bytes of text in the converted dataset (what the stage tokenized)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = next((ws / "outputs" / "databench" / ".cache" / "datasets").glob("web-*/data.arrow"))
    total = 0
    with pa.OSFile(str(data)) as handle:
        for batch in pa.ipc.open_stream(handle):
            total += int(pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0)
    return total


if __name__ == "__main__":
    main()
