#!/usr/bin/env bash
# Recipe quickstart (recipes/quickstart.yaml): its 3 stage(s) in plan order.
#   plan fingerprint: c6aff306ed4832c1e3bf8aff25423450efe9e2c3013675676ba6074625f5a884
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/3] pretrain (local, 1 node x 1 process)'
bash "$here"/stages/01-pretrain.sh
echo '==> [2/3] sft (local, 1 node x 1 process)'
bash "$here"/stages/02-sft.sh
echo '==> [3/3] eval (local, 1 node x 1 process)'
bash "$here"/stages/03-eval.sh
