#!/usr/bin/env bash
# Stage 2/5 of recipe abel-gsm8k (recipes/abel.yaml): rollout
#   kind: rollout; launcher: accelerate, 1 node x 8 processes
#   plan fingerprint: 202fe8246ec731fe1a69052579f834e4bafafce2fa0a6cc0171af45fc1bfa794
#   stage fingerprint: 8ce86563dfd292cbff2dfce244f3312cd40c298b095eb0bd7a394479b94bc77f
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

# Checked once before any process starts: a machine without the GPUs or packages this
# stage needs gets one message here, not one error and traceback per process.
python -m llm_recipe.runtime.preflight "$plan" rollout "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/rollout.yaml \
  -m llm_recipe.runtime "$plan" rollout "$@"
