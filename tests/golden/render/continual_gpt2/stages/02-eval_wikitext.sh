#!/usr/bin/env bash
# Stage 2/3 of recipe continual-gpt2 (recipes/continual_gpt2.yaml): eval_wikitext
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: 248a96c1d9c78c76a894823f5a4e4f6094d4cd33f39e0cf842558c77ffef68bb
#   stage fingerprint: bee4a603dc2be54726d49fada76fe70de7ceb15b27cc751c6f1aa2b891e796cb
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" eval_wikitext "$@"
