"""Nothing on disk is trusted blindly: damaged outputs, checkpoints and caches are found,
named and recovered from, and `--force` reaches the runtime of a launched stage.

Each test damages a workspace the way a flaky machine or a stray process would, then
checks what a user would: the stage re-ran (or resumed), the log names the damaged
file, and the final weights are the ones an undisturbed run writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main

pytestmark = pytest.mark.integration

RECIPE = """\
recipe: 1
name: t
seed: 5
models:
  scratch:
    init: {architecture: llama, size: nano, context_length: 128}
    tokenizer: {train: {data: words, vocab_size: 280}}
datasets:
  words: {path: words.txt, format: text}
  corpus: {builtin: corpus, n: 200, format: text}
  train: {builtin: arithmetic, split: train, n: 32, format: gsm8k}
  test: {builtin: arithmetic, split: test, n: 4, format: gsm8k}
stages:
  pretrain:
    kind: pretrain
    model: scratch
    data: corpus
    train: {max_steps: 12, batch_size: 8, max_seq_len: 48, lr: 3.0e-3, log_every: 2,
            save_every: 4, keep_checkpoints: 3}
  sft:
    kind: sft
    model: pretrain
    data: train
    train: {max_steps: 4, batch_size: 8, max_seq_len: 128, lr: 1.0e-3, log_every: 2}
  eval:
    kind: eval
    models: [sft]
    data: test
    generation: {max_new_tokens: 4}
"""
WORDS = "the quick brown fox jumps over the lazy dog\nsome numbers 12 and 345 add up\n" * 30


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> Path:
    (tmp_path / "t.yaml").write_text(RECIPE)
    (tmp_path / "words.txt").write_text(WORDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, expect: int = 0) -> dict:
    out = StringIO()
    with redirect_stdout(out):
        code = main(["run", "t.yaml", "--json", *args])
    assert code == expect, out.getvalue()
    return {s["name"]: s for s in json.loads(out.getvalue())["stages"]} if code == 0 else {}


def plan_status() -> dict:
    out = StringIO()
    with redirect_stdout(out):
        assert main(["plan", "t.yaml", "--json"]) == 0
    return {s["name"]: s["status"] for s in json.loads(out.getvalue())["stages"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


STAGE = Path("outputs/t/pretrain")
WEIGHTS = STAGE / "model" / "model.safetensors"


def test_a_trained_tokenizer_follows_its_data_file_and_a_damaged_cache_is_rebuilt(
        workdir: Path) -> None:
    run("--only", "pretrain")
    cache = workdir / "outputs" / "t" / ".cache" / "tokenizers"
    first = (workdir / STAGE / "model" / "tokenizer.json").read_text()
    (workdir / "words.txt").write_text("zebra xylophone quartz jinx vexed\n" * 60)
    assert plan_status()["pretrain"]["reason"] == "input changed: scratch"  # the model
    run("--only", "pretrain")
    assert len(list(cache.iterdir())) == 2  # a second entry, not the first one again
    second = (workdir / STAGE / "model" / "tokenizer.json").read_text()
    assert second != first  # trained on the new text

    entry = next(p for p in cache.iterdir() if (p / "tokenizer.json").read_text() == second)
    (entry / "tokenizer.json").write_text((entry / "tokenizer.json").read_text()[:-40])
    run("--only", "pretrain", "--force", "pretrain")
    log = (workdir / STAGE / "train.log").read_text()
    assert f"the cache {entry} is damaged (tokenizer.json has" in log
    assert (entry / "tokenizer.json").read_text() == second  # rebuilt, same content


def test_a_damaged_output_is_found_named_and_rebuilt(workdir: Path) -> None:
    run()
    sft_weights = workdir / "outputs/t/sft/model/model.safetensors"
    original = {p: sha(workdir / p) for p in (WEIGHTS, sft_weights)}

    with sft_weights.open("r+b") as handle:
        handle.truncate(100)
    status = plan_status()["sft"]
    assert status["state"] == "stale"
    assert "outputs/t/sft/model/model.safetensors has 100 bytes" in status["reason"]
    outcomes = run()
    assert outcomes["sft"]["action"] == "resumed"  # from its final checkpoint: no training
    assert "output damaged" in outcomes["sft"]["reason"]
    assert outcomes["eval"]["action"] == "skipped"

    data = bytearray((workdir / WEIGHTS).read_bytes())
    data[-3] ^= 0xFF  # same size: only the sha256 check before consumption can see it
    (workdir / WEIGHTS).write_bytes(bytes(data))
    assert plan_status()["pretrain"]["state"] == "fresh"
    outcomes = run("--force", "sft")
    assert outcomes["pretrain"]["action"] == "resumed"
    assert outcomes["pretrain"]["reason"] == (
        f"output damaged: {WEIGHTS.as_posix()} does not match the sha256 its manifest recorded")
    assert outcomes["sft"]["action"] == "ran"
    assert {p: sha(workdir / p) for p in original} == original


@pytest.mark.parametrize(("name", "damage"), [
    ("model.safetensors", "truncate"), ("optimizer.pt", "truncate"),
    ("trainer_state.json", "garble"),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
        workdir: Path, name: str, damage: str) -> None:
    run("--only", "pretrain")
    reference = sha(workdir / WEIGHTS)
    (workdir / STAGE / "manifest.json").unlink()  # as if killed after the last save
    target = workdir / STAGE / "checkpoints" / "checkpoint-12" / name
    if damage == "truncate":
        with target.open("r+b") as handle:
            handle.truncate(target.stat().st_size // 2)
    else:
        target.write_text(target.read_text().replace("{", "[", 1))
    outcome = run("--only", "pretrain")["pretrain"]
    assert outcome["action"] == "resumed"
    log = (workdir / STAGE / "train.log").read_text()
    assert f"checkpoint checkpoint-12 is damaged: {name}" in log
    assert "resuming from checkpoint-8" in log
    assert sha(workdir / WEIGHTS) == reference
    steps = [r["step"] for r in map(json.loads, (workdir / STAGE / "metrics.jsonl")
                                    .read_text().splitlines()) if r["phase"] == "train"]
    assert steps == [2, 4, 6, 8, 10, 12]  # no duplicate rows from the two attempts


def test_resuming_from_the_final_checkpoint_trains_no_extra_step(workdir: Path) -> None:
    run("--only", "pretrain")
    reference = sha(workdir / WEIGHTS)
    (workdir / STAGE / "manifest.json").unlink()
    (workdir / STAGE / ".model.tmp-999999-1").mkdir()  # a stray temporary from a kill
    outcome = run("--only", "pretrain")["pretrain"]
    assert outcome["action"] == "resumed" and outcome["metrics"]["steps"] == 12
    assert sha(workdir / WEIGHTS) == reference
    assert not (workdir / STAGE / "checkpoints" / "checkpoint-13").exists()
    assert not (workdir / STAGE / ".model.tmp-999999-1").exists()
    manifest = json.loads((workdir / STAGE / "manifest.json").read_text())
    assert manifest["steps"] == 12


def test_force_reaches_the_runtime_of_a_launched_stage(workdir: Path) -> None:
    torchrun = ["--set", "stages.pretrain.compute.launcher=torchrun"]
    assert run("--only", "pretrain", *torchrun)["pretrain"]["action"] == "ran"
    first = json.loads((workdir / STAGE / "manifest.json").read_text())["run_id"]
    again = run("--only", "pretrain", *torchrun, "--force", "pretrain")["pretrain"]
    assert again["action"] == "ran"
    assert json.loads((workdir / STAGE / "manifest.json").read_text())["run_id"] != first
    assert (workdir / STAGE / "train.log").read_text().count("=== pretrain: starting") == 1
    assert run("--only", "pretrain", *torchrun)["pretrain"]["action"] == "skipped"


def test_a_full_disk_mid_save_is_named(workdir: Path) -> None:
    """A real full filesystem: a tmpfs under a user + mount namespace (unshare -rm)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (user and mount namespaces) is not permitted here")
    run("--only", "pretrain", "--set", "stages.pretrain.train.max_steps=1")  # warm caches
    shutil.move(workdir / "outputs/t/.cache", workdir / "cache")
    script = (f"mount -t tmpfs -o size=420k tmpfs {STAGE.parent} && "
              f"cp -r cache {STAGE.parent}/.cache && "
              f"{sys.executable} -m llm_recipe.cli run t.yaml --only pretrain -q")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=300, cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "stage pretrain failed: no space left on" in done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
