#!/usr/bin/env bash
# Stage 2/3 of recipe continual-gpt2 (recipes/continual_gpt2.yaml): eval_wikitext
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: 567eeb066b2dc449cb78c5e09bcb11f92c99dd7eb4004c96771dd2309c453705
#   stage fingerprint: 06ad47b624374a2a67d26e561761c0aeef521478b2fb71cec7c8b681eaaf25c5
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" eval_wikitext "$@"
