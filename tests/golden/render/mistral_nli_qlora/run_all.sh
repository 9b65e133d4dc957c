#!/usr/bin/env bash
# Recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): its 2 stage(s) in plan order.
#   plan fingerprint: 3eb20dba807d1d213c1d9fdf2e41c53e1edf162e8315d3f013f550777efd0d0c
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
