"""The ``recipe`` command: parse arguments, call the library, map errors to exit codes.

Exit codes: 0 ok; 2 bad recipe or bad usage (a RecipeError, printed without a
traceback); 1 an internal error (a bug: ``--debug`` shows the traceback) or a stage that
failed; 3 an eval gate failed (``recipe run``: the stages after it did not run); 130
interrupted. A reader that leaves early (``recipe plan r.yaml | head -1``) is not an
error: the command stops writing and exits 0, quietly, as ``git log | head`` does.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence

from llm_recipe import __version__
from llm_recipe.errors import RecipeError, errors_json

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as RecipeError-style lines with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n  hint: recipe {self.prog.split()[-1]} --help\n")
        sys.exit(EXIT_INVALID)


def _compile_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="recipe YAML file")
    parser.add_argument(
        "--profile",
        "-p",
        action="append",
        default=[],
        metavar="NAME",
        help="apply a profile from the recipe (repeatable, in order)",
    )
    parser.add_argument(
        "--set",
        "-s",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a setting, e.g. stages.sft.train.lr=1e-4",
    )


def _allow_missing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-missing-files", action="store_true",
                        help="a local data or model file that is not here is a warning, not "
                        "an error (planning or rendering for another machine)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="recipe", description="Compile YAML training recipes into plans and runs."
    )
    parser.add_argument("--version", action="version", version=f"llm-recipe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = commands.add_parser("validate", help="check recipes and each of their profiles")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("--json", action="store_true", help="machine-readable result")

    plan = commands.add_parser("plan", help="compile a recipe and print its plan")
    _compile_options(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--dag", choices=["mermaid", "dot"], help="print the stage graph")
    plan.add_argument("--trace", action="store_true",
                      help="also run one training step per stage on fake tensors (torch, no "
                      "GPU) and print its measured memory beside the estimate")
    plan.add_argument("--only", metavar="STAGE", help="with --trace: trace just this stage")
    _allow_missing(plan)

    run = commands.add_parser("run", help="execute a recipe stage by stage (skips fresh stages)")
    _compile_options(run)
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--only", metavar="STAGE", help="run just this stage (upstream must be fresh)"
    )
    scope.add_argument("--from", dest="start", metavar="STAGE",
                       help="run this stage and everything downstream of it")
    force = run.add_mutually_exclusive_group()
    force.add_argument("--force", action="append", default=[], metavar="STAGE",
                       help="re-run this stage from scratch even if fresh (repeatable)")
    force.add_argument("--force-all", action="store_true", help="re-run every stage in scope")
    run.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    run.add_argument("--locked", action="store_true",
                     help="refuse (exit 2) when the recipe has drifted from its lockfile")
    output = run.add_mutually_exclusive_group()
    output.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    output.add_argument("--json", action="store_true", help="print the outcome as JSON")

    render = commands.add_parser("render", help="write launch scripts for a recipe's plan")
    _compile_options(render)
    render.add_argument("-o", "--out", required=True, metavar="DIR",
                        help="folder for plan.json, run_all.sh and the stage scripts")
    _allow_missing(render)

    status = commands.add_parser(
        "status", help="what the workspace holds for each stage (read-only, no torch)")
    _compile_options(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    logs = commands.add_parser("logs", help="print a stage's train.log (-f: follow its run)")
    _compile_options(logs)
    logs.add_argument("stage", metavar="STAGE", help="the stage whose log to print")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines until the stage's run ends")
    logs.add_argument("-n", "--lines", type=int, metavar="N",
                      help="start with the last N lines (default: the whole log)")

    report = commands.add_parser(
        "report", help="write one self-contained HTML report of the workspace")
    _compile_options(report)
    report.add_argument("-o", "--out", default="report.html", metavar="FILE",
                        help="the HTML file to write (default: report.html)")

    lock = commands.add_parser(
        "lock", help="write the recipe's lockfile (resolved plan, hub commits, versions)")
    lock.add_argument("file", help="recipe YAML file")
    lock.add_argument("--profile", "-p", action="append", default=[], metavar="NAME",
                      help="apply a profile (repeatable, in order): one lock per combination")

    diff = commands.add_parser(
        "diff", help="what changes between two recipes (FILE or FILE@GITREV), stage by stage")
    diff.add_argument("a", metavar="A", help="recipe file, or path@REV (e.g. r.yaml@HEAD~1)")
    diff.add_argument("b", metavar="B", help="recipe file, or path@REV")
    diff.add_argument("--profile", "-p", action="append", default=[], metavar="NAME",
                      help="apply a profile to both sides (repeatable, in order)")
    diff_format = diff.add_mutually_exclusive_group()
    diff_format.add_argument("--markdown", action="store_true", help="for a pull request")
    diff_format.add_argument("--json", action="store_true", help="for tools")
    diff.add_argument("--exit-code", action="store_true",
                      help="exit 1 when the plans differ (like git diff --exit-code)")

    clean = commands.add_parser(
        "clean", help="remove workspace folders that no longer match the recipe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Remove stale stage folders (outputs of another config) and folders of\n"
        "stages the recipe no longer has. Fresh stages, resumable checkpoints of the\n"
        "current config, locked (running) stages, symlinks and .cache/ are never touched.",
        epilog="examples:\n"
        "  recipe clean recipes/abel.yaml --dry-run    # list what would go, delete nothing\n"
        "  recipe clean recipes/abel.yaml -p tiny      # stale and removed stages of tiny\n"
        "  recipe clean recipes/abel.yaml --stale      # only stages of another config")
    _compile_options(clean)
    clean.add_argument("--stale", action="store_true",
                       help="only stage folders whose outputs are of another config")
    clean.add_argument("--removed", action="store_true",
                       help="only folders of stages the recipe no longer has")
    clean.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    clean.add_argument("--json", action="store_true", help="print the result as JSON")

    init = commands.add_parser(
        "init", help="write a commented starter recipe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a starter recipe (valid as written; its `tiny` profile runs on a\n"
        "CPU offline). An existing file is never overwritten.",
        epilog="examples:\n"
        "  recipe init                                 # sft-lora template -> recipe.yaml\n"
        "  recipe init --template sft-dpo -o dpo.yaml\n"
        "  recipe init -o r.yaml && recipe run r.yaml -p tiny")
    init.add_argument("--template", "-t", choices=["sft-lora", "sft-dpo", "pretrain"],
                      default="sft-lora", help="what the recipe does (default: sft-lora)")
    init.add_argument("-o", "--out", default="recipe.yaml", metavar="FILE",
                      help="the file to write (default: recipe.yaml)")

    from llm_recipe import chat_command, data_command, export_command

    export_command.add_parser(commands, _compile_options)
    chat_command.add_parsers(commands, _compile_options)
    data_command.add_parser(commands, _compile_options)

    commands.add_parser(
        "schema", help="print the recipe JSON Schema for editors (recipes as written)")
    for name, sub in commands.choices.items():
        if name in _EXAMPLES and sub.epilog is None:
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
            sub.epilog = "examples:\n" + "\n".join(map(_example, _EXAMPLES[name]))
    return parser


def _example(line: str) -> str:
    """``  recipe ...   # note``, notes aligned."""
    command, _, note = line.partition("#")
    return f"  {command.rstrip():<42} # {note.strip()}" if note else f"  {command.rstrip()}"


_EXAMPLES = {
    "validate": ["recipe validate recipes/abel.yaml        # the recipe and each profile",
                 "recipe validate recipes/*.yaml --json    # for CI"],
    "plan": ["recipe plan recipes/abel.yaml -p tiny",
             "recipe plan recipes/abel.yaml -s stages.sft.train.lr=1e-4 --json",
             "recipe plan recipes/abel.yaml --dag mermaid"],
    "run": ["recipe run recipes/abel.yaml -p tiny       # on a CPU, in minutes",
            "recipe run recipes/abel.yaml --dry-run     # what would run, and why",
            "recipe run recipes/abel.yaml --from dpo --force dpo"],
    "render": ["recipe render recipes/abel.yaml -o launch/",
               "recipe render recipes/abel.yaml -p tiny -o launch/ && bash launch/run_all.sh"],
    "status": ["recipe status recipes/abel.yaml -p tiny",
               "recipe status recipes/abel.yaml --json"],
    "logs": ["recipe logs recipes/abel.yaml sft -n 20",
             "recipe logs recipes/abel.yaml sft -f      # follow the running stage"],
    "report": ["recipe report recipes/abel.yaml -p tiny",
               "recipe report recipes/abel.yaml -o runs/abel.html"],
    "schema": ["recipe schema > recipe.schema.json",
               "recipe schema | jq '.properties | keys'"],
    "lock": ["recipe lock recipes/abel.yaml               # recipes/abel.lock.yaml",
             "recipe lock recipes/abel.yaml -p tiny",
             "recipe run recipes/abel.yaml --locked     # refuse a drifted recipe"],
    "diff": ["recipe diff recipes/abel.yaml@HEAD~1 recipes/abel.yaml",
             "recipe diff a.yaml b.yaml --markdown      # for a pull request",
             "recipe diff a.yaml b.yaml --exit-code     # exit 1 when the plans differ"],
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe fails here, not in Python's flush at exit
        return code
    except RecipeError as error:
        if getattr(args, "json", False):
            print(json.dumps(errors_json(error), indent=2))
        else:
            print(error.render(), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `recipe status --json | head`: the reader left; the rest is not wanted.
        _quiet_stdout()
        return EXIT_OK
    except Exception as exc:
        problem = _environment_problem(exc)
        if problem is not None:  # the machine's state, not a bug: no traceback, even with --debug
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_INTERNAL
        if args.debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "  this is a bug in llm-recipe; rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so Python's flush at exit does not fail on a closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_NO_SPACE = {errno.ENOSPC: "no space left on device"}
if hasattr(errno, "EDQUOT"):
    _NO_SPACE[errno.EDQUOT] = "no space left on device (disk quota exceeded)"
_DENIED = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
           errno.EROFS: "read-only file system"}


def _environment_problem(exc: BaseException) -> str | None:
    """One line for an OSError that is the machine's state (disk full, no permission).

    A full disk or a read-only folder at start-up is not a bug in llm-recipe, and
    "internal error ... rerun with --debug" sends the user looking in the wrong place.
    The OSError may be the exception itself or what it was raised from.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            name = "a file" if current.filename is None else str(current.filename)
            if current.errno in _NO_SPACE:
                return (f"{_NO_SPACE[current.errno]} writing {name}; "
                        "free some space or use another disk")
            if current.errno == errno.EROFS:
                return f"{_DENIED[current.errno]}: cannot write {name}"
            if current.errno in _DENIED:
                return f"{_DENIED[current.errno]}: {name}"
        current = current.__cause__ or current.__context__
    return None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from llm_recipe.compiler.authoring import authoring_schema_text

        sys.stdout.write(authoring_schema_text())
        return EXIT_OK
    if args.command in ("validate", "plan", "render", "report"):
        from llm_recipe import plan_command

        return {"validate": plan_command.validate_command, "plan": plan_command.plan_command,
                "render": plan_command.render_command,
                "report": plan_command.report_command}[args.command](args)
    if args.command == "run":
        from llm_recipe.run_command import run_command

        return run_command(args)
    if args.command == "status":
        from llm_recipe.status_command import status_command

        return status_command(args)
    if args.command == "logs":
        from llm_recipe.status_command import logs_command

        return logs_command(args)
    if args.command in ("lock", "diff"):
        from llm_recipe import review_command

        return review_command.lock_command(args) if args.command == "lock" \
            else review_command.diff_command(args)
    if args.command == "clean":
        from llm_recipe.clean_command import clean_command

        return clean_command(args)
    if args.command == "init":
        from llm_recipe.init_command import init_command

        return init_command(args)
    if args.command == "export":
        from llm_recipe.export_command import export_command

        return export_command(args)
    if args.command in ("chat", "generate"):
        from llm_recipe import chat_command

        return chat_command.chat_command(args) if args.command == "chat" \
            else chat_command.generate_command(args)
    if args.command == "data":
        from llm_recipe.data_command import data_command

        return data_command(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
