#!/usr/bin/env bash
# Stage 3/3 of recipe quickstart (recipes/quickstart.yaml): eval
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: faf53b927b0d5b97cb89225d9f1631e53b8cb9cb4fda015ed5b2f71eddea7360
#   stage fingerprint: dbf28cbe3cd1353442cec13d6268655aa6e8a99cea54db78cea2aff198b87de6
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" eval "$@"
