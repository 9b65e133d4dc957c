"""``recipe export FILE STAGE -o DIR [--merge]``: a stage's output as a standalone model folder.

The CLI edge only: arguments and printing. The work is :mod:`llm_recipe.runtime.export`
(torch, imported when the command runs, never when the parser is built).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any, compile_options: Any) -> None:
    export = commands.add_parser(
        "export", help="write a stage's model as a standalone Hugging Face folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a stage's output as a Hugging Face model folder (safetensors,\n"
        "config, tokenizer, generation config and a model card naming the recipe, stage\n"
        "and fingerprint). --merge folds a LoRA adapter into its base (a QLoRA adapter\n"
        "into the dequantised base).",
        epilog="examples:\n"
        "  recipe export recipes/abel.yaml sft -o exported/sft --merge\n"
        "  recipe export recipes/quickstart.yaml sft -o exported/quickstart-sft\n"
        "  recipe export recipes/abel.yaml dpo -p tiny -o exported/dpo   # the adapter only")
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
    raise NotImplementedError("recipe export")
