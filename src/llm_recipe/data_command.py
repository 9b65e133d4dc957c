"""``recipe data FILE STAGE [--n 5]``: the first examples exactly as the stage trains on them.

The CLI edge only: arguments and printing. Preparing the examples is
:mod:`llm_recipe.runtime.data.preview`, through the stage's own data path.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

MASKED_OPEN = "[masked: "
MASKED_CLOSE = "]"
"""Plain output (not a terminal, or ``NO_COLOR``) wraps the spans outside the loss in
these markers; on a terminal trained tokens are green and masked ones dim."""


def add_parser(commands: Any, compile_options: Any) -> None:
    data = commands.add_parser(
        "data", help="show a stage's first examples as it will train on them (tokens, loss mask)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show the first examples of a stage's training data as the stage will\n"
        "see them: the rendered prompt and template, the tokens, and which tokens count in\n"
        "the loss; for preference data, prompt / chosen / rejected; for RL and eval\n"
        "stages, the prompts as rendered for generation. Trains nothing and writes\n"
        "nothing to the stage's folder (tokenized data goes to the shared cache).\n\n"
        "On a terminal, tokens in the loss are green and masked ones dim; otherwise\n"
        "masked spans are written as [masked: ...].",
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
    """Compile the recipe, prepare the examples through the stage's own data path, print."""
    import contextlib
    from pathlib import Path

    from llm_recipe.compiler import compile_recipe

    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides)
    from llm_recipe.command_line import recipe_command

    # stray prints of the ML libraries go to stderr: stdout is the examples (or JSON)
    with contextlib.redirect_stdout(sys.stderr):
        from llm_recipe.runtime.data.preview import preview

        result = preview(plan, args.stage, Path.cwd(), n=args.n, validation=args.validation,
                         command=recipe_command(args)).to_json()
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    write(result, sys.stdout, tokens=args.tokens, color=_color(sys.stdout))
    return 0


def _color(out: TextIO) -> bool:
    import os

    return out.isatty() and not os.environ.get("NO_COLOR")


# ---------------------------------------------------------------------- printing


def write(result: dict[str, Any], out: TextIO, *, tokens: bool = False,
          color: bool = False) -> None:
    """Print a preview (the JSON shape of ``Preview.to_json``): a header, then each
    example in its kind's view. Plain text unless ``color`` (rich styles, a terminal)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=out, force_terminal=color, no_color=not color, highlight=False,
                      soft_wrap=True, emoji=False, markup=False)
    for i, line in enumerate(header(result)):
        console.print(Text(line, style="bold" if i == 0 else "dim"))
    examples = result["examples"]
    if not examples:
        console.print("no examples: the data is empty after preparation")
    view = {"tokens": _token_view, "blocks": _token_view, "preference": _pair_view,
            "prompts": _prompt_view}[result["shape"]]
    for example in examples:
        console.print()
        view(console, example, result, tokens=tokens)


def header(result: dict[str, Any]) -> list[str]:
    """The lines before the examples: stage, data, tokenizer, what the stage logged."""
    total = result.get("total")
    shown = len(result["examples"])
    of = f" (first {shown} of {total:,})" if total is not None else f" (first {shown})"
    split = "validation data" if result["split"] == "validation" else "data"
    lines = [f"stage {result['stage']} ({result['kind']}): {split} {result['dataset']}{of}",
             f"tokenizer: {result['tokenizer']}"]
    lines += result.get("notes") or []
    return lines


def title(example: dict[str, Any], result: dict[str, Any]) -> str:
    """One example's heading line: its number and counts."""
    shape = result["shape"]
    number = example["index"] + 1
    if shape == "tokens":
        packed = (f", {len(example['seq_lengths'])} packed sequences"
                  if example.get("seq_lengths") else "")
        return (f"-- example {number}: {example['tokens']} tokens, {example['in_loss']} in "
                f"the loss{packed}")
    if shape == "blocks":
        where = f"phase {example['phase']}, " if example.get("phase") else ""
        ended = example.get("documents_ended")
        docs = f", {ended} document(s) end in it" if ended is not None else ""
        return f"-- block {number}: {where}{example['tokens']} tokens, all in the loss{docs}"
    if shape == "preference":
        counts = ", ".join(f"{part} {example[part + '_tokens']}"
                           for part in ("prompt", "chosen", "rejected")
                           if part + "_tokens" in example)
        return f"-- pair {number}: tokens: {counts}"
    variant = f" ({example['variant']})" if example.get("variant") else ""
    return f"-- prompt {number}{variant}: {example['tokens']} tokens"


def plain_spans(spans: list[dict[str, Any]]) -> str:
    """The text with the spans outside the loss wrapped in ``[masked: ...]``."""
    return "".join(s["text"] if s["in_loss"] else f"{MASKED_OPEN}{s['text']}{MASKED_CLOSE}"
                   for s in spans)


def token_table(example: dict[str, Any]) -> list[str]:
    """``--tokens``: position, id, the token's string (repr) and whether it is in the loss."""
    rows = [("pos", "id", "token", "loss")]
    for pos, (token_id, piece, mask) in enumerate(zip(
            example["input_ids"], example["pieces"], example["loss_mask"], strict=True)):
        rows.append((str(pos), str(token_id), repr(piece), "yes" if mask else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return ["  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]),
                       row[2].ljust(widths[2]), row[3]]).rstrip() for row in rows]


def _token_view(console: Any, example: dict[str, Any], result: dict[str, Any], *,
                tokens: bool) -> None:
    from rich.text import Text

    console.print(Text(title(example, result), style="bold"))
    if console.no_color:
        console.print(plain_spans(example["spans"]))
    else:
        text = Text()
        for span in example["spans"]:
            text.append(span["text"], style="green" if span["in_loss"] else "dim")
        console.print(text)
    if tokens:
        for line in token_table(example):
            console.print(line)


def _pair_view(console: Any, example: dict[str, Any], result: dict[str, Any], *,
               tokens: bool) -> None:
    from rich.text import Text

    console.print(Text(title(example, result), style="bold"))
    for part in ("prompt", "chosen", "rejected"):
        if part in example:
            console.print(Text(f"{part}:", style="cyan"))
            console.print(example[part])


def _prompt_view(console: Any, example: dict[str, Any], result: dict[str, Any], *,
                 tokens: bool) -> None:
    from rich.text import Text

    console.print(Text(title(example, result), style="bold"))
    console.print(example["text"])
    if example.get("reference") is not None:
        console.print(Text(f"reference: {example['reference']}", style="dim"))
