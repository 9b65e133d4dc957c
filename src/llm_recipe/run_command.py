"""``recipe run``: compile, execute, report. Kept apart from cli.py so ``recipe plan``
never imports the runtime."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from llm_recipe.compiler import Plan, compile_recipe, preflight
from llm_recipe.compiler.plan import StagePlan
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.executor import (
    Launch,
    RunOptions,
    StageFailed,
    StageOutcome,
    check_devices,
    outcome_from_manifest,
    run_id,
    run_plan,
)
from llm_recipe.runtime.gates import EXIT_GATE, GateFailed
from llm_recipe.runtime.workspace import atomic_write_text

EXIT_OK, EXIT_FAILED = 0, 1
"""Exit codes of ``recipe run``: also 2 (a RecipeError: bad recipe, usage, missing tracking
package) and 3 (:data:`EXIT_GATE`: a gate failed; the stages after it did not run)."""


def run_command(args: argparse.Namespace) -> int:
    root = Path.cwd()
    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides)
    if getattr(args, "locked", False):  # before anything is written or run, --dry-run too
        from llm_recipe.review_command import enforce_lock

        enforce_lock(plan, args)
    options = RunOptions(only=args.only, start=args.start, force=frozenset(args.force),
                         force_all=args.force_all, dry_run=args.dry_run)
    cannot_run = _cannot_run_here(plan, root, options)
    options = replace(options, cannot_run=cannot_run)
    if cannot_run and not args.dry_run:  # refuse before the first stage starts
        message, hint = preflight.refusal(cannot_run)
        raise RecipeError(message, hint=hint)
    if cannot_run and not (args.quiet or args.json):  # --dry-run: said first, then the table
        print("\n".join(preflight.describe(cannot_run)), file=sys.stderr)
    launch = None
    if not args.dry_run:
        atomic_write_text(root / plan.workspace / "plan.json", plan.to_json())
        launch = _script_launcher(plan, root, quiet=args.quiet or args.json)
    from llm_recipe.progress import RichProgress, comparison_tables, summary_table, variant_table
    from llm_recipe.report import make_console

    console = make_console(stderr=True, quiet=args.quiet or args.json)

    progress = None if args.quiet or args.json else RichProgress(console)
    gate_failed: GateFailed | None = None
    # Libraries print to stdout (DeepSpeed's accelerator notice, trainer banners): under
    # --json or -q stdout carries only the result, so their lines go to stderr.
    chatter = contextlib.redirect_stdout(sys.stderr) if (
        args.json or args.quiet) else contextlib.nullcontext()
    try:
        with chatter:
            outcomes = run_plan(plan, root, options, progress=progress, launch=launch)
    except GateFailed as failed:  # what could run ran; the summary still shows it
        gate_failed, outcomes = failed, getattr(failed, "outcomes", [])
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
        result = {"recipe": plan.recipe["name"], "workspace": plan.workspace,
                  "stages": [asdict(o) for o in outcomes]}
        if gate_failed is not None:
            result["gate_failed"] = gate_failed.to_dict()
        if "matrix" in plan.extra:  # which stage copies make up each variant
            result["variants"] = {v["name"]: v["stages"]
                                  for v in plan.extra["matrix"]["variants"]}
        print(json.dumps(result, indent=2, default=str))
    elif not args.quiet:
        out = make_console()
        out.print(summary_table(outcomes))
        variants = variant_table(plan, outcomes, root)  # a matrix: the variants side by side
        # An eval copied per variant is a column of the variants' table, not a table.
        shown = outcomes if variants is None else [o for o in outcomes if "@" not in o.name]
        for table in comparison_tables(shown, root):
            out.print()
            out.print(table)
        if variants is not None:
            out.print()
            out.print(variants)
    if gate_failed is not None:
        print(gate_failed.render(), file=sys.stderr)
        return EXIT_GATE
    failed_pushes = [o for o in outcomes if o.kind == "push" and o.action == "push failed"]
    for row in failed_pushes:
        print(f"error: cannot push the output of stage {row.name} to the Hub "
              f"({row.output.removeprefix('hf://')}): {row.reason}\n"
              "  the stage is complete and its output kept; `recipe run` pushes it again "
              "when the hub is reachable", file=sys.stderr)
    return EXIT_FAILED if failed_pushes else EXIT_OK


def _cannot_run_here(plan: Plan, root: Path, options: RunOptions) -> dict[str, list[str]]:
    """{stage: reasons} for the stages this run would start that this machine cannot run.

    A stage runs when it is not fresh, when it is forced, or when a stage it waits for
    runs (its inputs change)."""
    from llm_recipe.runtime.executor import current_status, is_forced, select
    from llm_recipe.runtime.preflight import probe

    running: list[str] = []
    for stage in select(plan, options):
        if (is_forced(stage, options) or set(stage.upstream) & set(running)
                or current_status(stage, root)["state"] != "fresh"):
            running.append(stage.name)
    return preflight.plan_blockers(plan, probe(), running) if running else {}


def _script_launcher(plan: Plan, root: Path, *, quiet: bool) -> Launch | None:
    """Run non-local stages through the scripts ``recipe render`` writes, so what a user
    reviews (``<workspace>/launch/``) is exactly what runs."""
    if all(s.launcher["name"] == "local" for s in plan.stages):
        return None
    from llm_recipe.compiler.render import write_rendered

    folder = root / plan.workspace / "launch"
    write_rendered(plan, folder)

    def launch(stage: StagePlan, forced: bool) -> StageOutcome:
        if stage.launcher["name"] in ("accelerate", "torchrun"):
            check_devices(stage)  # these start their processes on this machine
        script = folder / "stages" / f"{stage.index + 1:02d}-{stage.name}.sh"
        # The runtime inside the script takes the force decision (it owns the workspace
        # under its lock); inputs were verified here, just before.
        extra = ["--inputs-verified", *(["--force"] if forced else [])]
        if not quiet:
            print(f"{stage.name}: {stage.launcher['name']} via {script.relative_to(root)} "
                  f"{' '.join(extra)}", file=sys.stderr)
        before, started = run_id(stage, root), time.time()
        done = subprocess.run(["bash", str(script), *extra], cwd=root,
                              stdout=subprocess.DEVNULL if quiet else None)
        log = root / stage.dir / "train.log"
        if done.returncode != 0:
            raise StageFailed(stage.name, log, RuntimeError(
                f"{script.name} exited with {done.returncode}"))
        return outcome_from_manifest(stage, root, before, time.time() - started)

    return launch
