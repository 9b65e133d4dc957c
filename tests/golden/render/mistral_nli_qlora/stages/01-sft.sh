#!/usr/bin/env bash
# Stage 1/2 of recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): sft
#   kind: sft; launcher: local, 1 node x 1 process
#   global batch: 4 per device x 4 accumulation x 1 process = 16
#   plan fingerprint: 61e1f62246f7ed12303d239a8e5764d423ffb8a912d54026993e5e189c855cdc
#   stage fingerprint: 5003934e76ac0d70e21d2f780dbd2abb9041878678a78b1481ffbae6620a9a05
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

exec python -m llm_recipe.runtime "$plan" sft "$@"
