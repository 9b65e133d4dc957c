#!/usr/bin/env bash
# Stage 3/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): static
#   kind: sft; launcher: torchrun, 2 nodes x 4 processes
#   global batch: 8 per device x 1 accumulation x 8 processes = 64
#   plan fingerprint: c29ea587789d6831ebaff4c58062b8772e7a7ceb05c59b03fc5d2cdac11ff750
#   stage fingerprint: 64e92a4aecddbeb3c66443b21acbd5904ebc47b635596364c1daaa732c9aedc6
# Multi-node: run this script on each of the 2 nodes
# with RDZV_ENDPOINT=<host:port on node 0>
# and NODE_RANK=0..1 (static rendezvous).
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

export CUDA_VISIBLE_DEVICES=0,1,2,3

# Checked once before any process starts: a machine without the GPUs or packages this
# stage needs gets one message here, not one error and traceback per process.
python -m llm_recipe.runtime.preflight "$plan" static "$@"

exec torchrun \
  --nnodes 2 \
  --nproc_per_node 4 \
  --rdzv_backend static \
  --rdzv_endpoint "${RDZV_ENDPOINT:?RDZV_ENDPOINT must be host:port on node 0}" \
  --rdzv_id cluster-static \
  --node_rank "${NODE_RANK:-0}" \
  --max_restarts 0 \
  -m llm_recipe.runtime "$plan" static "$@"
