"""The continual stage trained for real on a nano GPT-2 (CPU, offline, one thread).

Two phases on two different builtin streams (corpus text, then arithmetic problems as
text), probes on both, replay and KL in phase 1, then an eval stage on ``[base,
continual]``. Evidence for the issue's claims: the patch is the identity at start, only
the patch changes (every base tensor bit-identical), the ledger has the original project's names and
an index that matches its files, a forced regression rolls back to the good snapshot bit
for bit, a ledger entry applied to a fresh base gives the trained model's logits, and a
kill -9 mid-phase resumes to the same numbers without duplicate rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.checkpoints import LATEST, checkpoint_problem
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.log import StageLog, read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

RECIPE = """\
recipe: 1
name: cl
seed: 5
models:
  base:
    init: {architecture: gpt2, size: nano, context_length: 64}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 200, format: text}
  corpus_probe: {builtin: corpus, split: test, n: 16, format: text}
  arith: {builtin: arithmetic, split: train, n: 100, format: text}
  arith_probe: {builtin: arithmetic, split: test, n: 16, format: text}
compute: {launcher: local, gpus_per_node: 0}
stages:
  continual:
    kind: continual
    model: base
    phases:
      - {name: corpus, data: corpus, steps: 12}
      - {name: arith, data: arith, steps: 12}
    patch: {rank: 4, gate_init: -2.0}
    replay_ratio: 0.25
    kl_weight: 0.1
    probes:
      - {name: corpus, data: corpus_probe, every: 4}
      - {name: arith, data: arith_probe, every: 4}
    rollback_threshold: 0.05
    ledger: {good_every: 4}
    train: {lr: 1.0e-2, batch_size: 4, max_seq_len: 32, log_every: 2, save_every: 4}
  eval_corpus:
    kind: eval
    models: [base, continual]
    data: corpus_probe
    metrics: [perplexity]
"""
TRAIN_LINE = re.compile(r"^\[train\] step=\d+ loss=\S+ new=\S+ old=\S+ kl=\S+ gate=\S+ "
                        r"patch=\S+ scale=\S+$")
ENTRY = re.compile(r"^\d{3}_[a-z_]+_(start|commit|(good|rollback)_step\d{9})\.safetensors$")


def project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cl.yaml").write_text(RECIPE)
    return folder


def recipe_run(folder: Path, *args: str) -> dict:
    """`recipe run cl.yaml --json ...` in-process from ``folder``; {stage: outcome}."""
    out = StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(out):
        code = main(["run", "cl.yaml", "--json", *args])
    assert code == 0, out.getvalue()
    return {s["name"]: s for s in json.loads(out.getvalue())["stages"]}


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", f"stages.continual.{pair}")]


def rows(stage_dir: Path, phase: str = "train") -> list[dict]:
    return [r for r in read_metrics(stage_dir) if r.get("phase") == phase]


def check_ledger(stage_dir: Path) -> list[dict]:
    """The index lists exactly the entry files, each once, each named as the seed names
    them; returns the index rows."""
    ledger = stage_dir / "ledger"
    index = [json.loads(line) for line in (ledger / "index.jsonl").read_text().splitlines()]
    files = sorted(p.name for p in ledger.glob("*.safetensors"))
    assert sorted(r["file"] for r in index) == files, "index and files disagree"
    assert len({r["name"] for r in index}) == len(index), "an entry is indexed twice"
    assert all(ENTRY.match(name) for name in files), files
    for row in index:
        assert (ledger / row["file"]).stat().st_size == row["bytes"]
    return index


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe run once through `recipe run`, uninterrupted."""
    folder = project(tmp_path_factory.mktemp("continual"))
    outcome = recipe_run(folder)
    assert [s["action"] for s in outcome.values()] == ["ran", "ran"]
    return folder


def test_logs_ledger_and_output_follow_the_seed(trained: Path) -> None:
    stage_dir = trained / "outputs" / "cl" / "continual"
    log = (stage_dir / "train.log").read_text()
    assert "[invertibility] max_abs_diff=0.000e+00" in log
    assert "=== Phase 0 corpus:" in log and "=== Phase 1 arith:" in log
    lines = [line for line in log.splitlines() if line.startswith("[train] step=")]
    assert lines and all(TRAIN_LINE.match(line) for line in lines), lines[:2]
    train = rows(stage_dir)
    assert [r["step"] for r in train] == list(range(2, 25, 2))
    phase0 = [r for r in train if r["phase_idx"] == 0]
    phase1 = [r for r in train if r["phase_idx"] == 1]
    assert all(r["old"] == 0 and r["kl"] == 0 for r in phase0)  # no earlier data in phase 0
    assert all(r["old"] > 0 for r in phase1) and any(r["kl"] > 0 for r in phase1)
    assert all(0 < r["gate"] < 0.5 and r["patch"] >= 0 for r in train)

    index = check_ledger(stage_dir)
    names = [r["name"] for r in index]
    assert names[0] == "000_corpus_start" and names[-1] == "001_arith_commit"
    assert "000_corpus_commit" in names and "001_arith_start" in names
    assert names.index("000_corpus_commit") < names.index("001_arith_start")
    assert any(n.startswith("000_corpus_good_step0000000") for n in names)
    assert all(set(r["metrics"]) == {"corpus", "arith"} for r in index)
    # patch-only: a few kB for this nano model (2 x (2*4*32 + 32 + 2) floats + header)
    assert all(r["bytes"] < 4096 for r in index)

    patch = stage_dir / "patch"
    config = json.loads((patch / "patch_config.json").read_text())
    assert config["rank"] == 4 and config["layers"] == [0, 1] and config["base"] == "base"
    assert same(tensors(patch / "patch.safetensors"),
                tensors(stage_dir / "ledger" / "001_arith_commit.safetensors"))
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["output"]["type"] == "patch" and manifest["steps"] == 24
    assert manifest["metrics"]["invertibility_max_abs_diff"] == 0.0
    assert manifest["metrics"]["probe/corpus"] == index[-1]["metrics"]["corpus"]

    report = json.loads((trained / "outputs" / "cl" / "eval_corpus" / "report.json").read_text())
    assert set(report["models"]) == {"base", "continual"}
    assert report["models"]["continual"]["perplexity"] != report["models"]["base"]["perplexity"]


def test_only_the_patch_changes_and_the_ledger_round_trips_onto_a_fresh_base(
        tmp_path: Path) -> None:
    """The stage's own functions on a StageContext, to look at the model it trained."""
    import torch

    from llm_recipe.runtime.continual import trainer
    from llm_recipe.runtime.continual.patch import Attachment, PatchSet, base_parameters
    from llm_recipe.runtime.loading import load_input_model, load_named_model
    from llm_recipe.runtime.stages.continual import ContinualConfig

    folder = project(tmp_path)
    plan = compile_recipe(folder / "cl.yaml", cwd=folder)
    stage = plan.stage("continual")
    ctx = StageContext(plan, stage, folder, StageLog(folder / stage.dir, "continual"))
    config = ContinualConfig.from_config(ctx.config)
    run = trainer.prepare(ctx, config)
    before = {n: p.detach().clone() for n, p in base_parameters(run.model).items()}
    assert not any(p.requires_grad for p in before.values())
    start = run.student.tensors()
    while run.progress.phase_idx < len(config.phases):
        trainer.train_phase(run, config.phases[run.progress.phase_idx])
    trainer.write_output(run)
    for name, param in base_parameters(run.model).items():
        assert torch.equal(param, before[name]), f"base tensor {name} changed"
    assert not same(run.student.tensors(), start)  # the patch did train

    ids = torch.tensor(run.probe_blocks[0][:3])
    with torch.no_grad():
        trained_logits = run.model(input_ids=ids).logits
        with run.attachment.use(run.teacher):  # phase 1's teacher: phase 0's commit
            teacher_logits = run.model(input_ids=ids).logits
    ledger = folder / stage.dir / "ledger"
    for entry, expected in (("001_arith_commit", trained_logits),
                            ("000_corpus_commit", teacher_logits)):
        fresh, _ = load_named_model(ctx, "base")
        patches = PatchSet(run.student.config)
        patches.load_tensors(tensors(ledger / f"{entry}.safetensors"))
        Attachment(fresh.eval(), patches)
        with torch.no_grad():
            assert torch.equal(fresh(input_ids=ids).logits, expected), entry
    # what an eval stage loads for the patch input: the output folder on a fresh base
    eval_stage = plan.stage("eval_corpus")
    eval_ctx = StageContext(plan, eval_stage, folder, StageLog(folder / eval_stage.dir, "e"))
    model, _ = load_input_model(eval_ctx, eval_ctx.input("models.1"), trainable=False)
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, trained_logits)


def test_a_forced_regression_rolls_back_to_the_good_snapshot_bit_for_bit(
        tmp_path: Path) -> None:
    folder = project(tmp_path)
    lr = 3.0
    recipe_run(folder, "--only", "continual", *sets(
        "rollback_threshold=1.0e-9", f"train.lr={lr}", "train.lr_scheduler=constant",
        "probes.0.every=2", "probes.1.every=2"))
    stage_dir = folder / "outputs" / "cl" / "continual"
    index = check_ledger(stage_dir)
    rollbacks = [r for r in index if r["type"] == "rollback"]
    assert rollbacks, "no rollback: the regression was not detected"
    ledger = stage_dir / "ledger"
    for row in rollbacks:
        restored = row["info"]["restored"]
        earlier = [r for r in index[:index.index(row)]
                   if r["phase_idx"] == row["phase_idx"] and r["type"] in ("start", "good")]
        assert restored == earlier[-1]["name"]  # the last good snapshot (or the start)
        assert same(tensors(ledger / row["file"]), tensors(ledger / f"{restored}.safetensors"))
        assert row["metrics"] == earlier[-1]["metrics"]
        assert any(v > row["metrics"][k] for k, v in row["info"]["regressed"].items())
    log = (stage_dir / "train.log").read_text()
    assert log.count("[rollback] step=") == len(rollbacks)
    # the response: the learning rate halves with each rollback, for the rest of the phase
    for phase in (0, 1):
        train = [r for r in rows(stage_dir) if r["phase_idx"] == phase]
        for row in train:  # a row's lr is its step's: rollbacks at earlier steps count
            done = [r for r in rollbacks if r["phase_idx"] == phase and r["step"] < row["step"]]
            assert row["lr"] == pytest.approx(lr * 0.5 ** len(done))
    verdicts = [r["verdict"] for r in rows(stage_dir, "probe")]
    assert verdicts.count("rollback") == len(rollbacks)


def test_kill_9_mid_phase_resumes_to_the_same_patch(tmp_path: Path) -> None:
    longer = sets("phases.0.steps=60", "phases.1.steps=60", "train.save_every=5",
                  "probes.0.every=15", "probes.1.every=15", "ledger.good_every=15")
    reference = project(tmp_path / "reference")
    recipe_run(reference, "--only", "continual", *longer)

    folder = project(tmp_path / "killed")
    stage_dir = folder / "outputs" / "cl" / "continual"
    latest = stage_dir / "checkpoints" / LATEST
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", "run", "cl.yaml", "-q",
                             "--only", "continual", *longer], cwd=folder, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if latest.exists() and json.loads(latest.read_text())["step"] >= 70:
                break
            assert proc.poll() is None, "the stage ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 70 <= killed_at < 120 and not (stage_dir / "manifest.json").exists()
    checkpoint = stage_dir / "checkpoints" / f"checkpoint-{killed_at}"
    assert checkpoint_problem(checkpoint) is None
    import torch

    for name in ("optimizer.pt", "rng_state.pth"):  # no pickled objects
        torch.load(checkpoint / name, weights_only=True)

    resumed = recipe_run(folder, "--only", "continual", *longer)
    assert resumed["continual"]["action"] == "resumed"
    log = (stage_dir / "train.log").read_text()
    assert log.count("=== continual: ") >= 3  # two run headers and the completion line
    assert log.count("[invertibility] max_abs_diff=0.000e+00") == 2
    after = log.split(f"resuming from checkpoint-{killed_at}")[1]
    assert "=== Phase 1 arith (resuming at step" in after
    assert int(after.split("[train] step=")[1].split()[0]) == (killed_at // 2 + 1) * 2

    train = rows(stage_dir)
    assert [r["step"] for r in train] == list(range(2, 121, 2)), "duplicate or missing rows"
    probes = [r["step"] for r in rows(stage_dir, "probe")]
    assert len(probes) == len(set(probes)), "a probe row was written twice"
    index = check_ledger(stage_dir)
    assert [r["name"] for r in index] == [r["name"] for r in check_ledger(
        reference / "outputs" / "cl" / "continual")]
    # the same batches, optimizer and patch as the uninterrupted run
    for mine, theirs in zip(train, rows(reference / "outputs" / "cl" / "continual"),
                            strict=True):
        for key in ("loss", "new", "old", "kl", "gate", "patch", "scale", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), (
                mine["step"], key)
    ours = tensors(stage_dir / "patch" / "patch.safetensors")
    theirs = tensors(reference / "outputs" / "cl" / "continual" / "patch" / "patch.safetensors")
    # bit for bit: eval mode (no dropout), batches a function of the step, optimizer restored
    assert same(ours, theirs)


def test_naive_fine_tuning_is_a_recipe_setting(tmp_path: Path) -> None:
    """The baseline of the issue's experiment: no replay, no KL, no regularisers, the gate
    forced on and no rollback, through recipe keys only."""
    folder = project(tmp_path)
    recipe_run(folder, "--only", "continual", *sets(
        "replay_ratio=0", "kl_weight=0", "regularizers={gate: 0, patch: 0, scale: 0}",
        "patch.gate_init=10", "rollback_threshold=1.0e9"))
    stage_dir = folder / "outputs" / "cl" / "continual"
    train = rows(stage_dir)
    assert all(r["old"] == 0 and r["kl"] == 0 for r in train)
    assert all(r["gate"] > 0.999 for r in train)
    assert all(r["loss"] == pytest.approx(r["new"], rel=1e-6) for r in train)
    assert not [r for r in check_ledger(stage_dir) if r["type"] == "rollback"]
    assert "batch 4 (0 replayed), kl_weight 0 to 000_corpus_commit" in (
        stage_dir / "train.log").read_text()
