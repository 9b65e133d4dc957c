"""``recipe status`` and ``recipe logs`` on workspaces laid out by hand: no torch, no run.

Each state the runtime can leave is written as the runtime writes it (manifest.json,
stage.json, checkpoints/latest, metrics.jsonl, train.log, lock leases), and the commands
must read it back without importing torch or changing a byte of the workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_recipe
from llm_recipe import cli
from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.plan_types import StagePlan
from llm_recipe.runtime.locks import LOCK_DIR, boot_id

RECIPE = tiny_recipe(max_new_tokens=None)  # an eval with default generation
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run(capsys: pytest.CaptureFixture):
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def stage(root: Path, name: str, *sets: str) -> StagePlan:
    return compile_recipe(root / "tiny.yaml", overrides=list(sets), cwd=root).stage(name)


def write_rows(directory: Path, rows: list[dict[str, Any]], name: str = "metrics.jsonl") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / name).open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def started(root: Path, st: StagePlan) -> Path:
    """What a run leaves when it starts: stage.json with its fingerprint, a log header."""
    directory = root / st.dir
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stage.json").write_text(json.dumps({"name": st.name,
                                                      "fingerprint": st.fingerprint}))
    with (directory / "train.log").open("a") as handle:
        handle.write(f"=== {st.name}: starting (2026-01-01T00:00:00+00:00)\n")
    return directory


def complete(root: Path, st: StagePlan, metrics: dict[str, Any], *, key: str | None = None,
             wall: float = 12.5, steps: int | None = None,
             gate: dict[str, Any] | None = None) -> Path:
    """A completed stage as the runtime leaves it: output files, then the manifest."""
    directory = started(root, st)
    output = root / st.output.path
    output.parent.mkdir(parents=True, exist_ok=True)
    if st.output.type == "report":
        output.write_text(json.dumps({"models": {}}))
        files = {output.name: output}
    else:
        output.mkdir(exist_ok=True)
        (output / "model.safetensors").write_bytes(b"\0" * 1000)
        files = {f"{output.name}/model.safetensors": output / "model.safetensors"}
    table = {name: {"size": p.stat().st_size,
                    "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for name, p in files.items()}
    manifest = {
        "status": "complete", "fingerprint": st.fingerprint, "config": st.config,
        "inputs": [{"field": i.field, "fingerprint": i.fingerprint} for i in st.inputs],
        "output": {"type": st.output.type, "path": st.output.path, "files": table},
        "metrics": metrics, "key_metric": key or next(iter(metrics), None), "steps": steps,
        "timings": {"started": "2026-01-01T00:00:00+00:00",
                    "finished": "2026-01-01T00:00:12+00:00", "wall_s": wall},
    }
    if gate is not None:
        manifest["gate"] = gate
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with (directory / "train.log").open("a") as handle:
        handle.write(f"=== {st.name}: complete in {wall}s\n")
    return directory


def lease(directory: Path, *, boot: str, host: str = "node-7", pid: int = 4242) -> Path:
    """A lease nobody here holds a flock on: live by heartbeat when from another kernel,
    dead when from this one (its holder is gone)."""
    folder = directory / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}-abc.lease"
    path.write_text(json.dumps({"pid": pid, "host": host, "boot_id": boot, "flock": True,
                                "started": "2026-01-01T00:00:00+00:00", "lease_s": 120.0}))
    return path


def states(run, *args: str) -> dict[str, dict[str, Any]]:
    code, out, err = run("status", "tiny.yaml", "--json", *args)
    assert (code, err) == (0, ""), err
    return {s["name"]: s for s in json.loads(out)["stages"]}


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its mode, size and mtime (ns)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


# -- recipe status -------------------------------------------------------------------------


def test_status_of_a_workspace_nothing_ran_in(ws: Path, run) -> None:
    found = states(run)
    assert {n: (s["state"], s["reason"]) for n, s in found.items()} == {
        "pretrain": ("missing", None),
        "sft": ("blocked", "waits for pretrain"),
        "eval": ("blocked", "waits for pretrain, sft"),
    }
    assert found["sft"]["max_steps"] == 8 and found["sft"]["trains"] is True
    assert found["eval"]["trains"] is False
    assert not (ws / "outputs").exists()  # looking created nothing

    code, out, _ = run("status", "tiny.yaml")
    assert code == 0
    assert "pretrain  pretrain  missing" in out and "blocked (waits for pretrain)" in out
    assert "1 missing, 2 blocked" in out


def test_status_fresh_partial_and_stale(ws: Path, run) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": 0.8066, "steps": 12}, steps=12, wall=75.0)
    sft = stage(ws, "sft")
    directory = started(ws, sft)
    write_rows(directory, [{"step": 2, "phase": "train", "loss": 1.5, "time": 1.0},
                           {"step": 4, "phase": "train", "loss": 1.1, "time": 2.0}])
    (directory / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (directory / "checkpoints" / "latest").write_text(
        json.dumps({"checkpoint": "checkpoint-4", "step": 4}))

    found = states(run)
    assert found["pretrain"]["state"] == "fresh"
    assert found["pretrain"]["metrics"] == {"loss": 0.8066, "steps": 12}
    assert found["pretrain"]["wall_s"] == 75.0 and found["pretrain"]["step"] == 12
    assert found["pretrain"]["output_bytes"] == 1000
    assert found["pretrain"]["log"] == "outputs/tiny/pretrain/train.log"
    assert (found["sft"]["state"], found["sft"]["reason"]) == ("partial",
                                                                "resumable from step 4")
    assert found["sft"]["step"] == 4 and found["sft"]["metrics"] == {"loss": 1.1}
    assert found["eval"]["state"] == "blocked"

    code, out, _ = run("status", "tiny.yaml")
    assert code == 0
    assert "fresh" in out and "1m15s" in out and "loss 0.8066" in out
    assert "partial (resumable from step 4)" in out and "4/8" in out

    changed = states(run, "--set", "stages.pretrain.train.lr=1e-3")
    assert changed["pretrain"]["state"] == "stale"
    assert changed["pretrain"]["reason"] == "config changed: train.lr"
    assert changed["sft"]["state"] == "blocked"  # its checkpoint is of the old upstream


def test_status_names_a_damaged_output(ws: Path, run) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    (ws / "outputs/tiny/pretrain/model/model.safetensors").write_bytes(b"\0" * 10)
    found = states(run)["pretrain"]
    assert found["state"] == "stale"
    assert found["reason"] == ("output damaged: outputs/tiny/pretrain/model/model.safetensors "
                               "has 10 bytes; its manifest recorded 1000")


def test_status_shows_who_is_running_a_stage(ws: Path, run) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    directory = started(ws, stage(ws, "sft"))
    write_rows(directory, [{"step": 6, "phase": "train", "loss": 0.9, "time": 3.0},
                           {"step": 6, "phase": "eval", "loss": 1.2, "time": 3.1}])
    lease(directory, boot="another-kernel", host="node-7", pid=4242)  # heartbeat: fresh

    found = states(run)["sft"]
    assert found["state"] == "running"
    assert found["holder"]["pid"] == 4242 and found["holder"]["host"] == "node-7"
    assert found["reason"].startswith("pid 4242 on node-7 since 2026-01-01")
    assert found["step"] == 6 and found["metrics"] == {"loss": 0.9}  # the train row
    assert found["wall_s"] > 0

    code, out, _ = run("status", "tiny.yaml")
    assert code == 0 and "running (pid 4242 on node-7" in out and "6/8" in out
    assert "follow sft: recipe logs tiny.yaml sft -f" in out


def test_status_says_when_the_running_run_is_of_another_config(ws: Path, run) -> None:
    other = stage(ws, "pretrain", "stages.pretrain.train.lr=1e-3")
    directory = started(ws, other)  # its stage.json records the other fingerprint
    write_rows(directory, [{"step": 2, "phase": "train", "loss": 5.0}])
    lease(directory, boot="another-kernel")
    found = states(run)["pretrain"]
    assert found["state"] == "running" and found["other_run"] == other.fingerprint
    assert found["reason"].endswith(f"; a run of another config ({other.fingerprint[:12]})")
    assert found["metrics"] == {} and found["step"] is None  # its numbers are not ours


def test_status_running_in_a_live_process_of_this_machine(ws: Path, run) -> None:
    directory = started(ws, stage(ws, "pretrain"))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from pathlib import Path
            from llm_recipe.runtime.locks import StageLock
            StageLock(Path(sys.argv[1])).acquire()
            print("ready", flush=True)
            time.sleep(60)
        """), str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        found = states(run)["pretrain"]
        assert found["state"] == "running" and found["holder"]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (its flock with it): no longer running, and its lease stays.
    assert states(run)["pretrain"]["state"] == "missing"
    assert list((directory / LOCK_DIR).iterdir())


def test_status_a_failed_gate(ws: Path, run) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    complete(ws, stage(ws, "sft"), {"loss": 0.1})
    gate = {"passed": False, "metric": "sft/gsm8k_accuracy", "value": 0.25, "threshold": 0.4}
    complete(ws, stage(ws, "eval"), {"sft/gsm8k_accuracy": 0.25}, gate=gate)
    found = states(run)["eval"]
    assert found["state"] == "gate_failed" and found["gate"] == gate
    assert found["reason"] == "sft/gsm8k_accuracy 0.25, threshold 0.4"
    _, out, _ = run("status", "tiny.yaml")
    assert "gate failed (sft/gsm8k_accuracy 0.25, threshold 0.4)" in out
    assert "2 fresh, 1 gate failed" in out

    # The runtime's record says it in words; that is what status shows.
    gate["message"] = "sft/gsm8k_accuracy = 0.25, needs >= 0.4"
    complete(ws, stage(ws, "eval"), {"sft/gsm8k_accuracy": 0.25}, gate=gate)
    assert states(run)["eval"]["reason"] == "sft/gsm8k_accuracy = 0.25, needs >= 0.4"

    gate["passed"] = True
    complete(ws, stage(ws, "eval"), {"sft/gsm8k_accuracy": 0.5}, gate=gate)
    assert states(run)["eval"]["state"] == "fresh"


def test_status_says_when_the_last_run_failed(ws: Path, run) -> None:
    directory = started(ws, stage(ws, "pretrain"))
    with (directory / "train.log").open("a") as handle:
        handle.write("Traceback (most recent call last):\n  ...\nValueError: boom\n")
    found = states(run)["pretrain"]
    assert found["state"] == "missing"
    assert found["reason"] == "its last run failed (see train.log)"


def test_status_json_is_strict_json(ws: Path, run) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": float("nan")})
    code, out, _ = run("status", "tiny.yaml", "--json")
    assert code == 0 and "NaN" not in out
    assert json.loads(out)["stages"][0]["metrics"] == {"loss": None}


def test_status_and_logs_change_nothing_in_the_workspace(ws: Path, run) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    sft = started(ws, stage(ws, "sft"))
    write_rows(sft, [{"step": 2, "phase": "train", "loss": 1.0}])
    lease(sft, boot=boot_id(), pid=999_999)  # a dead holder's lease: judged, not removed
    lease(ws / "outputs/tiny/pretrain", boot="another-kernel")  # a live remote one
    before = snapshot(ws)
    for argv in (["status", "tiny.yaml"], ["status", "tiny.yaml", "--json"],
                 ["logs", "tiny.yaml", "pretrain"], ["logs", "tiny.yaml", "sft", "-n", "1"]):
        assert run(*argv)[0] == 0
    assert snapshot(ws) == before


def test_status_and_logs_import_no_training_library(ws: Path) -> None:
    complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    script = textwrap.dedent(f"""
        import json, sys
        from llm_recipe.cli import main
        assert main(["status", "tiny.yaml"]) == 0
        assert main(["status", "tiny.yaml", "--json"]) == 0
        assert main(["logs", "tiny.yaml", "pretrain"]) == 0
        assert main(["logs", "tiny.yaml", "pretrain", "-f"]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps(heavy))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ws, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_status_of_a_bad_recipe_is_a_recipe_error(ws: Path, run) -> None:
    (ws / "tiny.yaml").write_text(RECIPE.replace("lr: 1.0e-3", "lr: fast"))
    code, out, err = run("status", "tiny.yaml")
    assert (code, out) == (2, "") and "stages.sft.train.lr" in err


# -- recipe logs ---------------------------------------------------------------------------


def test_logs_prints_the_stage_log(ws: Path, run) -> None:
    directory = complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    log = (directory / "train.log").read_text()
    assert run("logs", "tiny.yaml", "pretrain") == (0, log, "")
    assert run("logs", "tiny.yaml", "pretrain", "-n", "1") == (
        0, "=== pretrain: complete in 12.5s\n", "")
    assert run("logs", "tiny.yaml", "pretrain", "-n", "50")[1] == log
    # -f on a stage whose run has ended: what there is, then done.
    assert run("logs", "tiny.yaml", "pretrain", "-f") == (0, log, "")


def test_logs_of_an_unknown_stage(ws: Path, run) -> None:
    code, out, err = run("logs", "tiny.yaml", "sfy")
    assert (code, out) == (2, "")
    assert "error: no stage named 'sfy' in tiny.yaml" in err
    assert "expected: one of: pretrain, sft, eval" in err and "did you mean 'sft'?" in err


def test_logs_of_a_stage_that_never_ran(ws: Path, run) -> None:
    for follow in ([], ["-f"]):
        code, out, err = run("logs", "tiny.yaml", "sft", *follow)
        assert (code, out) == (2, "")
        assert "error: stage sft has not run: there is no outputs/tiny/sft/train.log" in err
        assert "hint: run it: recipe run tiny.yaml" in err


def test_logs_refuses_a_linked_log(ws: Path, run, tmp_path: Path) -> None:
    directory = ws / "outputs/tiny/pretrain"
    directory.mkdir(parents=True)
    (tmp_path / "secret").write_text("not a log\n")
    (directory / "train.log").symlink_to(tmp_path / "secret")
    code, out, err = run("logs", "tiny.yaml", "pretrain")
    assert code == 2 and "not a log" not in out and "symbolic link" in err


WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from llm_recipe.runtime.locks import StageLock
    directory, fingerprint, finish = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    directory.mkdir(parents=True, exist_ok=True)
    lock = StageLock(directory)
    lock.acquire()
    log = directory / "train.log"
    log.unlink(missing_ok=True)  # a clean start replaces the log
    (directory / "manifest.json").unlink(missing_ok=True)
    with log.open("a") as handle:
        handle.write("=== sft: starting\\n")
    print("ready", flush=True)
    sys.stdin.readline()  # the follower is following
    for step in range(1, 6):
        with log.open("a") as handle:
            handle.write(f"[train] step={step} loss={1 / step:.4f}\\n")
        time.sleep(0.15)
    if finish == "complete":
        (directory / "manifest.json").write_text(json.dumps(
            {"status": "complete", "fingerprint": fingerprint}))
        with log.open("a") as handle:
            handle.write("=== sft: complete in 1.0s\\n")
    else:
        with log.open("a") as handle:
            handle.write("Traceback (most recent call last):\\nValueError: boom\\n")
    lock.release()
""")


def _follow(ws: Path, finish: str) -> tuple[subprocess.CompletedProcess, float]:
    sft = stage(ws, "sft")
    directory = ws / sft.dir
    if finish == "complete":  # an earlier complete run must not end the follow early
        complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
        complete(ws, sft, {"loss": 0.5})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), sft.fingerprint,
                               finish], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        follower = subprocess.Popen([sys.executable, "-m", "llm_recipe", "logs", "tiny.yaml",
                                     "sft", "-f"], cwd=ws, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        first = follower.stdout.readline()  # it is following (and has seen the holder)
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=30) == 0
        ended = time.monotonic()
        out, err = follower.communicate(timeout=30)
        out = first + out
        lag = time.monotonic() - ended
    finally:
        writer.kill()
    return subprocess.CompletedProcess(follower.args, follower.returncode, out, err), lag


def test_logs_follow_prints_until_the_run_completes(ws: Path) -> None:
    done, lag = _follow(ws, "complete")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("=== sft: starting\n"
                           + "".join(f"[train] step={s} loss={1 / s:.4f}\n" for s in range(1, 6))
                           + "=== sft: complete in 1.0s\n")
    assert done.stderr == ""
    assert lag < 5


def test_logs_follow_ends_when_the_run_fails(ws: Path) -> None:
    done, _ = _follow(ws, "fail")
    assert done.returncode == 1
    assert done.stdout.endswith("Traceback (most recent call last):\nValueError: boom\n")
    assert "the run of sft ended without completing" in done.stderr


def test_logs_follow_waits_for_a_run_and_ctrl_c_exits_quietly(ws: Path) -> None:
    directory = started(ws, stage(ws, "pretrain"))  # an interrupted run, nobody running it
    follower = subprocess.Popen([sys.executable, "-m", "llm_recipe", "logs", "tiny.yaml",
                                 "pretrain", "-f"], cwd=ws, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    assert follower.stderr is not None
    waiting = follower.stderr.readline()  # printed once the log is out and it waits
    assert waiting == "recipe logs: pretrain is not running; waiting for a run (Ctrl-C to stop)\n"
    time.sleep(0.3)
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 130
    assert out == (directory / "train.log").read_text()
    assert err == ""  # quietly: no traceback, no "interrupted"


def test_logs_to_a_closed_pipe_is_quiet(ws: Path) -> None:
    directory = complete(ws, stage(ws, "pretrain"), {"loss": 0.8})
    with (directory / "train.log").open("a") as handle:
        handle.write("".join(f"[train] step={i} loss=1.0\n" for i in range(200_000)))
    done = subprocess.run(f"{sys.executable} -m llm_recipe logs tiny.yaml pretrain | head -n 2",
                          shell=True, cwd=ws, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.stdout.splitlines()[0].startswith("=== pretrain: starting")
    assert done.stderr == ""
