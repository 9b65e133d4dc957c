#!/usr/bin/env bash
# Stage 3/3 of recipe continual-gpt2 (recipes/continual_gpt2.yaml): eval_imdb
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: 248a96c1d9c78c76a894823f5a4e4f6094d4cd33f39e0cf842558c77ffef68bb
#   stage fingerprint: a18e3f24a9876c09c09e9bae413a35224b4a978acb39c1f1db89b2f4faa4797c
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

exec python -m llm_recipe.runtime "$plan" eval_imdb "$@"
