"""Golden cases of ``recipe diff``: every folder under tests/cases/diff is one review.

``diff/<case>/``: ``a.yaml`` and ``b.yaml`` (the recipe before and after a change), an
optional ``args.txt`` (extra CLI arguments, one per line, e.g. ``-p`` and a profile) and
the exact output of ``recipe diff a.yaml b.yaml [args]`` three ways: ``expected.txt``
(for people), ``expected.md`` (``--markdown``) and ``expected.json`` (``--json``). They
are compared, never written, unless pytest runs with ``--update-golden``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm_recipe import cli

CASES = sorted(p for p in (Path(__file__).parent / "cases" / "diff").iterdir() if p.is_dir())
FORMATS = {"expected.txt": (), "expected.md": ("--markdown",), "expected.json": ("--json",)}


def _args(case: Path) -> list[str]:
    file = case / "args.txt"
    if not file.exists():
        return []
    return [line for line in file.read_text("utf-8").splitlines() if line.strip()]


@pytest.fixture
def run_diff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    def run(case: Path, *extra: str) -> tuple[int, str, str]:
        work = tmp_path / case.name
        if not work.exists():
            shutil.copytree(case, work, ignore=shutil.ignore_patterns("expected.*"))
        monkeypatch.chdir(work)
        capsys.readouterr()
        code = cli.main(["diff", "a.yaml", "b.yaml", *extra, *_args(case)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
@pytest.mark.parametrize("expected", list(FORMATS))
def test_diff_case(case: Path, expected: str, run_diff, update_golden: bool) -> None:
    code, out, err = run_diff(case, *FORMATS[expected])
    assert (code, err) == (0, "")
    path = case / expected
    if update_golden:
        path.write_text(out, "utf-8")
        return
    assert path.exists(), f"{path} is missing; create it with pytest --update-golden"
    if expected == "expected.json":  # parsed first: a readable failure
        assert json.loads(out) == json.loads(path.read_text("utf-8"))
    assert out == path.read_text("utf-8")


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_diff_case_folder_is_complete(case: Path) -> None:
    for name in ("a.yaml", "b.yaml", *FORMATS):
        assert (case / name).exists(), f"{case} has no {name}"


def _json(case: str) -> dict:
    return json.loads((Path(__file__).parent / "cases" / "diff" / case / "expected.json")
                      .read_text("utf-8"))


def test_the_cases_say_what_a_reviewer_needs() -> None:
    """The goldens are reviewed once; these pin the facts they must keep showing."""
    everything = ["sft", "rollout", "preferences", "dpo", "eval"]
    lr = _json("learning_rate")
    assert lr["changed"] == [{"stage": "sft", "path": "train.lr", "old": 0.0001, "new": 0.0003}]
    assert lr["rerun"] == everything
    assert [r["cause"] for r in lr["reasons"]] == ["own", *["upstream"] * 4]

    new = _json("new_stage")
    assert [s["stage"] for s in new["added"]] == ["eval_sft"]
    assert new["rerun"] == ["eval_sft"] and new["changed"] == []

    revision = _json("dataset_revision")
    assert [(e["entry"], e["path"]) for e in revision["entries"]] == [("datasets.train",
                                                                       "revision")]
    assert revision["rerun"] == everything  # eval: through sft and dpo
    assert revision["reasons"][0]["inputs"] == ["datasets.train"]

    base = _json("base_model")
    assert base["rerun"] == everything
    assert {r["stage"]: r["inputs"] for r in base["reasons"]}["eval"] == ["models.base"]

    cosmetic = _json("cosmetic_only")
    assert cosmetic["rerun"] == [] and len(cosmetic["changed"]) == 2

    lineage = _json("lineage")
    assert lineage["lineage"] == [{"stage": "dpo", "field": "data", "old": "preferences",
                                   "new": "quality_pairs"}]
    assert [s["stage"] for s in lineage["removed"]] == ["preferences"]
    assert lineage["rerun"] == ["quality_pairs", "dpo", "eval"]


def test_exit_codes(run_diff, capsys: pytest.CaptureFixture) -> None:
    case = next(p for p in CASES if p.name == "learning_rate")
    assert run_diff(case)[0] == 0  # differences are not an error, like `git diff`
    assert run_diff(case, "--exit-code")[0] == 1
    code, out, _ = run_diff(case, "--exit-code", "--json")
    assert code == 1 and json.loads(out)["rerun"]
    assert cli.main(["diff", "a.yaml", "a.yaml", "--exit-code"]) == 0
    assert "no differences" in capsys.readouterr().out
    assert cli.main(["diff", "a.yaml", "missing.yaml"]) == 2
    assert "error: no such file: missing.yaml" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # argparse: one output format at a time
        cli.main(["diff", "a.yaml", "b.yaml", "--json", "--markdown"])
    assert usage.value.code == 2
