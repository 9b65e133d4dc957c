"""Every shipped recipe validates (with each profile) and carries its editor and usage header.

Recipes are globbed at run time: adding one under recipes/ adds it here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm_recipe.compiler import validate_recipe

ROOT = Path(__file__).resolve().parent.parent
# The modeline names the schema editors check a file against as written (recipe schema).
SCHEMA = ROOT / "src" / "llm_recipe" / "schema" / "recipe.authoring.schema.json"
RECIPES = sorted(p for p in (ROOT / "recipes").glob("**/*.yaml")
                 if not p.name.endswith(".lock.yaml"))  # lockfiles: `recipe lock`
IDS = [str(p.relative_to(ROOT / "recipes")) for p in RECIPES]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")

pytestmark = pytest.mark.skipif(not RECIPES, reason="no recipes/ yet")


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_validates_with_every_profile(path: Path) -> None:
    validate_recipe(path)


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_starts_with_the_schema_modeline(path: Path) -> None:
    first = path.read_text("utf-8").splitlines()[0]
    match = MODELINE.match(first)
    assert match, f"{path}: first line must be '# yaml-language-server: $schema=...'"
    assert (path.parent / match.group(1)).resolve() == SCHEMA.resolve()


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_header_shows_a_plan_command(path: Path) -> None:
    header = []
    for line in path.read_text("utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert any("recipe plan" in line for line in header), f"{path}: no 'recipe plan' in header"
