#!/usr/bin/env bash
# Stage 1/3 of recipe continual-gpt2 (recipes/continual_gpt2.yaml): continual
#   kind: continual; launcher: local, 1 node x 1 process
#   global batch: 16 per device x 1 accumulation x 1 process = 16
#   plan fingerprint: 248a96c1d9c78c76a894823f5a4e4f6094d4cd33f39e0cf842558c77ffef68bb
#   stage fingerprint: a0126e9ba469f6de2006834ba770b4115c6db5271e556b98d3888d539af66216
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" continual "$@"
