#!/usr/bin/env bash
# Stage 2/2 of recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): eval
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: d0110ed4d6aa00c6cb6fb8d01ff4eca8869a1dae73edaad311f5b0f1c19bc311
#   stage fingerprint: 5d99d8c3843178b829328516bfe90f6a199f65e7ae09d0433d9cee109f50c299
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

export WANDB_API_KEY="${WANDB_API_KEY:?WANDB_API_KEY must be set}"
export WANDB_LOG_MODEL=false
export CUDA_VISIBLE_DEVICES=1

exec python -m llm_recipe.runtime "$plan" eval "$@"
