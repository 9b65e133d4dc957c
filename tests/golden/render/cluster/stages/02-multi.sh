#!/usr/bin/env bash
# Stage 2/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): multi
#   kind: sft; launcher: torchrun, 2 nodes x 8 processes
#   global batch: 4 per device x 2 accumulation x 16 processes = 128
#   plan fingerprint: c29ea587789d6831ebaff4c58062b8772e7a7ceb05c59b03fc5d2cdac11ff750
#   stage fingerprint: 263e19d8a18f9a2c72715e9233957932320951f6ed1fbef971d51e7f7beec5e5
# Multi-node: run this script on each of the 2 nodes
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
python -m llm_recipe.runtime.preflight "$plan" multi "$@"

exec torchrun \
  --nnodes 2 \
  --nproc_per_node 8 \
  --rdzv_backend c10d \
  --rdzv_endpoint node0.example:29400 \
  --rdzv_id cluster-multi \
  --max_restarts 1 \
  -m llm_recipe.runtime "$plan" multi "$@"
