#!/usr/bin/env bash
# Stage 1/3 of recipe quickstart (recipes/quickstart.yaml): pretrain
#   kind: pretrain; launcher: local, 1 node x 1 process
#   global batch: 16 per device x 1 accumulation x 1 process = 16
#   plan fingerprint: c6aff306ed4832c1e3bf8aff25423450efe9e2c3013675676ba6074625f5a884
#   stage fingerprint: aa2206a89d3080c9a97e80bcff7005033a8422a49155f1b42a071e691c36a708
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" pretrain "$@"
