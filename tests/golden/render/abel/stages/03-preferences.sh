#!/usr/bin/env bash
# Stage 3/5 of recipe abel-gsm8k (recipes/abel.yaml): preferences
#   kind: preferences; launcher: local, 1 node x 1 process
#   plan fingerprint: 46e50f792a6e177a31a06141fe4e0b51a27f17bfb3bb527cc8279dbd19261531
#   stage fingerprint: 798a4f3590c2a6be6dd584fd37338cee5c8b3e2a0fb97f713ce9494d47f790d7
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" preferences "$@"
