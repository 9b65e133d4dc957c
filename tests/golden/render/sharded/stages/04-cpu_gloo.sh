#!/usr/bin/env bash
# Stage 4/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): cpu_gloo
#   kind: sft; launcher: accelerate, 1 node x 2 processes
#   global batch: 4 per device x 1 accumulation x 2 processes = 8
#   plan fingerprint: 30acdc173838e0d62a6b506064ad7ada070e6fc6cfa856d082b65fb714a17217
#   stage fingerprint: c38959483587d8873d282162a8581ea3433abf2ee92f6ab67ef6a6a78815a297
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/cpu_gloo.yaml \
  -m llm_recipe.runtime "$plan" cpu_gloo "$@"
