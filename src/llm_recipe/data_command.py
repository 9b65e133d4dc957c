"""``recipe data FILE STAGE [--n 5]``: the first examples exactly as the stage trains on them.

The CLI edge only: arguments and printing. Preparing the examples is
:mod:`llm_recipe.runtime.data.preview`, through the stage's own data path.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any, compile_options: Any) -> None:
    data = commands.add_parser(
        "data", help="show a stage's first examples as it will train on them (tokens, loss mask)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show the first examples of a stage's training data as the stage will\n"
        "see them: the rendered prompt and template, the tokens, and which tokens count in\n"
        "the loss; for preference data, prompt / chosen / rejected. Trains nothing.",
        epilog="examples:\n"
        "  recipe data recipes/abel.yaml sft -p tiny\n"
        "  recipe data recipes/quickstart.yaml sft --n 2 --tokens\n"
        "  recipe data recipes/abel.yaml dpo -p tiny --json | jq '.examples[0]'")
    compile_options(data)
    data.add_argument("stage", metavar="STAGE", help="the stage whose training data to show")
    data.add_argument("--n", type=int, default=5, metavar="N",
                      help="how many examples (default: 5)")
    data.add_argument("--tokens", action="store_true",
                      help="also list every token with its id and whether it is in the loss")
    data.add_argument("--validation", action="store_true",
                      help="show the validation examples instead of the training ones")
    data.add_argument("--json", action="store_true", help="print the examples as JSON")


def data_command(args: argparse.Namespace) -> int:
    raise NotImplementedError("recipe data")
