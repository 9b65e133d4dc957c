#!/usr/bin/env bash
# Stage 1/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): single
#   kind: sft; launcher: torchrun, 1 node x 2 processes
#   global batch: 4 per device x 2 accumulation x 2 processes = 16
#   plan fingerprint: c29ea587789d6831ebaff4c58062b8772e7a7ceb05c59b03fc5d2cdac11ff750
#   stage fingerprint: f66c2d8e74f485c9303653df88bc4694ad08b9a01571f93fa3ca545c44c96379
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
python -m llm_recipe.runtime.preflight "$plan" single "$@"

exec torchrun \
  --standalone \
  --nnodes 1 \
  --nproc_per_node 2 \
  --max_restarts 0 \
  -m llm_recipe.runtime "$plan" single "$@"
