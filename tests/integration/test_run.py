"""`recipe run` end to end on a tiny recipe: caching, exact re-runs, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN, TINY_SFT, tiny_recipe
from llm_recipe.cli import main

pytestmark = pytest.mark.integration

RECIPE = tiny_recipe(TINY_PRETRAIN + ", save_every: 4", TINY_SFT + ", save_every: 4")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> dict:
    """`recipe run tiny.yaml --json ...` in-process; returns {stage: outcome}."""
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        code = main(["run", "tiny.yaml", "--json", *args])
    assert code == 0, out.getvalue()
    return {s["name"]: s for s in json.loads(out.getvalue())["stages"]}


def losses(stage_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and r.get("phase") == "train"]


def test_run_then_cached_rerun_then_one_change(workdir: Path) -> None:
    first = run()
    assert [s["action"] for s in first.values()] == ["ran", "ran", "ran"]
    stage_dir = workdir / "outputs" / "tiny" / "sft"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 8
    assert manifest["output"]["sha256"] and manifest["versions"]["torch"]
    assert json.loads((stage_dir / "stage.json").read_text())["config"]["train"]["lr"] == 1e-3
    assert (stage_dir / "model" / "model.safetensors").exists()
    assert (stage_dir / "checkpoints" / "latest").exists()
    assert (stage_dir / "checkpoints" / "best").exists()  # no validation: the last one
    assert "[train] step=" in (stage_dir / "train.log").read_text()
    # what the stage used, beside what the plan estimated (CPU: the process's peak RSS)
    used = manifest["usage"]
    assert used["memory"]["device"] == "cpu" and 0.1 < used["memory"]["peak_gb"] < 8
    assert used["memory"]["estimate_gb"] > 0
    assert used["compute"]["flops_per_token"] > 0 and used["compute"]["tflops_per_s"] > 0
    assert used["compute"]["mfu"] is None  # no GPU
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tflop/s"] > 0 for r in rows if r.get("phase") == "train")
    assert "peak memory" in (stage_dir / "train.log").read_text()
    assert first["sft"]["usage"]["memory"]["peak_gb"] == used["memory"]["peak_gb"]
    report = json.loads((workdir / "outputs" / "tiny" / "eval" / "report.json").read_text())
    assert set(report["models"]) == {"pretrain", "sft"}

    again = run()
    assert [s["action"] for s in again.values()] == ["skipped"] * 3

    leftover = stage_dir / "model" / "from_the_old_config.txt"  # e.g. a file it no longer writes
    leftover.write_text("old")
    changed = run("--set", "stages.sft.train.lr=5e-4")
    assert {n: s["action"] for n, s in changed.items()} == {
        "pretrain": "skipped", "sft": "ran", "eval": "ran"}
    assert not leftover.exists()  # the re-run removed the old output before writing
    assert (stage_dir / "model" / "model.safetensors").exists()


def test_cached_rerun_does_not_import_torch(workdir: Path) -> None:
    run()
    code = ("import sys; from llm_recipe.cli import main; rc = main(['run', 'tiny.yaml', '-q']);"
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=workdir)


def test_same_seed_same_losses(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run("--only", "pretrain")
    other = tmp_path_factory.mktemp("again")
    (other / "tiny.yaml").write_text(RECIPE)
    subprocess.run([sys.executable, "-m", "llm_recipe", "run", "tiny.yaml", "--only", "pretrain",
                    "-q"], check=True, cwd=other)
    a = losses(workdir / "outputs" / "tiny" / "pretrain")
    b = losses(other / "outputs" / "tiny" / "pretrain")
    assert a and a == b


def test_kill_9_mid_training_resumes_from_the_last_checkpoint(workdir: Path) -> None:
    slow = "--set", "stages.pretrain.train.max_steps=400"
    every = "--set", "stages.pretrain.train.save_every=5"
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", "run", "tiny.yaml", "--only",
                             "pretrain", "-q", *slow, *every], cwd=workdir,
                            start_new_session=True)
    latest = workdir / "outputs" / "tiny" / "pretrain" / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 10:
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    stage_dir = workdir / "outputs" / "tiny" / "pretrain"
    assert not (stage_dir / "manifest.json").exists()

    from llm_recipe.compiler import compile_recipe

    plan = compile_recipe("tiny.yaml", overrides=[slow[1], every[1]])
    assert plan.stage("pretrain").status["state"] == "partial"

    resumed = run("--only", "pretrain", *slow, *every)
    assert resumed["pretrain"]["action"] == "resumed"
    log = (stage_dir / "train.log").read_text()
    assert f"resuming from checkpoint-{killed_at}" in log
    after = log.split(f"resuming from checkpoint-{killed_at}")[1]
    first_step = int(after.split("[train] step=")[1].split()[0])
    assert first_step > killed_at
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["steps"] == 400 and manifest["resumed_from"] == f"checkpoint-{killed_at}"
    rows = [json.loads(x) for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["phase"] == "train"]
    assert steps == sorted(set(steps)), "the rows logged after the checkpoint, twice"


def test_a_live_lock_stops_a_second_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    stage_dir = workdir / "outputs" / "tiny" / "pretrain"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from llm_recipe.runtime.locks import StageLock; "
         "StageLock(Path(sys.argv[1])).acquire(); print('ready', flush=True); time.sleep(60)",
         str(stage_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        (lease,) = (stage_dir / ".locks").glob("*.lease")
        started = json.loads(lease.read_text())["started"]
        assert main(["run", "tiny.yaml", "--only", "pretrain", "-q"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on {os.uname().nodename}, since {started}" in err
    finally:
        holder.kill()
        holder.wait()


def test_runtime_entry_point_runs_one_stage_of_a_written_plan(workdir: Path) -> None:
    run("--only", "pretrain")
    plan_file = workdir / "outputs" / "tiny" / "plan.json"
    assert plan_file.exists()
    result = subprocess.run([sys.executable, "-m", "llm_recipe.runtime", str(plan_file), "sft"],
                            cwd=workdir, capture_output=True, text=True, check=True)
    assert "sft: ran" in result.stdout
    assert (workdir / "outputs" / "tiny" / "sft" / "manifest.json").exists()
    again = subprocess.run([sys.executable, "-m", "llm_recipe.runtime", str(plan_file), "sft"],
                           cwd=workdir, capture_output=True, text=True, check=True)
    assert "fresh, skipped" in again.stdout


def test_scope_flags_dry_run_force_and_from(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "tiny.yaml", "--only", "sft", "-q"]) == 2
    assert "needs pretrain, which is missing" in capsys.readouterr().err

    planned = run("--dry-run")
    assert [s["action"] for s in planned.values()] == ["would run"] * 3
    assert not (workdir / "outputs" / "tiny" / "pretrain").exists()

    run()
    forced = run("--force", "sft")
    assert {n: s["action"] for n, s in forced.items()} == {
        "pretrain": "skipped", "sft": "ran", "eval": "skipped"}
    onward = run("--from", "sft", "--force-all")
    assert list(onward) == ["sft", "eval"]
    assert all(s["action"] == "ran" for s in onward.values())


def test_progress_lines_when_stderr_is_a_file(workdir: Path) -> None:
    """nohup, CI, `2> run.log`: one plain line per log step, not nothing until the end."""
    with open(workdir / "err.log", "w") as err:
        done = subprocess.run([sys.executable, "-m", "llm_recipe", "run", "tiny.yaml", "--only",
                               "pretrain"], cwd=workdir, stdout=subprocess.PIPE, stderr=err,
                              text=True, timeout=600)
    assert done.returncode == 0
    lines = (workdir / "err.log").read_text().splitlines()
    steps = [line for line in lines if line.startswith("pretrain: step ")]
    assert [line.split()[2] for line in steps] == [f"{n}/12" for n in range(2, 13, 2)]
    assert all(" · loss " in line and " · tok_s " in line for line in steps)
    assert not any("FutureWarning" in line for line in lines)
    assert list(workdir.glob("**/checkpoints/checkpoint-*"))
    assert not list(workdir.glob("**/checkpoints/README.md"))  # trl's model card
