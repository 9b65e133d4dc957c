#!/usr/bin/env bash
# Stage 3/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): static
#   kind: sft; launcher: torchrun, 2 nodes x 4 processes
#   global batch: 8 per device x 1 accumulation x 8 processes = 64
#   plan fingerprint: b750f81cdfd5c1f4ee823833aa83445f3faf768a33ca9addfe65fcecd503c9bf
#   stage fingerprint: 44a3fc73bba18cb7a4f3fbe9ffd83c034073880450601ae4979c12f59c393ba6
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

exec torchrun \
  --nnodes 2 \
  --nproc_per_node 4 \
  --rdzv_backend static \
  --rdzv_endpoint "${RDZV_ENDPOINT:?RDZV_ENDPOINT must be host:port on node 0}" \
  --rdzv_id cluster-static \
  --node_rank "${NODE_RANK:-0}" \
  --max_restarts 0 \
  -m llm_recipe.runtime "$plan" static "$@"
