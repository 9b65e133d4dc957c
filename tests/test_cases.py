"""Golden cases: every folder under tests/cases is one ``recipe plan`` run.

``invalid/<case>/``: ``recipe.yaml`` (plus any files it needs), an optional
``args.txt`` (extra CLI arguments, one per line) and ``expected.txt``, the exact
stderr of ``recipe plan recipe.yaml [args]`` run in the case folder. Every one
must exit 2 with a located message and never a traceback.

``valid/<case>/``: the same inputs and ``expected.json``, the plan printed by
``recipe plan recipe.yaml --json [args]``.

A case may replace ``recipe.yaml`` by ``generate.txt`` when the input is too big
to commit (see :func:`_generate`). Cases run on a copy of their folder in a
temporary directory so nothing is ever written into tests/cases except by
``--update-golden``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_recipe import cli

CASES = Path(__file__).parent / "cases"
INVALID = sorted(p for p in (CASES / "invalid").iterdir() if p.is_dir())
VALID = sorted(p for p in (CASES / "valid").iterdir() if p.is_dir())
INPUT_FILES = ("recipe.yaml", "generate.txt")
_LOCATED = re.compile(r"^.+:\d+:\d+: error: ", re.M)


def _args(case: Path) -> list[str]:
    file = case / "args.txt"
    if not file.exists():
        return []
    return [line for line in file.read_text("utf-8").splitlines() if line.strip()]


def _generate(case: Path, into: Path) -> None:
    """Write the case's recipe.yaml from generate.txt (``bytes: N``: a recipe of N bytes)."""
    spec = dict(
        line.split(":", 1)
        for line in (case / "generate.txt").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    size = int(spec["bytes"])
    lines = ["recipe: 1\n", "name: huge\n", "vars:\n"]
    total = sum(map(len, lines))
    index = 0
    while total < size:
        line = f"  pad{index:06d}: {'x' * 64}\n"
        lines.append(line)
        total += len(line)
        index += 1
    (into / "recipe.yaml").write_text("".join(lines), "utf-8")


@pytest.fixture
def run_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run ``recipe plan recipe.yaml [extra] [args.txt]`` in-process on a copy of the case."""

    def run(case: Path, *extra: str) -> tuple[int, str, str]:
        work = tmp_path / case.name
        shutil.copytree(case, work, ignore=shutil.ignore_patterns("expected.*"))
        if (case / "generate.txt").exists():
            _generate(case, work)
        monkeypatch.chdir(work)
        capsys.readouterr()
        code = cli.main(["plan", "recipe.yaml", *extra, *_args(case)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _golden(path: Path, actual: str, update: bool) -> None:
    if update:
        path.write_text(actual, "utf-8")
        return
    assert path.exists(), f"{path} is missing; create it with pytest --update-golden"
    assert actual == path.read_text("utf-8")


@pytest.mark.parametrize("case", INVALID, ids=[p.name for p in INVALID])
def test_invalid_case(case: Path, run_case, update_golden: bool) -> None:
    code, out, err = run_case(case)
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err and "internal error" not in err
    assert _LOCATED.search(err), f"no file:line:col in:\n{err}"
    assert "hint:" in err, f"no hint in:\n{err}"
    _golden(case / "expected.txt", err, update_golden)


@pytest.mark.parametrize("case", VALID, ids=[p.name for p in VALID])
def test_valid_case(case: Path, run_case, update_golden: bool) -> None:
    code, out, err = run_case(case, "--json")
    assert code == 0, err
    assert err == ""
    expected = case / "expected.json"
    if not update_golden and expected.exists():  # compare parsed first: a readable diff
        assert json.loads(out) == json.loads(expected.read_text("utf-8"))
    _golden(expected, out, update_golden)


@pytest.mark.parametrize(
    "case", INVALID + VALID, ids=[f"{p.parent.name}/{p.name}" for p in INVALID + VALID]
)
def test_case_folder_is_complete(case: Path) -> None:
    """A case without its inputs or its expected output is an error, not a skipped test."""
    assert any((case / name).exists() for name in INPUT_FILES), f"{case} has no recipe.yaml"
    expected = "expected.txt" if case.parent.name == "invalid" else "expected.json"
    assert (case / expected).exists(), f"{case} has no {expected}"
    other = "expected.json" if expected == "expected.txt" else "expected.txt"
    assert not (case / other).exists(), f"{case} has a stray {other}"


REQUIRED = (
    "yaml_syntax_error",
    "tab_indentation",
    "duplicate_key",
    "python_object_tag",
    "custom_tag",
    "alias_bomb",
    "deep_nesting",
    "empty_file",
    "comments_only",
    "root_is_list",
    "file_too_large",
    "merge_conflict_markers",
    "unknown_top_key",
    "unknown_nested_key",
    "unknown_stage_kind",
    "missing_stage_ref",
    "missing_model_ref",
    "missing_dataset_ref",
    "cycle",
    "self_reference",
    "lineage_mismatch",
    "eval_metric_format",
    "set_unknown_path",
    "set_bad_syntax",
    "unknown_profile",
    "extends_loop",
    "extends_missing_file",
    "unsupported_version",
    "missing_version",
    "model_two_sources",
    "init_without_tokenizer",
    "inline_secret",
    "inline_secret_set",
    "non_finite_number",
    "unknown_var",
    "yes_as_bool",
    "wrong_type",
    "epochs_and_max_steps",
    "deepspeed_without_zero_stage",
    "name_collision",
    "many_errors",
    "unknown_reward_function",
    "reward_module_missing",
    "reward_function_not_defined",
    "variant_without_placeholder",
    "grpo_batch_not_divisible",
    "preferences_no_pairs",
    "policy_is_a_dataset",
    "dpo_merge_without_adapter",
    "grpo_greedy",
    "continual_same_stream_twice",
    "continual_replay_ratio_one",
    "continual_probe_longer_than_phase",
    "continual_rollback_threshold_zero",
    "continual_rank_above_hidden",
)


def test_required_cases_exist() -> None:
    assert sorted(set(REQUIRED) - {p.name for p in INVALID}) == []


def test_many_errors_are_reported_together_in_line_order() -> None:
    text = (CASES / "invalid" / "many_errors" / "expected.txt").read_text("utf-8")
    lines = [int(m.group(1)) for m in re.finditer(r"^recipe\.yaml:(\d+):\d+: error", text, re.M)]
    assert len(lines) >= 4
    assert lines == sorted(lines)
    assert text.rstrip().endswith(f"{len(lines)} errors")


def test_generated_input_is_not_committed() -> None:
    for case in INVALID + VALID:
        if (case / "generate.txt").exists():
            assert not (case / "recipe.yaml").exists(), f"{case}: recipe.yaml is generated"


# End to end through the installed console script: exit codes as a shell sees them.


def _console_script() -> str:
    script = Path(sys.executable).with_name("recipe")
    return str(script) if script.exists() else shutil.which("recipe") or "recipe"


def _subprocess(case: Path, *argv: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    work = tmp_path / case.name
    shutil.copytree(case, work, ignore=shutil.ignore_patterns("expected.*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(
        [_console_script(), *argv, *_args(case)],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_console_script_exit_codes(tmp_path: Path) -> None:
    bad = CASES / "invalid" / "lineage_mismatch"
    result = _subprocess(bad, "plan", "recipe.yaml", tmp_path=tmp_path / "bad")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (bad / "expected.txt").read_text("utf-8")

    good = CASES / "valid" / "minimal_sft"
    result = _subprocess(good, "plan", "recipe.yaml", "--json", tmp_path=tmp_path / "good")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads((good / "expected.json").read_text("utf-8"))

    result = _subprocess(good, "plan", "recipe.yaml", "--bogus", tmp_path=tmp_path / "usage")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
