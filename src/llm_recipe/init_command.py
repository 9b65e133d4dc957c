"""``recipe init``: write a commented starter recipe from a template shipped with the package.

Templates live in ``llm_recipe/templates/init/<name>.yaml`` (package data). Each is a
valid recipe as written, with a ``tiny`` profile that runs on a CPU offline (a tiny
``init`` model and builtin data). Its first line is the ``yaml-language-server``
modeline; ``init`` rewrites it to point from the new file to the installed authoring
schema, so editors check the file wherever it is written.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from llm_recipe.errors import RecipeError

TEMPLATES = ("sft-lora", "sft-dpo", "pretrain")  # cli.py lists them too
DEFAULT_TEMPLATE = "sft-lora"
MODELINE = "# yaml-language-server: $schema="


def template_path(name: str) -> Path:
    if name not in TEMPLATES:
        raise RecipeError(f"no template named {name!r}", hint=f"one of: {', '.join(TEMPLATES)}")
    return Path(str(resources.files("llm_recipe") / "templates" / "init" / f"{name}.yaml"))


def schema_path() -> Path:
    return Path(str(resources.files("llm_recipe") / "schema" / "recipe.authoring.schema.json"))


def template_text(name: str, out: Path) -> str:
    """The template's text, its modeline pointing from ``out``'s folder to the schema."""
    lines = template_path(name).read_text("utf-8").splitlines(keepends=True)
    folder = out.resolve().parent
    schema = Path(os.path.relpath(schema_path().resolve(), folder)).as_posix()
    lines[0] = f"{MODELINE}{schema}\n"
    text = "".join(lines)
    return text.replace("THIS_FILE", out.as_posix() if out.is_absolute() else str(out))


def write_template(name: str, out: Path) -> Path:
    """Write template ``name`` to ``out``; an existing file is never overwritten."""
    text = template_text(name, out)
    if out.exists() or out.is_symlink():
        raise RecipeError(f"{out} already exists; recipe init never overwrites a file",
                          hint="choose another name with -o FILE, or remove the file first")
    if not out.parent.is_dir():
        raise RecipeError(f"no folder {out.parent} to write {out.name} in",
                          hint="create the folder first, or choose another -o FILE")
    try:
        with open(out, "x", encoding="utf-8") as handle:  # "x": a file created meanwhile wins
            handle.write(text)
    except FileExistsError:
        raise RecipeError(f"{out} already exists; recipe init never overwrites a file",
                          hint="choose another name with -o FILE") from None
    return out


def init_command(args) -> int:  # argparse.Namespace: --template, --out
    out = write_template(args.template, Path(args.out))
    print(f"wrote {out} (template {args.template})")
    print(f"  check it:        recipe validate {out}")
    print(f"  tiny, on a CPU:  recipe run {out} -p tiny")
    return 0
