"""``recipe validate``, ``plan``, ``render`` and ``report``: compile a recipe and print or
write what it compiles to. Torch-free, except ``plan --trace`` (imported when asked)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError, errors_json

EXIT_OK, EXIT_INTERNAL, EXIT_INVALID = 0, 1, 2


def validate_command(args: argparse.Namespace) -> int:
    files, as_json = args.files, args.json
    from llm_recipe.compiler import validate_recipe
    from llm_recipe.lockfile import is_lockfile

    results = []
    failed = False
    for file in files:
        if is_lockfile(file):  # `recipe validate recipes/*.yaml` beside committed locks
            results.append({"file": file, "ok": True, "skipped": "lockfile"})
            if not as_json:
                print(f"skip {file} (a lockfile: recipe lock writes it)")
            continue
        try:
            profiles = validate_recipe(file)
        except RecipeError as error:
            failed = True
            results.append({"file": file, "ok": False, **errors_json(error)})
            if not as_json:
                print(error.render(), file=sys.stderr)
            continue
        results.append({"file": file, "ok": True, "profiles": profiles})
        if not as_json:
            checked = f" (profiles: {', '.join(profiles)})" if profiles else ""
            print(f"ok  {file}{checked}")
    if as_json:
        print(json.dumps({"results": results}, indent=2))
    return EXIT_INVALID if failed else EXIT_OK


def plan_command(args: argparse.Namespace) -> int:
    from llm_recipe.compiler import compile_recipe

    if args.only is not None and not args.trace:
        raise RecipeError("--only needs --trace", hint="recipe plan FILE --trace --only STAGE")
    if args.trace and args.dag:
        raise RecipeError("--trace and --dag do not go together", hint="use one of them")
    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=not args.allow_missing_files)
    if args.trace:
        return _plan_trace(plan, args)
    if args.dag:
        from llm_recipe.compiler.dag import render_dag

        sys.stdout.write(render_dag(plan, args.dag))
        return EXIT_OK
    from llm_recipe.review_command import lock_note

    plan, note = lock_note(plan, args)  # extra.lock, and a line when the recipe has a lock
    if args.json:  # the plan alone: the same on every machine (--dry-run --json says more)
        sys.stdout.write(plan.to_json())
        return EXIT_OK
    from llm_recipe.compiler import preflight
    from llm_recipe.report import make_console, print_plan
    from llm_recipe.runtime.preflight import probe  # torch-free

    console = make_console()
    print_plan(plan, console)
    for line in preflight.summary(preflight.plan_blockers(plan, probe())):
        console.print(f"[yellow]note:[/] {line}", highlight=False)
    if note:
        console.print(note)
    return EXIT_OK


def _plan_trace(plan: Any, args: argparse.Namespace) -> int:
    """``recipe plan --trace``: the plan, then each stage's traced memory (torch, lazily)."""
    from llm_recipe.runtime import memtrace

    memtrace.check_only(plan, args.only)  # a wrong name fails before torch loads
    if not args.json:
        from llm_recipe.report import print_plan

        print_plan(plan)
        sys.stdout.flush()
    traces = memtrace.trace_plan(plan, only=args.only, raise_errors=args.debug,
                                 progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        data = plan.to_dict()
        by_stage = memtrace.traces_json(traces)
        for stage in data["stages"]:
            if stage["name"] in by_stage:
                stage["trace"] = by_stage[stage["name"]]
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    else:
        sys.stdout.write("\n" + memtrace.format_traces(traces))
    return EXIT_INTERNAL if any(t.status == "failed" for t in traces) else EXIT_OK


def render_command(args: argparse.Namespace) -> int:
    from llm_recipe.compiler import compile_recipe
    from llm_recipe.compiler.render import write_rendered

    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=not args.allow_missing_files)
    out = Path(args.out)
    for path in write_rendered(plan, out, name=f"-o {args.out}"):
        print(path)
    run_all = shlex.quote(str(out / "run_all.sh"))
    print(f"run from this directory (plan paths are relative to it):\n  bash {run_all}")
    return EXIT_OK


def report_command(args: argparse.Namespace) -> int:
    from llm_recipe.compiler import compile_recipe
    from llm_recipe.report_html import MissingDependency, write_report

    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=False)
    out = Path(args.out)
    try:
        size = write_report(plan, Path.cwd(), out)
    except MissingDependency as missing:
        print(missing.render(), file=sys.stderr)
        return EXIT_INTERNAL
    print(f"wrote {out} ({size / 1024:.0f} KB): open it in a browser, it needs no network")
    return EXIT_OK
