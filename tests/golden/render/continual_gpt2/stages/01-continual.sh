#!/usr/bin/env bash
# Stage 1/3 of recipe continual-gpt2 (recipes/continual_gpt2.yaml): continual
#   kind: continual; launcher: local, 1 node x 1 process
#   global batch: 16 per device x 1 accumulation x 1 process = 16
#   plan fingerprint: 567eeb066b2dc449cb78c5e09bcb11f92c99dd7eb4004c96771dd2309c453705
#   stage fingerprint: a026362875ee2eff9d8430fabaf4e958b1c7635eaea3ec82a765ebb9aeb47451
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" continual "$@"
