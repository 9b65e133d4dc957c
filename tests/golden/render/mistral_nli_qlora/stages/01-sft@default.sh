#!/usr/bin/env bash
# Stage 1/6 of recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): sft@default
#   kind: sft; launcher: local, 1 node x 1 process
#   global batch: 4 per device x 4 accumulation x 1 process = 16
#   plan fingerprint: 03e720dc1958b6f9860e3cca159d20a5f1e15db1e4c17a0790c021f32e66ea06
#   stage fingerprint: cfb1f75e2bc8f075c7de300a6dbf4cbb24dc50f6ef51cc123fe302e9b0cedf8c
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

exec python -m llm_recipe.runtime "$plan" sft@default "$@"
