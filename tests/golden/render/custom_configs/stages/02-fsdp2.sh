#!/usr/bin/env bash
# Stage 2/3 of recipe custom-configs (tests/golden/render/recipes/custom_configs.yaml): fsdp2
#   kind: sft; launcher: accelerate, 2 nodes x 4 processes
#   global batch: 8 per device x 1 accumulation x 8 processes = 64
#   plan fingerprint: 05588477eddf1a823d847e4cde51e1c1ec2613742012226bfbf87fb5bf29e258
#   stage fingerprint: 00e3e7df0a49ea5692674c9691101f39efccce2274d2d7118dfaa00ed67ea516
# Multi-node: run this script on each of the 2 machines with MACHINE_RANK=0..1
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
python -m llm_recipe.runtime.preflight "$plan" fsdp2 "$@"

exec accelerate launch \
  --config_file "$here"/../accelerate/fsdp2.yaml \
  --machine_rank "${MACHINE_RANK:-0}" \
  --main_process_ip "${MAIN_PROCESS_IP:?MAIN_PROCESS_IP must be the address of machine rank 0}" \
  -m llm_recipe.runtime "$plan" fsdp2 "$@"
