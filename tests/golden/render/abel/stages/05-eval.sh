#!/usr/bin/env bash
# Stage 5/5 of recipe abel-gsm8k (recipes/abel.yaml): eval
#   kind: eval; launcher: accelerate, 1 node x 8 processes
#   plan fingerprint: 46e50f792a6e177a31a06141fe4e0b51a27f17bfb3bb527cc8279dbd19261531
#   stage fingerprint: 5ae77ac11f0f105c877cb5c4b90487ee45a491bb9bc5e0cdfd6795d403cdc275
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/eval.yaml \
  -m llm_recipe.runtime "$plan" eval "$@"
