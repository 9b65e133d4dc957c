"""``recipe diff`` sides at a git revision (``path@REV``), in a temporary repository."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llm_recipe import cli
from llm_recipe.compiler.diff import diff_plans
from llm_recipe.errors import RecipeError
from llm_recipe.git_sides import compile_side, split_side

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

BASE = """\
recipe: 1
name: base
models:
  base:
    hub: sshleifer/tiny-gpt2
    revision: main
datasets:
  math:
    path: data/math.jsonl
    format: gsm8k
"""
RECIPE = """\
recipe: 1
extends: base.yaml
name: gitdiff
stages:
  sft:
    kind: sft
    model: base
    data: math
    train: {max_steps: 10, lr: 1.0e-4}
  eval:
    kind: eval
    models: [base, sft]
    data: math
    metrics: [gsm8k_accuracy]
profiles:
  tiny:
    stages.sft.train.max_steps: 2
"""
ROW = '{"question": "1+1?", "answer": "#### 2"}\n'


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c",
                    "commit.gpgsign=false", *args], cwd=repo, check=True, capture_output=True)


def _commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text, "utf-8")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two commits: the second changes the base file's data path content and sft's lr."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    _commit(root, {"recipes/base.yaml": BASE, "recipes/r.yaml": RECIPE,
                   "recipes/data/math.jsonl": ROW}, "one")
    _commit(root, {"recipes/r.yaml": RECIPE.replace("lr: 1.0e-4", "lr: 3.0e-4"),
                   "recipes/data/math.jsonl": ROW * 2}, "two")
    monkeypatch.chdir(root)
    return root


def test_split_side() -> None:
    assert split_side("recipes/r.yaml@HEAD~1") == ("recipes/r.yaml", "HEAD~1")
    assert split_side("r.yaml@HEAD@{1}") == ("r.yaml", "HEAD@{1}")
    assert split_side("r.yaml") == ("r.yaml", None)
    assert split_side("r.yaml@") == ("r.yaml@", None)


def test_a_revision_compiles_with_its_own_extends_and_files(repo: Path) -> None:
    old = compile_side("recipes/r.yaml@HEAD~1", profiles=["tiny"])
    new = compile_side("recipes/r.yaml", profiles=["tiny"])
    assert old.recipe["file"] == "recipes/r.yaml@HEAD~1"
    assert old.stage("sft").config["train"]["lr"] == 0.0001
    assert old.stage("sft").config["train"]["max_steps"] == 2
    assert old.datasets["math"]["path"] == new.datasets["math"]["path"] == "recipes/data/math.jsonl"
    diff = diff_plans(old, new)
    assert [(c.where, c.path, c.old, c.new) for c in diff.changed] == [
        ("sft", "train.lr", 0.0001, 0.0003)]
    assert diff.rerun[0].own == ("train.lr",)
    assert diff.rerun[0].inputs == ("content of math",)  # the committed file changed too
    same = diff_plans(compile_side("recipes/r.yaml@HEAD"), compile_side("recipes/r.yaml"))
    assert same.empty


def test_two_revisions_from_a_subfolder(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo / "recipes")
    diff = diff_plans(compile_side("r.yaml@HEAD~1"), compile_side("r.yaml@HEAD"))
    assert [c.path for c in diff.changed] == ["train.lr"]
    assert compile_side("r.yaml@HEAD~1").datasets["math"]["path"] == "data/math.jsonl"


def test_recipe_diff_against_a_revision_through_the_cli(repo: Path, capsys) -> None:
    code = cli.main(["diff", "recipes/r.yaml@HEAD~1", "recipes/r.yaml", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["a"]["file"] == "recipes/r.yaml@HEAD~1" and out["rerun"] == ["sft", "eval"]
    assert cli.main(["diff", "recipes/r.yaml@HEAD~1", "recipes/r.yaml", "--exit-code"]) == 1
    assert cli.main(["diff", "recipes/r.yaml@HEAD", "recipes/r.yaml", "--exit-code"]) == 0
    assert cli.main(["diff", "recipes/r.yaml@HEAD~1", "recipes/r.yaml", "--markdown"]) == 0
    assert "| `sft` | `train.lr` | `0.0001` | `0.0003` |" in capsys.readouterr().out


def test_bad_revisions_and_files_are_recipe_errors(repo: Path, capsys) -> None:
    with pytest.raises(RecipeError, match="unknown revision 'nope'"):
        compile_side("recipes/r.yaml@nope")
    with pytest.raises(RecipeError, match=r"recipes/gone.yaml does not exist at HEAD~1"):
        compile_side("recipes/gone.yaml@HEAD~1")
    assert cli.main(["diff", "recipes/r.yaml@nope", "recipes/r.yaml"]) == 2
    err = capsys.readouterr().err
    assert "error: recipes/r.yaml@nope: unknown revision 'nope'" in err and "hint:" in err


def test_errors_in_a_revision_name_the_file_at_that_revision(repo: Path) -> None:
    _commit(repo, {"recipes/base.yaml": BASE.replace("format: gsm8k", "format: gsmk8")}, "bad")
    with pytest.raises(RecipeError) as caught:
        compile_side("recipes/r.yaml@HEAD")
    assert str(caught.value.location).startswith("recipes/base.yaml@HEAD:")


def test_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "r.yaml").write_text(RECIPE, "utf-8")
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    with pytest.raises(RecipeError, match="not inside a git repository"):
        compile_side("r.yaml@HEAD")
