#!/usr/bin/env bash
# Stage 2/2 of recipe mistral-nli-distributed (recipes/mistral_nli/distributed.yaml): eval
#   kind: eval; launcher: accelerate, 1 node x 4 processes
#   plan fingerprint: 1ac3b77b703c476361117daa3cc410da9807ba2b3621cc206b7230b152d3e938
#   stage fingerprint: 379cbfb2fa4fccb566d2ceed4e8c27aa0122521f20464b86469a60e4de3695fc
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
