#!/usr/bin/env bash
# Stage 1/3 of recipe quickstart (recipes/quickstart.yaml): pretrain
#   kind: pretrain; launcher: local, 1 node x 1 process
#   global batch: 16 per device x 1 accumulation x 1 process = 16
#   plan fingerprint: 6d3b9da6ddef7ac8541d0b36bdf69bb95a0c70d9681392c559b7ee331c7bb4ea
#   stage fingerprint: 5cedf1f29fd3bd7d12acaea9e847dd0237e080b3e1747d76baa9621dd9bdd6e0
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" pretrain "$@"
