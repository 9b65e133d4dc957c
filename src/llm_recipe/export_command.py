"""``recipe export FILE STAGE -o DIR [--merge]``: a stage's output as a standalone model folder.

The CLI edge only: arguments and printing. The work is :mod:`llm_recipe.runtime.export`
(torch, imported when the command runs, never when the parser is built).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_recipe.runtime.export import Exported


def add_parser(commands: Any, compile_options: Any) -> None:
    export = commands.add_parser(
        "export", help="write a stage's model as a standalone Hugging Face folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a stage's output as a Hugging Face model folder (safetensors,\n"
        "config, tokenizer, generation config and a model card naming the recipe, stage\n"
        "and fingerprint). --merge folds a LoRA adapter into its base (a QLoRA adapter\n"
        "into the dequantised base).",
        epilog="examples:\n"
        "  recipe export recipes/quickstart.yaml sft -o exported/quickstart-sft\n"
        "  recipe export recipes/abel.yaml dpo -p tiny -o exported/dpo --merge\n"
        "  recipe export recipes/abel.yaml dpo -p tiny -o exported/dpo-adapter   # the adapter")
    compile_options(export)
    export.add_argument("stage", metavar="STAGE", help="the stage whose model to export")
    export.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="the folder to write (must not exist, or be empty)")
    export.add_argument("--merge", action="store_true",
                        help="merge a LoRA/QLoRA adapter into its base: one full model")
    export.add_argument("--force", action="store_true",
                        help="replace the folder when it exists and is not empty")
    export.add_argument("--json", action="store_true", help="print what was written as JSON")


def export_command(args: argparse.Namespace) -> int:
    """Compile the recipe, export the stage, print what was written (or JSON)."""
    from llm_recipe.command_line import recipe_command
    from llm_recipe.compiler import compile_recipe
    from llm_recipe.runtime.export import export_stage

    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=False)  # the model is made; data is not read
    exported = export_stage(plan, args.stage, Path.cwd(), Path(args.out), merge=args.merge,
                            force=args.force, run_hint=recipe_command(args),
                            warn=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(exported.to_dict(), indent=2))
        return 0
    print(_summary(exported))
    return 0


def _summary(exported: Exported) -> str:
    """The files with sizes, notes, and how to load the folder."""
    from llm_recipe.compiler.workspace_status import short_bytes

    what = {"full": "full model", "merged": "full model, adapter merged",
            "adapter": "adapter"}[exported.content]
    lines = [f"exported stage {exported.stage} ({exported.kind}, {what}, fingerprint "
             f"{exported.fingerprint[:12]}) to {exported.out}"]
    width = max(len(name) for name, _ in exported.files)
    lines += [f"  {name:<{width}}  {short_bytes(size):>9}" for name, size in exported.files]
    lines += [f"note: {note}" for note in exported.notes]
    lines.append(f"load it: {exported.load_line}")
    return "\n".join(lines)
