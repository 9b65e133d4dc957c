#!/usr/bin/env bash
# Recipe abel-gsm8k (recipes/abel.yaml): its 5 stage(s) in plan order.
#   plan fingerprint: 202fe8246ec731fe1a69052579f834e4bafafce2fa0a6cc0171af45fc1bfa794
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/5] sft (accelerate, 1 node x 8 processes)'
bash "$here"/stages/01-sft.sh
echo '==> [2/5] rollout (accelerate, 1 node x 8 processes)'
bash "$here"/stages/02-rollout.sh
echo '==> [3/5] preferences (local, 1 node x 1 process)'
bash "$here"/stages/03-preferences.sh
echo '==> [4/5] dpo (accelerate, 1 node x 8 processes)'
bash "$here"/stages/04-dpo.sh
echo '==> [5/5] eval (accelerate, 1 node x 8 processes)'
bash "$here"/stages/05-eval.sh
