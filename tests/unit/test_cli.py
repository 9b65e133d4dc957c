"""The ``recipe`` command in-process: exit codes, stderr/stdout, JSON shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipe import cli
from llm_recipe.compiler.schema import schema_text


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
    assert out == schema_text()
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
