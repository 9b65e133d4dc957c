#!/usr/bin/env bash
# Stage 1/3 of recipe custom-configs (tests/golden/render/recipes/custom_configs.yaml): zero3
#   kind: sft; launcher: accelerate, 1 node x 4 processes
#   global batch: 2 per device x 4 accumulation x 4 processes = 32
#   plan fingerprint: 05588477eddf1a823d847e4cde51e1c1ec2613742012226bfbf87fb5bf29e258
#   stage fingerprint: 6dbaf39c1055ed3dfb4bb705e08962d4eac932689a18a67be166803a1c29c94a
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

# Checked once before any process starts: a machine without the GPUs or packages this
# stage needs gets one message here, not one error and traceback per process.
python -m llm_recipe.runtime.preflight "$plan" zero3 "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/zero3.yaml \
  -m llm_recipe.runtime "$plan" zero3 "$@"
