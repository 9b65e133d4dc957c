#!/usr/bin/env bash
# Stage 1/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): fsdp
#   kind: sft; launcher: accelerate, 2 nodes x 8 processes
#   global batch: 2 per device x 8 accumulation x 16 processes = 256
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#   stage fingerprint: 27107c80830bf10f34af5349e27af44f57f0e055141dbd006fbe238657fdf17a
# Multi-node: run this script on each of the 2 machines with MACHINE_RANK=0..1
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
python -m llm_recipe.runtime.preflight "$plan" fsdp "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/fsdp.yaml \
  --machine_rank "${MACHINE_RANK:-0}" \
  -m llm_recipe.runtime "$plan" fsdp "$@"
