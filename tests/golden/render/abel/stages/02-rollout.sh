#!/usr/bin/env bash
# Stage 2/5 of recipe abel-gsm8k (recipes/abel.yaml): rollout
#   kind: rollout; launcher: accelerate, 1 node x 8 processes
#   plan fingerprint: 98ca715a545cb5ace900b7286903e6f1fb7e5dee9c6f6334a3a7d7aeb9b320c8
#   stage fingerprint: dacfc2962afbc7805c13ee3b769cfc16a43df1d2841b6f5a0a3a59e67009c3f3
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/rollout.yaml \
  -m llm_recipe.runtime "$plan" rollout "$@"
