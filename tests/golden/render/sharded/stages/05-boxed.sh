#!/usr/bin/env bash
# Stage 5/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): boxed
#   kind: sft; launcher: docker ghcr.io/example/trainer:1.0 + accelerate, 1 node x 4 processes
#   global batch: 8 per device x 1 accumulation x 4 processes = 32
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#   stage fingerprint: 8074e224fb46b0bcf3f6c9e5a4cebb93e1b00e4b774aaae50ed9aef58c1f6ec2
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
render="$(cd "$here/.." && pwd)"

export WANDB_MODE=offline
export WANDB_API_KEY="${WANDB_API_KEY:?WANDB_API_KEY must be set}"
export CUDA_VISIBLE_DEVICES=2,3

case "$PWD$render" in
  *:*) echo "error: docker -v cannot mount a folder whose path has ':' ($PWD, $render)" >&2; exit 2 ;;
esac
# Mount sources that do not exist would be created by docker, owned by root.
mkdir -p -- outputs cache

# No --restart policy, on purpose: after a successful exit a restart policy starts the
# container again and trains the finished job from the beginning. --rm removes the
# container once the stage ends.
exec docker run --rm \
  --gpus all \
  --shm-size 16g \
  -v "$PWD"/outputs:/app/outputs \
  -v "$PWD"/tests/golden/render/recipes/data.jsonl:/app/tests/golden/render/recipes/data.jsonl:ro \
  -v hf-models:/models \
  -v "$PWD"/scratch:/scratch \
  -v "$PWD/cache:/app/cache" \
  -v "$render:/recipe:ro" \
  -e HF_HOME=/app/cache \
  -e RECIPE_TRACKING_PARENT \
  -e WANDB_API_KEY \
  -e WANDB_MODE \
  -e CUDA_VISIBLE_DEVICES \
  -p 6006:6006 \
  -w /app \
  ghcr.io/example/trainer:1.0 \
  accelerate launch \
  --config_file /recipe/accelerate/boxed.yaml \
  -m llm_recipe.runtime /recipe/plan.json boxed "$@"
