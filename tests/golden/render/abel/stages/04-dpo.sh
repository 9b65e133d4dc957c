#!/usr/bin/env bash
# Stage 4/5 of recipe abel-gsm8k (recipes/abel.yaml): dpo
#   kind: dpo; launcher: accelerate, 1 node x 8 processes
#   global batch: 2 per device x 2 accumulation x 8 processes = 32
#   plan fingerprint: 98ca715a545cb5ace900b7286903e6f1fb7e5dee9c6f6334a3a7d7aeb9b320c8
#   stage fingerprint: cb547198972ae0d7a2396bb8c5921620d267c6e9b6f22c02f0febf237ae4dd54
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
