#!/usr/bin/env bash
# Stage 1/2 of recipe mistral-nli-distributed (recipes/mistral_nli/distributed.yaml): sft
#   kind: sft; launcher: accelerate, 1 node x 4 processes
#   global batch: 4 per device x 1 accumulation x 4 processes = 16
#   plan fingerprint: 1f5c733fb0dd0df880fd73004b374f632cabcffa2c0759ca9926076534b91358
#   stage fingerprint: 76bb63a20e72c3c5b15bae9f7946fabf959d13bc378316ef2e486332d554cc1a
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
python -m llm_recipe.runtime.preflight "$plan" sft "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/sft.yaml \
  -m llm_recipe.runtime "$plan" sft "$@"
