#!/usr/bin/env bash
# Stage 2/2 of recipe mistral-nli-distributed (recipes/mistral_nli/distributed.yaml): eval
#   kind: eval; launcher: accelerate, 1 node x 4 processes
#   plan fingerprint: f574ead6c30df9ab09ea32ceedf44da190a1aaa934907a8ba5bae82d64282172
#   stage fingerprint: d8f3ee69c6b1edf1fbb7bf1b953214ea01ae30114e1a49527173220b75c02588
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

exec accelerate launch \
  --config_file "$here"/../accelerate/eval.yaml \
  -m llm_recipe.runtime "$plan" eval "$@"
