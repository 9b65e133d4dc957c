"""``recipe clean``: remove workspace folders that no longer match the recipe.

The decision is :func:`llm_recipe.compiler.clean.clean_candidates` (torch-free, read
only); this prints it and, unless ``--dry-run``, deletes at the edge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.clean import KEPT, clean_candidates, remove
from llm_recipe.compiler.workspace_status import short_bytes


def clean_command(args: argparse.Namespace) -> int:
    root = Path.cwd()
    plan = compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=False)
    both = not (args.stale or args.removed)
    found = clean_candidates(plan, root, stale=args.stale or both, removed=args.removed or both)
    if not args.dry_run:
        for candidate in found:
            remove(candidate, root)
    freed = sum(c.bytes for c in found if c.action != KEPT)
    if args.json:
        print(json.dumps({"workspace": plan.workspace, "dry_run": args.dry_run,
                          "freed_bytes": freed, "folders": [c.to_dict() for c in found]},
                         indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for candidate in found:
        if candidate.action == KEPT:
            print(f"keep          {candidate.path}  ({candidate.reason})")
        else:
            print(f"{verb:<13} {candidate.path}  {short_bytes(candidate.bytes)}  "
                  f"({candidate.action}: {candidate.reason})")
    removed = [c for c in found if c.action != KEPT]
    if not removed:
        print(f"nothing to clean in {plan.workspace}/")
    else:
        total = "would free" if args.dry_run else "freed"
        print(f"{len(removed)} folder(s), {total} {short_bytes(freed)}")
    return 0
