#!/usr/bin/env bash
# Stage 3/5 of recipe abel-gsm8k (recipes/abel.yaml): preferences
#   kind: preferences; launcher: local, 1 node x 1 process
#   plan fingerprint: 98ca715a545cb5ace900b7286903e6f1fb7e5dee9c6f6334a3a7d7aeb9b320c8
#   stage fingerprint: b59ce10fed2d099c635da199dd4d42f15475295d70dcfa4497f181f78dd87d3c
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" preferences "$@"
