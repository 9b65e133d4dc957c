#!/usr/bin/env bash
# Stage 4/5 of recipe abel-gsm8k (recipes/abel.yaml): dpo
#   kind: dpo; launcher: accelerate, 1 node x 8 processes
#   global batch: 2 per device x 2 accumulation x 8 processes = 32
#   plan fingerprint: 202fe8246ec731fe1a69052579f834e4bafafce2fa0a6cc0171af45fc1bfa794
#   stage fingerprint: 399d5ef067a98e452c69fb1a10dc66c0d9cb2b5d240c57e7e8dc72e944327173
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
python -m llm_recipe.runtime.preflight "$plan" dpo "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/dpo.yaml \
  -m llm_recipe.runtime "$plan" dpo "$@"
