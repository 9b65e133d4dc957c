"""``recipe run``: compile, execute, report. Kept apart from cli.py so ``recipe plan``
never imports the runtime."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from llm_recipe.compiler import Plan, compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.executor import RunOptions, StageFailed, run_plan
from llm_recipe.runtime.workspace import atomic_write_text

EXIT_OK, EXIT_FAILED = 0, 1


def run_command(args: argparse.Namespace) -> int:
    root = Path.cwd()
    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides)
    _check_launchers(plan)
    options = RunOptions(only=args.only, start=args.start, force=frozenset(args.force),
                         force_all=args.force_all, dry_run=args.dry_run)
    if not args.dry_run:
        atomic_write_text(root / plan.workspace / "plan.json", plan.to_json())
    from llm_recipe.progress import RichProgress, summary_table
    from llm_recipe.report import make_console

    console = make_console(stderr=True, quiet=args.quiet or args.json)

    progress = None if args.quiet or args.json else RichProgress(console)
    try:
        outcomes = run_plan(plan, root, options, progress=progress)
    except StageFailed as failed:
        if progress:
            progress.close()
        if args.debug:
            raise failed.cause from None
        print(f"{failed}\n  the traceback is in {failed.log}\n"
              "  fix the cause and run again: completed stages are kept, an interrupted "
              "one resumes from its last checkpoint", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if progress:
            progress.close()
        print("interrupted: run again to resume from the last complete checkpoint",
              file=sys.stderr)
        return 130
    if progress:
        progress.close()
    if args.json:
        print(json.dumps({"recipe": plan.recipe["name"], "workspace": plan.workspace,
                          "stages": [asdict(o) for o in outcomes]}, indent=2, default=str))
    elif not args.quiet:
        make_console().print(summary_table(outcomes))
    return EXIT_OK


def _check_launchers(plan: Plan) -> None:
    """Until launch scripts are rendered, run only stages whose launcher is local."""
    remote = sorted({s.launcher["name"] for s in plan.stages} - {"local"})
    if remote:
        raise RecipeError(
            f"this recipe launches stages with {', '.join(remote)}; recipe run executes "
            "local stages",
            hint="use a CPU profile (-p tiny) or --set compute.launcher=local",
        )
