#!/usr/bin/env bash
# Recipe planner (recipes/planner.yaml): its 2 stage(s) in plan order.
#   plan fingerprint: a218b31d6482d79169b077eafcfdedc295175e290711217d2d4ced42ec2b9a6e
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/2] sft (local, 1 node x 1 process)'
bash "$here"/stages/01-sft.sh
echo '==> [2/2] offline_eval (local, 1 node x 1 process)'
bash "$here"/stages/02-offline_eval.sh
