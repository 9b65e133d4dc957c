#!/usr/bin/env bash
# Stage 1/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): fsdp
#   kind: sft; launcher: accelerate, 2 nodes x 8 processes
#   global batch: 2 per device x 8 accumulation x 16 processes = 256
#   plan fingerprint: 30acdc173838e0d62a6b506064ad7ada070e6fc6cfa856d082b65fb714a17217
#   stage fingerprint: 6cfe4c532cceaf05acd2b10576b37fb1a7675ac10fcad8ce4f47fe56d230e4af
# Multi-node: run this script on each of the 2 machines with MACHINE_RANK=0..1
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec accelerate launch \
  --config_file "$here"/../accelerate/fsdp.yaml \
  --machine_rank "${MACHINE_RANK:-0}" \
  -m llm_recipe.runtime "$plan" fsdp "$@"
