#!/usr/bin/env bash
# Stage 5/5 of recipe abel-gsm8k (recipes/abel.yaml): eval
#   kind: eval; launcher: accelerate, 1 node x 8 processes
#   plan fingerprint: 98ca715a545cb5ace900b7286903e6f1fb7e5dee9c6f6334a3a7d7aeb9b320c8
#   stage fingerprint: 6710d760e927f6284b0899083119251886a2018444e5b29002021a40584ace32
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/eval.yaml \
  -m llm_recipe.runtime "$plan" eval "$@"
