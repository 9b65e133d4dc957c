"""``python -m llm_recipe.runtime PLAN.json STAGE``: run one stage of a written plan.

This is what rendered launch scripts call (under accelerate, torchrun, docker or srun):
the plan is the whole contract, so the process needs no recipe and no compiler pass.
A fresh stage is skipped. Exit codes: 0 done or fresh, 2 bad plan or stage, 1 failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llm_recipe.errors import RecipeError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m llm_recipe.runtime PLAN.json STAGE", file=sys.stderr)
        return 2
    plan_file, name = args
    from llm_recipe.compiler.plan import Plan
    from llm_recipe.runtime.executor import current_status, execute_stage

    try:
        plan = Plan.from_dict(json.loads(Path(plan_file).read_text("utf-8")))
        stage = plan.stage(name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: cannot run {name!r} from {plan_file}: {exc}", file=sys.stderr)
        return 2
    root = Path.cwd()
    try:
        if current_status(stage, root)["state"] == "fresh":
            print(f"{name}: fresh, skipped")
            return 0
        outcome = execute_stage(plan, stage, root)
    except RecipeError as error:
        print(error.render(), file=sys.stderr)
        return 2
    from llm_recipe.runtime.distributed import is_main

    if is_main():
        print(f"{name}: {outcome.action} in {outcome.wall_s:.1f}s -> {outcome.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
