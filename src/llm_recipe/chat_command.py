"""``recipe chat`` and ``recipe generate``: try a stage's model without writing code.

The CLI edge only: arguments, the read-reply loop and printing. Rendering prompts and
generating is :mod:`llm_recipe.runtime.generate` (torch, imported when a command runs).
"""

from __future__ import annotations

import argparse
from typing import Any


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="tokens to generate at most (default: the stage's generation "
                        "settings, else 256)")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help="0 (default) is greedy and reproducible; above 0 samples")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling (with T > 0)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the recipe's seed)")
    parser.add_argument("--system", metavar="TEXT", help="a system message (chat templates)")
    parser.add_argument("--raw", action="store_true",
                        help="send the text as is: no chat template or training prompt format")


def add_parsers(commands: Any, compile_options: Any) -> None:
    chat = commands.add_parser(
        "chat", help="talk to a stage's model in the terminal (its chat template)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  recipe chat recipes/abel.yaml sft\n"
        "  recipe chat recipes/quickstart.yaml sft --temperature 0.7\n"
        "  printf 'What is 2+3?\\n' | recipe chat recipes/quickstart.yaml sft")
    compile_options(chat)
    chat.add_argument("stage", metavar="STAGE", help="the stage whose model to talk to")
    _generation_options(chat)

    generate = commands.add_parser(
        "generate", help="one completion from a stage's model (scriptable: --json)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  recipe generate recipes/quickstart.yaml sft --prompt 'What is 12+7?'\n"
        "  recipe generate recipes/abel.yaml dpo -p tiny --prompt 'What is 3*4?' --json\n"
        "  recipe generate recipes/abel.yaml sft --prompt - < prompts.txt   # one per line")
    compile_options(generate)
    generate.add_argument("stage", metavar="STAGE", help="the stage whose model to use")
    generate.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                          help="the prompt (repeatable; '-' reads one prompt per line "
                          "from standard input)")
    _generation_options(generate)
    generate.add_argument("--json", action="store_true", help="print the results as JSON")


def chat_command(args: argparse.Namespace) -> int:
    raise NotImplementedError("recipe chat")


def generate_command(args: argparse.Namespace) -> int:
    raise NotImplementedError("recipe generate")
