"""The compiler never imports the training stack: planning works on a laptop without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from llm_recipe import cli
    from llm_recipe.compiler import compile_recipe, profile_names, validate_recipe
    from llm_recipe.compiler.dag import render_dag

    root = Path(sys.argv[1])
    compiled = []
    for path in sorted((root / "recipes").glob("**/*.yaml")):
        if path.name.endswith(".lock.yaml"):  # a lockfile (`recipe lock`), not a recipe
            continue
        validate_recipe(path)
        for profiles in ([], *([name] for name in profile_names(path))):
            plan = compile_recipe(path, profiles=profiles, cwd=root, require_files=False)
            plan.to_json()
            render_dag(plan, "mermaid")
            compiled.append(f"{path.name} {profiles}")
    # The CLI's own imports (rich output included) must stay light too.
    cli.build_parser()
    from llm_recipe import report  # noqa: F401
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print(json.dumps({"compiled": compiled, "heavy": heavy}))
    """
).replace("HEAVY", repr(HEAVY))


def test_compiling_every_recipe_imports_no_training_library(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    recipes = [p for p in (ROOT / "recipes").glob("**/*.yaml")
               if not p.name.endswith(".lock.yaml")]
    assert len(report["compiled"]) >= len(recipes)
