#!/usr/bin/env bash
# Stage 6/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): boxed_nodes
#   kind: eval; launcher: docker ghcr.io/example/trainer:1.0 + torchrun, 2 nodes x 4 processes
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#   stage fingerprint: a623b5cf1cdb3cbd8f65d3ed7731900941619dccbcd45a3052fc245341fe46ec
# Multi-node: run this script on each of the 2 nodes
# with RDZV_ENDPOINT=<host:port on node 0>
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
render="$(cd "$here/.." && pwd)"

case "$PWD$render" in
  *:*) echo "error: docker -v cannot mount a folder whose path has ':' ($PWD, $render)" >&2; exit 2 ;;
esac
# Mount sources that do not exist would be created by docker, owned by root.
mkdir -p -- outputs cache

# No --restart policy, on purpose: after a successful exit a restart policy starts the
# container again and trains the finished job from the beginning. --rm removes the
# container once the stage ends.
exec docker run --rm \
  --gpus device=0,1 \
  --ipc host \
  --network host \
  -v "$PWD"/outputs:/app/outputs \
  -v "$PWD"/tests/golden/render/recipes/data.jsonl:/app/tests/golden/render/recipes/data.jsonl:ro \
  -v "$PWD/cache:/app/cache" \
  -v "$render:/recipe:ro" \
  -e HF_HOME=/app/cache \
  -e RECIPE_TRACKING_PARENT \
  -e WANDB_API_KEY \
  -w /app \
  ghcr.io/example/trainer:1.0 \
  torchrun \
  --nnodes 2 \
  --nproc_per_node 4 \
  --rdzv_backend c10d \
  --rdzv_endpoint "${RDZV_ENDPOINT:?RDZV_ENDPOINT must be host:port on node 0}" \
  --rdzv_id sharded-boxed_nodes \
  --max_restarts 0 \
  -m llm_recipe.runtime /recipe/plan.json boxed_nodes "$@"
