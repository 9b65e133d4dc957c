#!/usr/bin/env bash
# Recipe mistral-nli-distributed (recipes/mistral_nli/distributed.yaml): its 2 stage(s) in plan order.
#   plan fingerprint: 1f5c733fb0dd0df880fd73004b374f632cabcffa2c0759ca9926076534b91358
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/2] sft (accelerate, 1 node x 4 processes)'
bash "$here"/stages/01-sft.sh
echo '==> [2/2] eval (accelerate, 1 node x 4 processes)'
bash "$here"/stages/02-eval.sh
