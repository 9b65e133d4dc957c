"""``recipe lock``, ``recipe diff``, and the lock checks of ``recipe plan`` and
``recipe run --locked``: what a reviewer of a recipe change reads.

Glue only (parse nothing, decide nothing): the lock's content and comparison are in
``compiler/lock.py``, the diff in ``compiler/diff.py``, file and hub I/O in
``lockfile.py``, git revisions in ``git_sides.py``, rendering in ``diff_report.py``.
Torch-free: ``recipe plan`` calls :func:`lock_note`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rich.markup import escape

from llm_recipe import lockfile
from llm_recipe.compiler import Plan, compile_recipe
from llm_recipe.compiler.lock import summary
from llm_recipe.errors import RecipeError
from llm_recipe.lockfile import check_lock, drift_error, relock_command, write_lock

EXIT_OK, EXIT_DIFFERENT = 0, 1


def lock_command(args: argparse.Namespace) -> int:
    """``recipe lock FILE [-p P]...``: write the lock beside the recipe."""
    plan = compile_recipe(Path(args.file), profiles=args.profile)
    path, document, warnings = write_lock(plan, Path(args.file), args.profile,
                                          display=args.file, lookup=lockfile.hub_commit)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    hub = document["hub"]
    pinned = sum(1 for ref in hub.values() if ref["commit"])
    refs = f"; hub: {pinned} of {len(hub)} pinned to a commit" if hub else ""
    print(f"wrote {path} ({len(document['stages'])} stages{refs})")
    return EXIT_OK


def lock_note(plan: Plan, args: argparse.Namespace) -> tuple[Plan, str | None]:
    """For ``recipe plan``: the plan with ``extra.lock`` when the recipe has a lock, and
    the line to print (None when there is no lock). Offline: hub commits are not asked."""
    try:
        check = check_lock(plan, Path(args.file), args.profile)
    except RecipeError as error:  # a broken lock does not stop a plan; --locked refuses it
        lock = {"file": str(lockfile.lock_path(Path(args.file), args.profile)),
                "state": "unreadable", "error": error.render()}
        plan = dataclasses.replace(plan, extra={**plan.extra, "lock": lock})
        return plan, f"[yellow]warning:[/] cannot read the lock: {escape(error.render())}"
    if not check.exists:
        return plan, None
    plan = dataclasses.replace(plan, extra={**plan.extra, "lock": check.to_dict()})
    if not check.drifts:
        return plan, escape(f"lock {check.display}: up to date")
    relock = relock_command(args.file, args.profile)
    return plan, "[yellow]warning:[/] " + escape(
        f"{check.display} is out of date: {summary(check.drifts)} "
        f"(`recipe run --locked` refuses to run it; `{relock}` accepts the change)")


def enforce_lock(plan: Plan, args: argparse.Namespace) -> None:
    """For ``recipe run --locked``: raise the drift (or a missing lock) as a RecipeError.

    Asks the hub for the commits of branch revisions (a moved branch is drift), unless
    ``HF_HUB_OFFLINE`` is set; lock entries that were never pinned are said on stderr.
    """
    from llm_recipe.compiler.compose import compose

    check = check_lock(plan, Path(args.file), args.profile, lookup=lockfile.hub_commit)
    if check.exists and not check.drifts:
        for key in check.unpinned:
            print(f"warning: {key} is unpinned in {check.display}: its commit is not checked",
                  file=sys.stderr)
        return
    where = compose(Path(args.file), profiles=args.profile, overrides=args.overrides,
                    display=args.file).where
    raise drift_error(check, args.file, args.profile, where)


def diff_command(args: argparse.Namespace) -> int:
    """``recipe diff A B``: 0 (1 with ``--exit-code`` when they differ), 2 bad input."""
    from llm_recipe.compiler.diff import diff_plans
    from llm_recipe.diff_report import json_diff, markdown_diff, print_diff
    from llm_recipe.git_sides import compile_side

    diff = diff_plans(compile_side(args.a, profiles=args.profile),
                      compile_side(args.b, profiles=args.profile))
    if args.json:
        sys.stdout.write(json_diff(diff))
    elif args.markdown:
        sys.stdout.write(markdown_diff(diff))
    else:
        from llm_recipe.report import make_console

        print_diff(diff, make_console())
    return EXIT_DIFFERENT if args.exit_code and not diff.empty else EXIT_OK
