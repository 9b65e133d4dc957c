"""Honest output: closed pipes, progress in a log file, Ctrl-C, every command's examples."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from llm_recipe import cli
from llm_recipe.progress import RichProgress
from llm_recipe.runtime.log import StageLog

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    ["plan", "recipes/abel.yaml"],
    ["plan", "recipes/abel.yaml", "--json"],
    ["status", "recipes/abel.yaml"],
    ["status", "recipes/abel.yaml", "--json"],
    ["run", "recipes/abel.yaml", "-p", "tiny", "--dry-run"],
    ["run", "recipes/abel.yaml", "-p", "tiny", "--dry-run", "--json"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_a_reader_that_leaves_early_is_not_an_error(argv: list[str]) -> None:
    """`recipe plan r.yaml | head -1`: the first line, then a quiet exit 0."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "llm_recipe", *argv])
    done = subprocess.run(["bash", "-c", f'{command} | head -1; exit "${{PIPESTATUS[0]}}"'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr == ""


@pytest.mark.parametrize("argv", COMMANDS[:2] + COMMANDS[-1:], ids=" ".join)
def test_a_pipe_closed_before_the_first_write(argv: list[str]) -> None:
    """The reader is gone before anything is written: every write fails, rich's too."""
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == ""


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120), out  # a StringIO is not a terminal


def test_progress_is_a_line_per_log_step_when_not_a_terminal() -> None:
    console, out = plain_console()
    progress = RichProgress(console)
    progress.start("sft", 100, "sft")
    progress.update("sft", 0, {})  # a resume's bare update: no line
    progress.update("sft", 20, {"loss": 1.23456, "tok_s": 5120, "lr": None})
    progress.update("sft", 40, {"loss": 0.9, "tok_s": 4800})
    progress.finish("sft")
    progress.close()
    assert out.getvalue().splitlines() == [
        "sft: sft, 100 steps",
        "sft: step 20/100 · loss 1.235 · tok_s 5120",
        "sft: step 40/100 · loss 0.9 · tok_s 4800",
    ]


def test_per_batch_progress_is_throttled_in_a_log_file(monkeypatch) -> None:
    """An eval's per-batch updates: the first, then at most one every PLAIN_EVERY_S
    seconds, and the last; training rows (with a loss) are never dropped."""
    import llm_recipe.progress as progress_module

    clock = iter(float(t) for t in range(0, 1000, 1))  # one second per update
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(clock))
    console, out = plain_console()
    progress = RichProgress(console)
    progress.start("eval", 100, "eval")
    for done in range(1, 101):
        progress.update("eval", done, {"model": "sft", "acc": 0.5})
    progress.start("sft", 30, "sft")
    for step in range(1, 31):
        progress.update("sft", step, {"loss": 1.0})
    lines = out.getvalue().splitlines()
    evals = [int(line.split()[2].split("/")[0]) for line in lines if line.startswith("eval: step")]
    assert evals == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    assert len([line for line in lines if line.startswith("sft: step")]) == 30


def test_an_interrupted_stage_keeps_the_step_it_reached(tmp_path: Path) -> None:
    from llm_recipe.runtime.executor import _run_module

    progress = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
    log = StageLog(tmp_path, "sft", progress)

    class Module:
        @staticmethod
        def run(ctx: object) -> None:
            log.start(100, "sft")
            log.update(37, loss=1.0)
            raise KeyboardInterrupt

    stage = SimpleNamespace(name="sft", kind="sft")
    with pytest.raises(KeyboardInterrupt):
        _run_module(Module, None, stage, tmp_path, log, True)  # type: ignore[arg-type]
    progress.close()
    assert progress.progress.tasks[progress.tasks["sft"]].completed == 37


def test_a_stage_that_ends_fills_its_bar(tmp_path: Path) -> None:
    from llm_recipe.runtime.context import StageResult
    from llm_recipe.runtime.executor import _run_module

    progress = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=120))
    log = StageLog(tmp_path, "sft", progress)

    class Module:
        @staticmethod
        def run(ctx: object) -> StageResult:
            log.start(100, "sft")
            log.update(95, loss=1.0)  # early stopping, or a last step between log steps
            return StageResult()

    _run_module(Module, None, SimpleNamespace(name="sft", kind="sft"), tmp_path, log, True)
    progress.close()
    assert progress.progress.tasks[progress.tasks["sft"]].completed == 100


def subcommands() -> dict[str, object]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return dict(action.choices)  # type: ignore[attr-defined]


def test_every_command_help_ends_with_examples() -> None:
    for name, parser in subcommands().items():
        text = parser.format_help()  # type: ignore[attr-defined]
        assert "\nexamples:\n" in text, name
        examples = text.split("\nexamples:\n", 1)[1].strip().splitlines()
        assert 2 <= len(examples) <= 4, name
        assert all(line.strip().startswith("recipe ") for line in examples), name


def test_a_recipe_this_machine_cannot_run_is_refused_before_any_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The 8-GPU Abel recipe on a machine without GPUs: --dry-run says which stages cannot
    run (never "would run"), and a run exits 2 before the first stage writes anything."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.chdir(tmp_path)
    recipe = str(ROOT / "recipes" / "abel.yaml")
    assert cli.main(["run", recipe, "--dry-run", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)["stages"]}
    assert rows["sft"]["action"] == "cannot run here"
    assert rows["sft"]["reason"] == "it asks for 8 GPU(s) per node and this machine has 0"
    assert rows["preferences"]["action"] == "would run"  # a CPU stage
    assert cli.main(["run", recipe]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot run this recipe here:\n  stage sft cannot run")
    assert not (tmp_path / "outputs").exists()
