#!/usr/bin/env bash
# Stage 1/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): single
#   kind: sft; launcher: torchrun, 1 node x 2 processes
#   global batch: 4 per device x 2 accumulation x 2 processes = 16
#   plan fingerprint: b750f81cdfd5c1f4ee823833aa83445f3faf768a33ca9addfe65fcecd503c9bf
#   stage fingerprint: 19c4f27b60c1eef1d58c57ba12bfabee2978be5e8e7607cfcfb1120d865667e8
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec torchrun \
  --standalone \
  --nnodes 1 \
  --nproc_per_node 2 \
  --max_restarts 0 \
  -m llm_recipe.runtime "$plan" single "$@"
