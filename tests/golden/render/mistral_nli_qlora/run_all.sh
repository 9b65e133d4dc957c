#!/usr/bin/env bash
# Recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): its 2 stage(s) in plan order.
#   plan fingerprint: d0110ed4d6aa00c6cb6fb8d01ff4eca8869a1dae73edaad311f5b0f1c19bc311
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/2] sft (local, 1 node x 1 process)'
bash "$here"/stages/01-sft.sh
echo '==> [2/2] eval (local, 1 node x 1 process)'
bash "$here"/stages/02-eval.sh
