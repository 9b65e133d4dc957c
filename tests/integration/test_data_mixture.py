"""Stages trained on weighted mixtures (CPU, offline, nano llama): the realised proportions
in train.log and in what the trainer gets, and determinism by seed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import pretrain, sft

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

TRAIN = "lr: 1.0e-3, batch_size: 8, max_seq_len: 96, log_every: 1"
RECIPE = f"""\
recipe: 1
name: mixed
seed: 5
models:
  scratch:
    init: {{architecture: llama, size: nano}}
    tokenizer:
      train: {{data: corpus, vocab_size: 400}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 300}}
  corpus_b: {{builtin: corpus, format: text, n: 60, seed: 9}}
  arith: {{builtin: arithmetic, split: train, n: 200, format: gsm8k}}
  words: {{path: words.jsonl, format: gsm8k}}
  mix:
    mixture:
      - {{data: arith, weight: 0.8}}
      - {{data: words, weight: 0.2}}
    seed: 0
  mix_seeded:
    mixture:
      - {{data: arith, weight: 0.8}}
      - {{data: words, weight: 0.2}}
    seed: 1
  text_mix:
    mixture:
      - {{data: corpus, count: 90}}
      - {{data: corpus_b, count: 30}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  sft:
    kind: sft
    model: scratch
    data: mix
    train: {{max_steps: 3, {TRAIN}}}
  again:
    kind: sft
    model: scratch
    data: mix
    train: {{max_steps: 2, {TRAIN}}}
  seeded:
    kind: sft
    model: scratch
    data: mix_seeded
    train: {{max_steps: 2, {TRAIN}}}
  pretrain:
    kind: pretrain
    model: scratch
    data: text_mix
    train: {{max_steps: 2, lr: 3.0e-3, batch_size: 4, max_seq_len: 32, log_every: 1}}
"""
WORDS = 30
"""Rows of the file member: it runs out first (30 at 20% against 200 at 80%)."""


def context(root: Path, name: str) -> StageContext:
    root.mkdir(parents=True, exist_ok=True)
    (root / "r.yaml").write_text(RECIPE)
    (root / "words.jsonl").write_text("".join(json.dumps(
        {"question": f"How many letters are in the word number {i}?",
         "answer": f"It has {i % 7 + 3} letters.\n#### {i % 7 + 3}"}) + "\n"
        for i in range(WORDS)))
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name))


def log(ctx: StageContext) -> str:
    return (ctx.dir / "train.log").read_text()


def realised(ctx: StageContext) -> dict[str, int]:
    line = re.search(r"\[data\] mixture \S+: (.*) \(seed", log(ctx))
    assert line, log(ctx)
    return {name: int(count.replace(",", "")) for count, name in
            (part.split(" ")[:2] for part in line.group(1).split(" + "))}


def test_sft_trains_on_the_mixture_in_its_proportions(tmp_path):
    ctx = context(tmp_path, "sft")
    result = sft.run(ctx)
    assert result.steps == 3
    assert [r["step"] for r in read_metrics(ctx.dir) if r["phase"] == "train"] == [1, 2, 3]
    counts = realised(ctx)
    assert counts["words"] == WORDS  # first_exhausted: the small member is read whole
    assert 60 < counts["arith"] < 200  # ~120: four arith rows for each words row
    assert "(seed 0, first_exhausted)" in log(ctx)
    rows = ctx.rows("data")
    assert len(rows) == sum(counts.values())
    assert sum("word number" in r["question"] for r in rows) == WORDS
    tokenized = re.search(r"\[data\] tokenized (\d+) rows", log(ctx))
    assert tokenized and int(tokenized.group(1)) == len(rows)


def test_the_same_seed_gives_the_same_rows_and_reuses_the_tokenized_cache(tmp_path):
    first = context(tmp_path, "sft")
    trainer, _ = sft.build_trainer(first)
    again = context(tmp_path, "again")  # another stage over the same mixture
    trainer_again, _ = sft.build_trainer(again)
    assert realised(again) == realised(first)
    assert trainer_again.train_dataset["input_ids"] == trainer.train_dataset["input_ids"]
    assert re.search(r"\[data\] tokenized .* \(cache \w+: reused\)", log(again))

    seeded = context(tmp_path, "seeded")  # another seed: other rows, in another order
    trainer_seeded, _ = sft.build_trainer(seeded)
    assert re.search(r"\[data\] tokenized .* \(cache \w+: built in", log(seeded))
    assert realised(seeded)["words"] == WORDS
    ids, other = trainer.train_dataset["input_ids"], trainer_seeded.train_dataset["input_ids"]
    assert ids[:16] != other[:16]


def test_pretrain_packs_a_mixture_by_counts(tmp_path):
    ctx = context(tmp_path, "pretrain")
    result = pretrain.run(ctx)
    assert result.steps == 2
    assert realised(ctx) == {"corpus": 90, "corpus_b": 30}
    assert "(seed 0, counts)" in log(ctx)
    assert "[data] tokenized 120 rows into " in log(ctx)


def test_pretrain_streams_a_mixture_of_streams(tmp_path):
    root = tmp_path
    root.mkdir(parents=True, exist_ok=True)
    recipe = RECIPE.replace("  mix:\n", """\
  web: {path: web.jsonl, format: text, streaming: true}
  books: {builtin: corpus, format: text, n: 80, streaming: true}
  streams:
    mixture:
      - {data: web, weight: 0.5}
      - {data: books, weight: 0.5}
  mix:
""", 1) + """\
  streamed:
    kind: pretrain
    model: scratch
    data: streams
    train: {max_steps: 3, lr: 3.0e-3, batch_size: 4, max_seq_len: 32, log_every: 1}
"""
    (root / "r.yaml").write_text(recipe)
    (root / "words.jsonl").write_text("")
    (root / "web.jsonl").write_text("".join(json.dumps({"text": f"web page {i} " * 20}) + "\n"
                                            for i in range(40)))
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage("streamed")
    ctx = StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, "streamed"))
    result = pretrain.run(ctx)
    assert result.steps == 3
    assert ("[data] streams: streamed, mixture of 50% web + 50% books (seed 0, "
            "first_exhausted), tokenized and packed on the fly in blocks of 32") in log(ctx)
