#!/usr/bin/env bash
# Stage 1/5 of recipe abel-gsm8k (recipes/abel.yaml): sft
#   kind: sft; launcher: accelerate, 1 node x 8 processes
#   global batch: 4 per device x 1 accumulation x 8 processes = 32
#   plan fingerprint: 98ca715a545cb5ace900b7286903e6f1fb7e5dee9c6f6334a3a7d7aeb9b320c8
#   stage fingerprint: 73e69c58a2c10ba90edfdbde1a0b1199f645020d464f61b5c36ae8ae3d6f2250
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/sft.yaml \
  -m llm_recipe.runtime "$plan" sft "$@"
