"""Data at scale inside real stages (CPU, offline, nano llama): the tokenized cache, the
validation split, streaming with exact resume, and streamed continual phases."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime import builtin, training
from llm_recipe.runtime.checkpoints import LATEST, read_pointer
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import stream
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.stages import pretrain

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

TRAIN = "lr: 3.0e-3, batch_size: 4, log_every: 1"
RECIPE = f"""\
recipe: 1
name: dp
seed: 3
models:
  scratch:
    init: {{architecture: llama, size: nano, context_length: 64}}
    tokenizer:
      train: {{data: corpus, vocab_size: 300}}
datasets:
  corpus: {{builtin: corpus, format: text, n: 200}}
  web: {{path: web.jsonl, format: text, streaming: true}}
  big: {{builtin: corpus, format: text, n: 2500, seed: 2}}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 2, max_seq_len: 32, {TRAIN}}}
  again:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 3, max_seq_len: 32, {TRAIN}, lr_scheduler: cosine}}
  longer:
    kind: pretrain
    model: scratch
    data: corpus
    train: {{max_steps: 2, max_seq_len: 48, {TRAIN}}}
  split:
    kind: pretrain
    model: scratch
    data: corpus
    validation_split: {{size: 0.1}}
    train: {{max_steps: 4, max_seq_len: 32, eval_every: 2, {TRAIN}}}
  stream:
    kind: pretrain
    model: scratch
    data: web
    train: {{max_steps: 8, max_seq_len: 32, save_every: 2, {TRAIN}}}
  workers:
    kind: pretrain
    model: scratch
    data: big
    compute: {{data_workers: 2}}
    train: {{max_steps: 1, max_seq_len: 32, {TRAIN}}}
  continual:
    kind: continual
    model: scratch
    phases:
      - {{name: first, data: corpus, steps: 2}}
      - {{name: web, data: web, steps: 3}}
    train: {{max_seq_len: 32, batch_size: 4, grad_accum: 2}}
"""


def context(root: Path, name: str, resume_from: Path | None = None) -> StageContext:
    root.mkdir(parents=True, exist_ok=True)
    (root / "r.yaml").write_text(RECIPE)
    if not (root / "web.jsonl").exists():
        rows = builtin.corpus(n=120, seed=1)
        (root / "web.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = compile_recipe(root / "r.yaml", cwd=root)
    stage = plan.stage(name)
    return StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, name),
                        resume_from=resume_from)


def data_lines(ctx: StageContext) -> list[str]:
    return [line for line in (ctx.dir / "train.log").read_text().splitlines()
            if line.startswith("[data] tokenized")]


def ids_of(dataset) -> list[list[int]]:
    return [list(x) for x in dataset["input_ids"]]


def test_tokenized_cache_is_reused_by_reruns_and_other_stages(tmp_path):
    ctx = context(tmp_path, "pretrain")
    trainer, tokenizer = pretrain.build_trainer(ctx)
    (built,) = data_lines(ctx)
    assert built.startswith("[data] tokenized 200 rows into ") and "blocks of 32" in built
    assert "built in" in built
    cache_id = built.split("(cache ")[1][:8]
    # identical to the in-memory reference
    reference = pretrain.sequences(ctx.rows("data"), tokenizer, pretrain.PretrainConfig(True, 32))
    assert ids_of(trainer.train_dataset) == reference
    pretrain.run(ctx)  # the stage, then a forced re-run of it
    pretrain.run(context(tmp_path, "pretrain"))
    assert data_lines(ctx)[-1] == built.split(" (cache")[0] + f" (cache {cache_id}: reused)"

    other = context(tmp_path, "again")  # another stage, same data, tokenizer and length
    pretrain.build_trainer(other)
    assert data_lines(other)[-1].endswith(f"(cache {cache_id}: reused)")
    longer = context(tmp_path, "longer")  # another length: another entry
    pretrain.build_trainer(longer)
    assert "blocks of 48" in data_lines(longer)[-1] and "built in" in data_lines(longer)[-1]

    entry = next((ctx.path(ctx.plan.workspace) / ".cache" / "tokenized").glob(
        f"pretrain-{cache_id}*"))
    (entry / "data.arrow").write_bytes(b"damaged")
    trainer, _ = pretrain.build_trainer(context(tmp_path, "again"))
    lines = (other.dir / "train.log").read_text().splitlines()
    assert any("is damaged (data.arrow has 7 bytes" in line for line in lines)
    assert "built in" in data_lines(other)[-1]
    assert ids_of(trainer.train_dataset) == reference


def test_worker_processes_build_the_same_blocks(tmp_path, monkeypatch):
    from llm_recipe.runtime.data import tokenize

    monkeypatch.setattr(tokenize, "PARALLEL_ROWS", 2000)
    ctx = context(tmp_path, "workers")
    assert ctx.compute["data_workers"] == 2
    trainer, tokenizer = pretrain.build_trainer(ctx)  # 3 map batches over 2 spawned workers
    reference = pretrain.sequences(ctx.rows("data"), tokenizer, pretrain.PretrainConfig(True, 32))
    assert ids_of(trainer.train_dataset) == reference
    entry = ctx.path(ctx.plan.workspace) / ".cache" / "tokenized"
    # the workers' intermediate files are not part of the entry
    assert sorted(p.name for p in next(entry.iterdir()).iterdir()) == ["cache.json", "data.arrow"]


def test_validation_split_trains_and_evaluates_on_disjoint_rows(tmp_path):
    ctx = context(tmp_path, "split")
    result = pretrain.run(ctx)
    assert result.steps == 4 and result.metrics["eval_loss"] > 0
    assert [r["step"] for r in read_metrics(ctx.dir) if r["phase"] == "eval"] == [2, 4]
    log = (ctx.dir / "train.log").read_text()
    assert "[data] validation split: 20 of 200 rows held out (10% of corpus (seed 3))" in log
    train_rows, held_rows = ctx.rows("data"), ctx.rows("validation")
    assert len(train_rows) == 180 and len(held_rows) == 20
    everything = ctx.rows("data") + ctx.rows("validation")
    assert sorted(json.dumps(r) for r in everything) == sorted(
        json.dumps(r) for r in context(tmp_path, "pretrain").rows("data"))


def test_stream_resumes_with_the_rows_an_uninterrupted_run_would_have_seen(tmp_path,
                                                                        monkeypatch):
    """Small stream batches put the checkpoint in the middle of a batch of documents."""
    monkeypatch.setattr(stream, "STREAM_BATCH", 6)

    def run(ctx: StageContext, kill_at: int | None = None) -> list[list[list[int]]]:
        from transformers import TrainerCallback

        seen: list[list[list[int]]] = []

        class Killed(Exception):
            pass

        class Kill(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == kill_at:
                    raise Killed

        real = training.callbacks
        monkeypatch.setattr(training, "callbacks", lambda c: [*real(c), Kill()])
        trainer, tokenizer = pretrain.build_trainer(ctx)
        monkeypatch.setattr(training, "callbacks", real)
        compute_loss = trainer.compute_loss

        def recording(model, inputs, *args, **kwargs):
            seen.append(inputs["input_ids"].tolist())
            return compute_loss(model, inputs, *args, **kwargs)

        trainer.compute_loss = recording
        with contextlib.suppress(Killed):
            training.fit_and_save(ctx, trainer, tokenizer)
        return seen

    whole = run(context(tmp_path / "whole", "stream"))
    assert len(whole) == 8
    assert "streamed, tokenized and packed on the fly" in (
        tmp_path / "whole" / "outputs/dp/stream/train.log").read_text()

    cut = context(tmp_path / "cut", "stream")
    before = run(cut, kill_at=4)
    assert before == whole[:4]
    latest = read_pointer(cut.checkpoints, LATEST)
    assert latest is not None and latest.name == "checkpoint-4"
    state = json.loads((latest / stream.STATE_FILE).read_text())
    assert state["consumed"] == 16 and state["source"] is not None
    after = run(context(tmp_path / "cut", "stream", resume_from=latest))
    assert after == whole[4:]  # the next rows are the ones the uninterrupted run trained on
    losses = {r["step"]: r["loss"] for r in read_metrics(cut.dir) if r["phase"] == "train"}
    expected = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole/outputs/dp/stream")
                if r["phase"] == "train"}
    assert losses == pytest.approx(expected, rel=1e-5)


def test_a_stream_restarts_at_its_end_and_resumes_from_a_count(tmp_path):
    rows = [{"input_ids": [i]} for i in range(5)]

    class Fake:
        def __init__(self) -> None:
            self.position = 0

        def __iter__(self):
            for row in rows[self.position:]:
                self.position += 1
                yield row

        def state_dict(self):
            return {"position": self.position}

        def load_state_dict(self, state):
            self.position = state["position"]

    def take(blocks, n):
        out = []
        for example in blocks:
            out.append(example["input_ids"][0])
            if len(out) == n:
                return out
        return out

    blocks = stream.ResumableStream(Fake, "fake", window=4)
    assert take(blocks, 12) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # endless passes
    state = blocks.state_at(12)  # after 12 blocks: the last was row 1 of pass 2
    assert state["pass"] == 2 and state["source"] == {"position": 2}
    resumed = stream.ResumableStream(Fake, "fake", state=state)
    assert take(resumed, 3) == [2, 3, 4]
    lost = blocks.state_at(3)  # out of the window: the count alone, skipped forward
    assert lost["source"] is None
    assert take(stream.ResumableStream(Fake, "fake", state=lost), 4) == [3, 4, 0, 1]


def test_a_streamed_continual_phase_reads_only_the_blocks_it_trains_on(tmp_path):
    from llm_recipe.runtime.continual import trainer
    from llm_recipe.runtime.stages.continual import ContinualConfig

    ctx = context(tmp_path, "continual")
    config = ContinualConfig.from_config(ctx.config)
    _, tokenizer = ctx.load_model(ctx.input("model"))
    phase = config.phases[1]
    blocks = trainer._blocks(ctx, "phases.1.data", "phase 1", tokenizer, config, phase=phase)
    # 3 steps x 2 micro-batches x 3 new rows (1 of 4 replayed from phase 0)
    assert len(blocks) == 18 and {len(b) for b in blocks} == {32}
    again = trainer._blocks(ctx, "phases.1.data", "phase 1", tokenizer, config, phase=phase)
    assert again == blocks
    lines = (ctx.dir / "train.log").read_text().splitlines()
    assert any("streamed the first 18 blocks of 32 of web" in line and "built" in line
               for line in lines)
    assert lines[-1].endswith("reused)")
    result = trainer.train(ctx, config)
    assert result.steps == 5
