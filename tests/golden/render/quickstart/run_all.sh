#!/usr/bin/env bash
# Recipe quickstart (recipes/quickstart.yaml): its 3 stage(s) in plan order.
#   plan fingerprint: 6d3b9da6ddef7ac8541d0b36bdf69bb95a0c70d9681392c559b7ee331c7bb4ea
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
