"""The command line a user would type for a recipe, for hints ("run it first: ...")."""

from __future__ import annotations

import argparse
import shlex


def recipe_command(args: argparse.Namespace, command: str = "run") -> str:
    """``recipe COMMAND FILE -p P... --set PATH=VALUE...``: the recipe as the user named it
    (same profiles and overrides, in order), quoted for a shell."""
    words = ["recipe", command, args.file]
    for profile in getattr(args, "profile", None) or ():
        words += ["-p", profile]
    for override in getattr(args, "overrides", None) or ():
        words += ["--set", override]
    return shlex.join(words)
