"""``python -m llm_recipe.runtime PLAN.json STAGE [--force] [--inputs-verified]``.

Runs one stage of a written plan. This is what rendered launch scripts call (under
accelerate, torchrun, docker or srun; they pass their own arguments on): the plan is
the whole contract, so the process needs no recipe and no compiler pass. A fresh stage
is skipped unless ``--force`` (``recipe run --force`` reaches the runtime this way, so
the decision is taken where the stage runs, under its lock). Upstream outputs are
checked against their manifests' sha256 first, unless the caller just did
(``--inputs-verified``). Exit codes: 0 done or fresh, 2 bad plan or stage, 1 failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llm_recipe.errors import RecipeError

FLAGS = ("--force", "--inputs-verified")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    flags = {a for a in args if a.startswith("--")}
    args = [a for a in args if not a.startswith("--")]
    if len(args) != 2 or flags - set(FLAGS):
        print(f"usage: python -m llm_recipe.runtime PLAN.json STAGE [{'] ['.join(FLAGS)}]",
              file=sys.stderr)
        return 2
    forced, verified = "--force" in flags, "--inputs-verified" in flags
    plan_file, name = args
    from llm_recipe.runtime.distributed import die_with_launcher

    die_with_launcher()
    from llm_recipe.compiler.plan_types import read_plan_stage
    from llm_recipe.runtime.executor import current_status, execute_stage

    try:
        plan, stage = read_plan_stage(plan_file, name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = Path.cwd()
    from llm_recipe.runtime import hub_push

    try:
        if current_status(stage, root)["state"] == "fresh" and not forced:
            print(f"{name}: fresh, skipped")
            if hub_push.pending(stage, root):  # a push that failed before: try again
                _say_push(stage, hub_push.push(plan, stage, root))
            return 0
        outcome = execute_stage(plan, stage, root, fresh_start=forced,
                                inputs_verified=verified)
    except RecipeError as error:
        print(error.render(), file=sys.stderr)
        return int(getattr(error, "exit_code", 2))  # 3: a gate before this stage failed
    from llm_recipe.runtime.distributed import is_main

    if is_main():
        print(f"{name}: {outcome.action} in {outcome.wall_s:.1f}s -> {outcome.output}")
        if outcome.push is not None:
            _say_push(stage, outcome.push)
    return 0


def _say_push(stage: object, result: dict) -> None:
    """A push's result on stdout, or stderr when it failed; the stage is complete either
    way, so the exit code stays 0 (``recipe run`` reads push.json and reports it)."""
    from llm_recipe.runtime import hub_push

    failed = result.get("status") != "pushed"
    print(hub_push.describe(stage, result), file=sys.stderr if failed else sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
