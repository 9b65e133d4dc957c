#!/usr/bin/env bash
# Stage 4/5 of recipe abel-gsm8k (recipes/abel.yaml): dpo
#   kind: dpo; launcher: accelerate, 1 node x 8 processes
#   global batch: 2 per device x 2 accumulation x 8 processes = 32
#   plan fingerprint: 46e50f792a6e177a31a06141fe4e0b51a27f17bfb3bb527cc8279dbd19261531
#   stage fingerprint: d8e6e1ea8eb8f6f5ee2779b68ca332e8efdfc6ef7605393e72972acdbba96e8f
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/dpo.yaml \
  -m llm_recipe.runtime "$plan" dpo "$@"
