"""``recipe chat`` and ``recipe generate``: try a stage's model without writing code.

The CLI edge only: arguments, the read-reply loop and printing. Rendering prompts and
generating is :mod:`llm_recipe.runtime.generate` (torch, imported when a command runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from llm_recipe.errors import RecipeError

if TYPE_CHECKING:
    from llm_recipe.runtime.generate import Generator

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


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
        "  recipe chat recipes/quickstart.yaml sft < questions.txt   # one reply per line")
    compile_options(chat)
    chat.add_argument("stage", metavar="STAGE", help="the stage whose model to talk to")
    _generation_options(chat)
    chat.add_argument("--show-prompt", action="store_true",
                      help="print each prompt as the model sees it (rendered) on stderr")

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
    """Read a line, reply, until /exit, Ctrl-D or Ctrl-C (all exit 0).

    With a chat template the conversation is kept (multi-turn) until /reset; without
    one each line is its own prompt in the training format. Interactive (a TTY): a
    ``>>>`` prompt, and replies streamed as they are generated. Piped: one reply per
    input line on stdout and nothing else, so it can be scripted and tested.
    """
    generator = _generator(args)
    interactive = sys.stdin.isatty()
    stream = sys.stdout.isatty()
    multi_turn = generator.format.multi_turn
    if not multi_turn:
        _note("each line is a prompt of its own (no history: the model is not prompted "
              "with a chat template)")
    if interactive:
        _note(f"{RESET_COMMAND} forgets the conversation, {EXIT_COMMANDS[0]} or Ctrl-D quits")
    history: list[dict[str, str]] = []
    try:
        for line in _lines(sys.stdin, interactive):
            text = line.strip()
            if not text:
                continue
            if text in EXIT_COMMANDS:
                break
            if text == RESET_COMMAND:
                history.clear()
                if interactive:
                    _note("conversation reset")
                continue
            done = generator.complete(text, history=history if multi_turn else (),
                                      system=args.system, stream=stream)
            if args.show_prompt:
                _note(f"prompt: {done.rendered!r}")
            if not stream:
                print(done.completion, flush=True)
            if multi_turn:
                history += [{"role": "user", "content": text},
                            {"role": "assistant", "content": done.completion}]
    except KeyboardInterrupt:  # Ctrl-C ends a chat, like Ctrl-D: not an error
        if interactive:
            print(file=sys.stderr)
    return 0


def generate_command(args: argparse.Namespace) -> int:
    """One completion per prompt: the text alone on stdout (meta on stderr), or --json."""
    prompts = expand_prompts(args.prompt, sys.stdin)
    generator = _generator(args)
    results = []
    for prompt in prompts:
        done = generator.complete(prompt, system=args.system)
        results.append(done)
        if not args.json:
            print(done.completion, flush=True)
            _note(f"{done.new_tokens} tokens, {done.finish_reason}, {done.seconds:.2f}s")
    if args.json:
        finished = generator.finished
        print(json.dumps({
            "stage": finished.stage.name, "fingerprint": finished.fingerprint,
            "stale": finished.stale_reason, "prompt_format": generator.format.kind,
            "generation": {"max_new_tokens": generator.settings.max_new_tokens,
                           "temperature": generator.settings.temperature,
                           "top_p": generator.settings.top_p,
                           "seed": generator.settings.seed},
            "results": [r.to_dict() for r in results]}, indent=2, ensure_ascii=False))
    return 0


def expand_prompts(given: Iterable[str], stdin: TextIO) -> list[str]:
    """The prompts in order, ``-`` replaced by standard input's non-empty lines."""
    prompts: list[str] = []
    for prompt in given:
        if prompt == "-":
            prompts += [line.rstrip("\r\n") for line in stdin if line.strip()]
        else:
            prompts.append(prompt)
    if not prompts:
        raise RecipeError("no prompt to complete: standard input had no lines",
                          hint="recipe generate FILE STAGE --prompt 'What is 2+3?'")
    return prompts


def run_hint(args: argparse.Namespace) -> str:
    """The command that makes the stage's output: the recipe run as the user named it."""
    from llm_recipe.command_line import recipe_command

    return recipe_command(args)


def _generator(args: argparse.Namespace) -> Generator:
    """Compile, find the stage's finished output (user errors before torch loads), load."""
    from llm_recipe.compiler import compile_recipe
    from llm_recipe.runtime import generate
    from llm_recipe.runtime.stage_output import finished_stage

    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=False)  # the model is made; data is not read
    finished = finished_stage(plan, args.stage, Path.cwd(), run_hint=run_hint(args))
    options = generate.settings(plan, finished.stage, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if finished.stale_reason:
        _note(f"warning: stage {finished.stage.name}'s output is not of the recipe's current "
              f"config ({finished.stale_reason}); using it as it is")
    generator = generate.Generator(finished, options, raw=args.raw)
    _note(f"stage {finished.stage.name} ({finished.stage.output.type}, fingerprint "
          f"{finished.fingerprint[:12]}); prompt: {generator.format.description}; "
          f"{options.describe()}")
    if args.system and not generator.format.multi_turn:
        _note("warning: --system needs a chat template: ignored")
    return generator


def _lines(stdin: TextIO, interactive: bool) -> Iterator[str]:
    """Input lines: ``input(">>> ")`` on a terminal (line editing), else stdin's lines."""
    if not interactive:
        yield from stdin
        return
    with contextlib.suppress(ImportError):  # line editing and history for input()
        import readline  # noqa: F401
    while True:
        try:
            yield input(">>> ")
        except EOFError:  # Ctrl-D
            print(file=sys.stderr)
            return


def _note(text: str) -> None:
    """Meta for the person (stderr): stdout carries only the model's words."""
    print(f"[recipe] {text}", file=sys.stderr, flush=True)
