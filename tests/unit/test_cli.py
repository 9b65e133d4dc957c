"""The ``recipe`` command in-process: exit codes, stderr/stdout, JSON shapes."""

from __future__ import annotations

import errno
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_recipe import cli
from llm_recipe.compiler.authoring import authoring_schema_text


@pytest.fixture
def run(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_plan_json(run, write, minimal) -> None:
    write(minimal)
    code, out, err = run("plan", "recipe.yaml", "--json")
    assert (code, err) == (0, "")
    plan = json.loads(out)
    assert plan["recipe"]["file"] == "recipe.yaml"
    assert [s["name"] for s in plan["stages"]] == ["sft"]


def test_plan_table(run, write, minimal) -> None:
    write(minimal)
    code, out, _ = run("plan", "recipe.yaml")
    assert code == 0
    assert "sft" in out and "outputs/demo" in out


@pytest.mark.parametrize("style", ["mermaid", "dot"])
def test_plan_dag(run, write, minimal, style: str) -> None:
    write(minimal)
    code, out, _ = run("plan", "recipe.yaml", "--dag", style)
    assert code == 0
    assert "base" in out and "sft" in out


def test_profiles_and_sets_reach_the_plan(run, write, minimal) -> None:
    write(minimal + "profiles:\n  tiny:\n    stages.sft.train.max_steps: 2\n")
    code, out, _ = run("plan", "recipe.yaml", "-p", "tiny", "-s", "seed=5", "--json")
    plan = json.loads(out)
    assert code == 0
    assert plan["recipe"]["profiles"] == ["tiny"]
    assert plan["recipe"]["overrides"] == ["seed=5"]
    assert plan["stages"][0]["config"]["train"]["max_steps"] == 2
    assert plan["stages"][0]["config"]["seed"] == 5


def test_invalid_recipe_exits_2_with_the_rendered_error(run, write, minimal) -> None:
    write(minimal.replace("lr: 1e-4", "lr: fast"))
    code, out, err = run("plan", "recipe.yaml")
    assert (code, out) == (2, "")
    assert err.startswith("recipe.yaml:19:11: error: stages.sft.train.lr: got 'fast'\n")


def test_invalid_recipe_with_json_prints_errors_on_stdout(run, write, minimal) -> None:
    write(minimal.replace("lr: 1e-4", "lr: fast").replace("model: base", "model: bsae"))
    code, out, err = run("plan", "recipe.yaml", "--json")
    assert (code, err) == (2, "")
    errors = json.loads(out)["errors"]
    assert [(e["line"], e["col"], e["path"]) for e in errors] == [
        (15, 12, "stages.sft.model"),
        (19, 11, "stages.sft.train.lr"),
    ]
    assert set(errors[0]) == {"file", "line", "col", "path", "message", "expected", "hint"}


def test_single_error_json_is_a_list_too(run, write) -> None:
    write("recipe: 2\n")
    code, out, _ = run("plan", "recipe.yaml", "--json")
    assert code == 2
    assert len(json.loads(out)["errors"]) == 1


def test_missing_file(run) -> None:
    code, _, err = run("plan", "nope.yaml")
    assert code == 2
    assert err.startswith("error: no such file: nope.yaml")


def test_validate(run, write, minimal) -> None:
    write(minimal + "profiles:\n  tiny:\n    stages.sft.train.max_steps: 2\n", "good.yaml")
    write(minimal + "profiles:\n  bad:\n    stages.sft.train.max_steps: 0\n", "bad.yaml")
    code, out, err = run("validate", "good.yaml")
    assert (code, out, err) == (0, "ok  good.yaml (profiles: tiny)\n", "")
    code, out, err = run("validate", "good.yaml", "bad.yaml")
    assert code == 2
    assert "ok  good.yaml" in out
    assert "bad.yaml:" in err and "max_steps" in err


def test_validate_json(run, write, minimal) -> None:
    write(minimal, "good.yaml")
    write("recipe: 1\n", "bad.yaml")
    code, out, _ = run("validate", "good.yaml", "bad.yaml", "--json")
    assert code == 2
    results = json.loads(out)["results"]
    assert results[0] == {"file": "good.yaml", "ok": True, "profiles": []}
    assert results[1]["ok"] is False
    assert len(results[1]["errors"]) == 2


def test_schema(run) -> None:
    code, out, _ = run("schema")
    assert code == 0
    assert out == authoring_schema_text()
    assert json.loads(out)["title"].startswith("llm-recipe recipe")


def test_usage_errors_exit_2(run) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["plan"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_internal_error_exits_1_without_a_traceback(run, write, minimal, monkeypatch) -> None:
    write(minimal)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("llm_recipe.compiler.compile_recipe", broken)
    code, out, err = run("plan", "recipe.yaml")
    assert (code, out) == (1, "")
    assert "Traceback" not in err
    assert err.startswith("internal error: ZeroDivisionError: boom\n")
    assert "--debug" in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["--debug", "plan", "recipe.yaml"])


# Hostile inputs through the real command (a subprocess: exit codes as a shell sees them).


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _limit_memory() -> None:
    """A runaway read must fail the test, not the machine (the bug this guards against)."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _recipe(*argv: str, cwd: Path, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_recipe", *argv], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_memory, check=False, **kwargs)


def test_plan_of_dev_zero_stops_at_the_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _recipe("plan", "/dev/zero", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "over the limit" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20


def test_endless_pipe_on_stdin_stops_at_the_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", f"yes | {shlex.quote(sys.executable)} -m llm_recipe plan /dev/stdin"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=30,
        preexec_fn=_limit_memory, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("/dev/stdin:1:1: error: /dev/stdin gives more than")
    assert "over the limit" in result.stderr
    assert time.monotonic() - started < 20


def test_piped_recipe_still_works(tmp_path: Path, minimal: str) -> None:
    result = _recipe("plan", "/dev/stdin", "--json", cwd=tmp_path, input=minimal)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["recipe"]["name"] == "demo"


def test_fifo_without_a_writer_is_a_clear_error(run, tmp_path: Path, monkeypatch) -> None:
    from llm_recipe.compiler import reading

    monkeypatch.setattr(reading, "READ_TIMEOUT", 0.3)
    os.mkfifo(tmp_path / "pipe.yaml")
    started = time.monotonic()
    code, out, err = run("plan", "pipe.yaml")
    assert (code, out) == (2, "")
    assert err.startswith("pipe.yaml:1:1: error: nothing to read from pipe.yaml: "
                          "a pipe with no writer?\n")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_set_and_profile_values_are_refused(run, write, minimal, value) -> None:
    write(minimal + f"profiles:\n  odd:\n    stages.sft.train.lr: {value}\n")
    code, out, err = run("plan", "recipe.yaml", "--json", "--set",
                         f"stages.sft.train.lr={value}")
    assert code == 2
    [error] = json.loads(out)["errors"]
    assert error["file"] == f"--set stages.sft.train.lr={value}"
    assert (error["path"], error["expected"]) == ("stages.sft.train.lr", "a finite number")
    code, out, err = run("plan", "recipe.yaml", "-p", "odd")
    assert code == 2
    assert err.startswith("recipe.yaml:22:26: error: stages.sft.train.lr: got ")
    assert "expected: a finite number" in err and "hint:" in err


def test_plan_json_is_strict_json(run, write, minimal) -> None:
    write(minimal.replace("lr: 1e-4", "lr: 1e-4\n      warmup_ratio: 0.5"))
    code, out, _ = run("plan", "recipe.yaml", "--json")
    assert code == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in plan JSON")

    json.loads(out, parse_constant=refuse)


SECRET = "hf_DoNotPrintMe0123456789"


def test_inline_secret_in_a_file_is_not_printed(run, write, minimal) -> None:
    write(minimal + f"compute:\n  env:\n    HF_TOKEN: {SECRET}\n")
    code, out, err = run("plan", "recipe.yaml")
    assert code == 2
    assert "HF_TOKEN" in err and SECRET not in err
    assert "    HF_TOKEN: ****\n" in err
    code, out, err = run("plan", "recipe.yaml", "--json")
    assert code == 2 and "HF_TOKEN" in out and SECRET not in out


def test_inline_secret_in_a_set_is_not_printed(run, write, minimal) -> None:
    write(minimal)
    override = f"stages.sft.compute.env.HF_TOKEN={SECRET}"
    code, _, err = run("plan", "recipe.yaml", "--set", override)
    assert code == 2 and SECRET not in err
    assert err.startswith("--set stages.sft.compute.env.HF_TOKEN=****:1:33: error: ")
    code, out, _ = run("plan", "recipe.yaml", "--json", "--set", override)
    assert code == 2 and SECRET not in out
    assert json.loads(out)["errors"][0]["file"] == "--set stages.sft.compute.env.HF_TOKEN=****"


def test_render_into_a_file_is_a_clear_error(run, write, minimal, tmp_path: Path) -> None:
    write(minimal)
    (tmp_path / "taken").write_text("mine\n")
    code, out, err = run("render", "recipe.yaml", "-o", "taken")
    assert (code, out) == (2, "")
    assert err.startswith("error: -o taken is a file, not a folder\n")
    code, out, err = run("render", "recipe.yaml", "-o", "taken/launch")
    assert (code, out) == (2, "")
    assert err.startswith("error: -o taken/launch: taken is a file, not a folder\n")
    assert (tmp_path / "taken").read_text() == "mine\n"


def test_render_permission_denied_names_the_file(run, write, minimal, monkeypatch) -> None:
    write(minimal)

    def denied(self: Path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")  # as a full write() says it

    monkeypatch.setattr(Path, "write_text", denied)
    code, out, err = run("render", "recipe.yaml", "-o", "launch")
    assert (code, out) == (1, "")
    assert err == "error: permission denied: launch/plan.json\n"
    code = cli.main(["--debug", "render", "recipe.yaml", "-o", "launch"])
    assert code == 1  # not a bug: no traceback even with --debug


def test_disk_full_is_reported_as_such_not_as_a_bug(run, write, minimal, monkeypatch) -> None:
    write(minimal)

    def full(*args, **kwargs):
        raise RuntimeError("stage failed") from OSError(errno.ENOSPC, "No space left", "x.bin")

    monkeypatch.setattr("llm_recipe.compiler.compile_recipe", full)
    code, out, err = run("plan", "recipe.yaml")
    assert (code, out) == (1, "")
    assert err.startswith("error: no space left on device writing x.bin")
    assert "bug" not in err


_FILL = """
set -e
mount -t tmpfs -o size=64k tmpfs "$1"
dd if=/dev/zero of="$1/fill" bs=4k 2>/dev/null || true
shift
"$@" render recipe.yaml -o full/launch || echo "rc=$?"
mount -o remount,ro full
"$@" render recipe.yaml -o full/other || echo "rc=$?"
"""


def test_render_on_a_full_and_a_read_only_disk(tmp_path: Path, minimal: str) -> None:
    """A real full filesystem: a 64 KiB tmpfs in a private mount namespace, filled up."""
    unshare = shutil.which("unshare")
    (tmp_path / "full").mkdir()
    (tmp_path / "recipe.yaml").write_text(minimal)
    probe = ["-m"] if os.geteuid() == 0 else ["-rm"]
    if unshare is None or subprocess.run(
        [unshare, *probe, "mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "full")],
        capture_output=True, check=False,
    ).returncode != 0:
        pytest.skip("neither root mounts nor unshare -rm are permitted here")
    result = subprocess.run(
        [unshare, *probe, "sh", "-c", _FILL, "sh", "full", sys.executable, "-m", "llm_recipe"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.count("rc=1") == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "error: no space left on device writing full/launch/plan.json; "
        "free some space or use another disk",
        "error: read-only file system: cannot write full/other",
    ]
