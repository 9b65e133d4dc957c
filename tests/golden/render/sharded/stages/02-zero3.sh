#!/usr/bin/env bash
# Stage 2/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): zero3
#   kind: sft; launcher: accelerate, 1 node x 4 processes
#   global batch: 1 per device x 4 accumulation x 4 processes = 16
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#   stage fingerprint: 3de4675c6b151e3d06355789184264c257d21b14b086bd14deee46fe79738822
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
