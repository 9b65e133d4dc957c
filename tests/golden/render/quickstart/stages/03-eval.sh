#!/usr/bin/env bash
# Stage 3/3 of recipe quickstart (recipes/quickstart.yaml): eval
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: c6aff306ed4832c1e3bf8aff25423450efe9e2c3013675676ba6074625f5a884
#   stage fingerprint: 98baa8632eee65408ff47c3b43159684146e6d50c01e811d3ec37fb6c3443fcc
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" eval "$@"
