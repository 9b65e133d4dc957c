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


def _header_commands(path: Path, verb: str) -> list[list[str]]:
    """The ``recipe VERB ...`` commands a recipe's header shows (a trailing ``\\``
    continues on the next line; ``(or ...)`` remarks are dropped)."""
    import shlex

    lines = []
    for line in path.read_text("utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    commands, pending = [], ""
    for line in lines:
        text = pending + " " + line if pending else line
        pending = ""
        if f"recipe {verb} " not in text:
            continue
        command = text[text.index(f"recipe {verb} "):].split("(")[0].strip()
        if command.endswith("\\"):
            pending = command[:-1]
            continue
        commands.append(shlex.split(command))
    return commands


@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_the_plan_commands_a_header_shows_work(path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    from llm_recipe import cli

    monkeypatch.chdir(ROOT)
    commands = _header_commands(path, "plan")
    assert commands
    for words in commands:
        assert cli.main(words[1:]) == 0, (words, capsys.readouterr().err)


def test_the_formats_first_recipe_is_the_shipped_quickstart(tmp_path: Path) -> None:
    """docs/recipe-format.md opens with the quickstart: the same stages, the same
    fingerprints, so the reference never teaches a recipe that is not the one shipped."""
    from llm_recipe.compiler import compile_recipe

    doc = (ROOT / "docs" / "recipe-format.md").read_text()
    block = doc.split("## A first recipe", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    written = tmp_path / "quickstart.yaml"
    written.write_text(block)
    shipped = compile_recipe(ROOT / "recipes" / "quickstart.yaml")
    first = compile_recipe(written)
    assert [(s.name, s.fingerprint) for s in first.stages] == [
        (s.name, s.fingerprint) for s in shipped.stages]


def test_docs_name_no_machine_paths() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for prefix in ("/work/", "/home/", "/root/", "/Users/"):
            assert prefix not in text, f"{path.name} names a machine path ({prefix})"


def test_user_facing_text_names_systems_not_internal_labels() -> None:
    """The systems the recipes reproduce are named by what they are (the Abel GSM8K
    pipeline, the LLM lab, ...), never by the project's internal labels."""
    label = re.compile(r"\bseeds? ?0\d\d\b|\bthe seed's\b|\bseed system", re.IGNORECASE)
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *RECIPES]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert not label.search(line), f"{path.name}:{number}: {line.strip()}"
