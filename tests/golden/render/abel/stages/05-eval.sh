#!/usr/bin/env bash
# Stage 5/5 of recipe abel-gsm8k (recipes/abel.yaml): eval
#   kind: eval; launcher: accelerate, 1 node x 8 processes
#   plan fingerprint: 202fe8246ec731fe1a69052579f834e4bafafce2fa0a6cc0171af45fc1bfa794
#   stage fingerprint: 6f660948bf1cd04c3d6f0f5833a3095312fa89a7d1cb5b8c1d96b91fa97fcc08
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
python -m llm_recipe.runtime.preflight "$plan" eval "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/eval.yaml \
  -m llm_recipe.runtime "$plan" eval "$@"
