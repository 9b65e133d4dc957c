#!/usr/bin/env bash
# Stage 2/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): multi
#   kind: sft; launcher: torchrun, 2 nodes x 8 processes
#   global batch: 4 per device x 2 accumulation x 16 processes = 128
#   plan fingerprint: b750f81cdfd5c1f4ee823833aa83445f3faf768a33ca9addfe65fcecd503c9bf
#   stage fingerprint: 276a2933ba48d5cc42ed426f827eafe3f0d983f11163efd3a822815c55f11937
# Multi-node: run this script on each of the 2 nodes
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec torchrun \
  --nnodes 2 \
  --nproc_per_node 8 \
  --rdzv_backend c10d \
  --rdzv_endpoint node0.example:29400 \
  --rdzv_id cluster-multi \
  --max_restarts 1 \
  -m llm_recipe.runtime "$plan" multi "$@"
