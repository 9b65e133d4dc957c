#!/usr/bin/env bash
# Stage 2/2 of recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): eval
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: 61e1f62246f7ed12303d239a8e5764d423ffb8a912d54026993e5e189c855cdc
#   stage fingerprint: cf303a753924893abbd6ef45af83bddc57d17ad57525a33c52ad194de1ef2a8c
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
