#!/usr/bin/env bash
# Stage 1/5 of recipe abel-gsm8k (recipes/abel.yaml): sft
#   kind: sft; launcher: accelerate, 1 node x 8 processes
#   global batch: 4 per device x 1 accumulation x 8 processes = 32
#   plan fingerprint: 202fe8246ec731fe1a69052579f834e4bafafce2fa0a6cc0171af45fc1bfa794
#   stage fingerprint: 6b6d114307afe81f33c010660ce099b922554389f93a3debfd6c31cf3e8a4a16
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
python -m llm_recipe.runtime.preflight "$plan" sft "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/sft.yaml \
  -m llm_recipe.runtime "$plan" sft "$@"
