#!/usr/bin/env bash
# Stage 3/6 of recipe sharded (tests/golden/render/recipes/sharded.yaml): ddp_nodes
#   kind: sft; launcher: accelerate, 3 nodes x 4 processes
#   global batch: 8 per device x 1 accumulation x 12 processes = 96
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#   stage fingerprint: 19e22fa80eadd713ec65d5213bdfa395178eaa821f4cb255e76e17dee897872a
# Multi-node: run this script on each of the 3 machines with MACHINE_RANK=0..2
# and MAIN_PROCESS_IP=<address of machine rank 0>.
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
python -m llm_recipe.runtime.preflight "$plan" ddp_nodes "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/ddp_nodes.yaml \
  --machine_rank "${MACHINE_RANK:-0}" \
  --main_process_ip "${MAIN_PROCESS_IP:?MAIN_PROCESS_IP must be the address of machine rank 0}" \
  -m llm_recipe.runtime "$plan" ddp_nodes "$@"
