#!/usr/bin/env bash
# Stage 2/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): zero3
#   kind: sft; launcher: accelerate, 1 node x 4 processes
#   global batch: 1 per device x 4 accumulation x 4 processes = 16
#   plan fingerprint: 30acdc173838e0d62a6b506064ad7ada070e6fc6cfa856d082b65fb714a17217
#   stage fingerprint: c357a4908cf8fa6248349f5df75bbad1c5aa3caad030dfac721bd1b7f7485911
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/zero3.yaml \
  -m llm_recipe.runtime "$plan" zero3 "$@"
