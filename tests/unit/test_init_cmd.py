"""``recipe init``: each template is a valid recipe as written, plans (tiny profile too),
gets a modeline that points at the schema from wherever it is written, and never
overwrites a file. Torch-free."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_recipe import cli
from llm_recipe.compiler import compile_recipe, validate_recipe
from llm_recipe.init_command import TEMPLATES, schema_path, template_path

MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def test_the_cli_offers_every_template() -> None:
    parser = cli.build_parser()
    init = parser._subparsers._group_actions[0].choices["init"]
    choices = next(a.choices for a in init._actions if a.dest == "template")
    assert tuple(choices) == TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_shipped_template_is_valid_as_written(name: str) -> None:
    path = template_path(name)
    match = MODELINE.match(path.read_text("utf-8").splitlines()[0])
    assert match and (path.parent / match.group(1)).resolve() == schema_path().resolve()
    assert validate_recipe(path) == ["tiny"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_init_writes_a_recipe_that_plans(name: str, tmp_path: Path, monkeypatch,
                                         capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    assert cli.main(["init", "--template", name, "-o", "sub/r.yaml"]) == 0
    assert "wrote sub/r.yaml" in capsys.readouterr().out
    out = tmp_path / "sub" / "r.yaml"
    match = MODELINE.match(out.read_text("utf-8").splitlines()[0])
    assert match and (out.parent / match.group(1)).resolve() == schema_path().resolve()
    assert "recipe run sub/r.yaml -p tiny" in out.read_text("utf-8")
    compile_recipe(out, cwd=tmp_path)
    tiny = compile_recipe(out, profiles=["tiny"], cwd=tmp_path)
    assert tiny.workspace.startswith("outputs/tiny/")
    assert '"hub"' not in tiny.to_json()  # offline: nothing comes from the hub
    assert all(stage.compute.get("gpus_per_node") == 0 for stage in tiny.stages)


def test_init_never_overwrites(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text("mine\n")
    assert cli.main(["init"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "recipe.yaml").read_text() == "mine\n"
    assert cli.main(["init", "-o", "missing/r.yaml"]) == 2
