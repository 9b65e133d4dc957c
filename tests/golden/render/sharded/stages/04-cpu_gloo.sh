#!/usr/bin/env bash
# Stage 4/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): cpu_gloo
#   kind: sft; launcher: accelerate, 1 node x 2 processes
#   global batch: 4 per device x 1 accumulation x 2 processes = 8
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#   stage fingerprint: b3b61665d8cf31b8f846922709e1269dac9add1655919437d236977b0f20062d
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
python -m llm_recipe.runtime.preflight "$plan" cpu_gloo "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/cpu_gloo.yaml \
  -m llm_recipe.runtime "$plan" cpu_gloo "$@"
