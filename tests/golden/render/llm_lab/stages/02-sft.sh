#!/usr/bin/env bash
# Stage 2/3 of recipe llm-lab (recipes/llm_lab.yaml): sft
#   kind: sft; launcher: docker llm-lab + local, 1 node x 1 process
#   global batch: 16 per device x 2 accumulation x 1 process = 32
#   plan fingerprint: 324be36044676ec2187bee04afeaaae9dd7ea39f5b47abc5aaee9382a786d20b
#   stage fingerprint: afac1700ee3b03e302709d5e0137aa781849b422dc818f592e88aab6f1f5aa3a
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
  -v "$PWD"/outputs:/app/outputs \
  -v "$PWD/cache:/app/cache" \
  -v "$render:/recipe:ro" \
  -e HF_HOME=/app/cache \
  -e RECIPE_TRACKING_PARENT \
  -p 8000:8000 \
  -w /app \
  llm-lab \
  python -m llm_recipe.runtime /recipe/plan.json sft "$@"
