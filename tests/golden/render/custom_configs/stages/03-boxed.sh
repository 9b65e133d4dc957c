#!/usr/bin/env bash
# Stage 3/3 of recipe custom-configs (tests/golden/render/recipes/custom_configs.yaml): boxed
#   kind: sft; launcher: docker ghcr.io/example/trainer:1.0 + accelerate, 1 node x 4 processes
#   global batch: 8 per device x 2 accumulation x 4 processes = 64
#   plan fingerprint: 05588477eddf1a823d847e4cde51e1c1ec2613742012226bfbf87fb5bf29e258
#   stage fingerprint: 489f8069554400dd6cb2a3571cea425eaf7eb9f01e32d2b0b5f5c4fa51b27f6e
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
  --gpus all \
  --ipc host \
  -v "$PWD"/outputs:/app/outputs \
  -v "$PWD"/tests/golden/render/recipes/configs/zero3_offload.json:/app/tests/golden/render/recipes/configs/zero3_offload.json:ro \
  -v "$PWD/cache:/app/cache" \
  -v "$render:/recipe:ro" \
  -e HF_HOME=/app/cache \
  -e RECIPE_TRACKING_PARENT \
  -w /app \
  ghcr.io/example/trainer:1.0 \
  accelerate launch \
  --config_file /recipe/accelerate/boxed.yaml \
  -m llm_recipe.runtime /recipe/plan.json boxed "$@"
