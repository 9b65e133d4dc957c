#!/usr/bin/env bash
# Stage 3/5 of recipe abel-gsm8k (recipes/abel.yaml): preferences
#   kind: preferences; launcher: local, 1 node x 1 process
#   plan fingerprint: 202fe8246ec731fe1a69052579f834e4bafafce2fa0a6cc0171af45fc1bfa794
#   stage fingerprint: 947975c0c56e447f05ba3ebddf4f4c282d6005ed1b9dc44e0767e3d73213e76b
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" preferences "$@"
