#!/usr/bin/env bash
# Stage 2/5 of recipe abel-gsm8k (recipes/abel.yaml): rollout
#   kind: rollout; launcher: accelerate, 1 node x 8 processes
#   plan fingerprint: 46e50f792a6e177a31a06141fe4e0b51a27f17bfb3bb527cc8279dbd19261531
#   stage fingerprint: 32a99d6b5953293e232ed9d51b19ebeaaeb45f5f6bc6850be3e88c99412858c7
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/rollout.yaml \
  -m llm_recipe.runtime "$plan" rollout "$@"
