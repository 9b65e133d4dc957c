#!/usr/bin/env bash
# Stage 2/2 of recipe mistral-nli-distributed (recipes/mistral_nli/distributed.yaml): eval
#   kind: eval; launcher: accelerate, 1 node x 4 processes
#   plan fingerprint: 1f5c733fb0dd0df880fd73004b374f632cabcffa2c0759ca9926076534b91358
#   stage fingerprint: 2e70e7b16f16c555a6b32ff0965a9a1197b299c908cc590953d218bbc4c171da
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

# Checked once before any process starts: a machine without the GPUs or packages this
# stage needs gets one message here, not one error and traceback per process.
python -m llm_recipe.runtime.preflight "$plan" eval "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/eval.yaml \
  -m llm_recipe.runtime "$plan" eval "$@"
