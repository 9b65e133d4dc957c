"""Editors agree with the published schema: ajv checks every shipped recipe as written.

``recipe schema`` (the authoring schema the recipes' modelines name) and every recipe
under recipes/, converted YAML -> JSON exactly as authored (``${vars.x}`` references,
``extends``, profiles: nothing composed), go through tools/ajv_check.mjs: ajv, an
independent Draft 2020-12 validator, in strict mode and in the mode the YAML language
server uses. Negative checks make sure it is not passing vacuously.

Needs node and ajv: .ci/run installs them (``npm install --no-save --prefix .ci ajv@8
ajv-formats@3``). Without them the test fails, saying so; it is never skipped.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llm_recipe.compiler.load import read_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "ajv_check.mjs"
NODE_MODULES = ROOT / ".ci" / "node_modules"
RECIPES = sorted((ROOT / "recipes").glob("**/*.yaml"))
VALID_CASES = sorted((ROOT / "tests" / "cases" / "valid").glob("*/recipe.yaml"))
INIT_TEMPLATES = sorted((ROOT / "src" / "llm_recipe" / "templates" / "init").glob("*.yaml"))
INSTALL = "npm install --no-save --prefix .ci ajv@8 ajv-formats@3"


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail(
            "node is not installed: the schema is checked with ajv under Node.js; install it "
            f"(apt-get install nodejs npm), then run `{INSTALL}` (.ci/run does both)",
            pytrace=False,
        )
    for package in ("ajv/dist/2020.js", "ajv-formats/dist/index.js"):
        if not (NODE_MODULES / package).is_file():
            pytest.fail(
                f"ajv is not installed in {NODE_MODULES.relative_to(ROOT)}: run `{INSTALL}` "
                "in the repository root (.ci/run does)",
                pytrace=False,
            )
    return found


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``recipe schema``, as a user would save it for their editor."""
    out = subprocess.run(
        [sys.executable, "-m", "llm_recipe", "schema"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    path = tmp_path_factory.mktemp("schema") / "recipe.schema.json"
    path.write_text(out, "utf-8")
    return path


def ajv(node: str, schema: Path, docs: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(SCRIPT), str(schema), *map(str, docs)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def as_json(data: Any, path: Path) -> Path:
    path.write_text(json.dumps(data), "utf-8")
    return path


def test_every_shipped_recipe_as_written_is_valid_under_ajv(node, schema, tmp_path) -> None:
    assert RECIPES, "no recipes under recipes/"
    docs = []
    for recipe in [*RECIPES, *VALID_CASES, *INIT_TEMPLATES]:
        name = str(recipe.relative_to(ROOT)).replace(os.sep, "__")
        docs.append(as_json(read_file(recipe).data, tmp_path / f"{name}.json"))
    result = ajv(node, schema, docs)
    assert result.returncode == 0, f"ajv refused the schema or a recipe:\n{result.stderr}"
    assert f"{len(docs)} document(s) valid" in result.stdout


def test_ajv_refuses_what_the_schema_refuses(node, schema, tmp_path) -> None:
    quickstart = read_file(ROOT / "recipes" / "quickstart.yaml").data

    def changed(name: str, change) -> tuple[str, Path]:
        data = copy.deepcopy(quickstart)
        change(data)
        return name, as_json(data, tmp_path / f"{name}.json")

    def train(**values):
        return lambda data: data["stages"]["sft"]["train"].update(values)

    cases = [
        changed("lr_fast", train(lr="fast")),
        changed("lr_env", train(lr="${env:LR}")),
        changed("steps_embedded", train(max_steps="1${vars.zeros}")),
        changed("unknown_key", train(lrr=1e-4)),
        changed("no_stages", lambda data: data.pop("stages")),
        changed("child_lr_fast", lambda data: data.update(
            extends="base.yaml", stages={"sft": {"train": {"lr": "fast"}}})),
    ]
    result = ajv(node, schema, [path for _, path in cases])
    assert result.returncode == 1, result.stdout + result.stderr
    for name, _ in cases:
        assert f"{name}.json: strict:" in result.stderr, f"ajv accepted {name}:\n{result.stderr}"
    assert "lr_fast.json: strict: /stages/sft/train/lr" in result.stderr


def test_ajv_runs_in_strict_mode(node, tmp_path) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"lr": {"type": "number", "minimun": 0}},
    }
    path = as_json(schema, tmp_path / "typo.schema.json")
    result = ajv(node, path, [as_json({"lr": 1}, tmp_path / "doc.json")])
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'unknown keyword: "minimun"' in result.stderr
