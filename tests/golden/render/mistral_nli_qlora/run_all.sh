#!/usr/bin/env bash
# Recipe mistral-nli-qlora (recipes/mistral_nli_qlora.yaml): its 6 stage(s) in plan order.
#   plan fingerprint: 03e720dc1958b6f9860e3cca159d20a5f1e15db1e4c17a0790c021f32e66ea06
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/6] sft@default (local, 1 node x 1 process)'
bash "$here"/stages/01-sft@default.sh
echo '==> [2/6] sft@ablation0 (local, 1 node x 1 process)'
bash "$here"/stages/02-sft@ablation0.sh
echo '==> [3/6] sft@ablation2 (local, 1 node x 1 process)'
bash "$here"/stages/03-sft@ablation2.sh
echo '==> [4/6] eval@default (local, 1 node x 1 process)'
bash "$here"/stages/04-eval@default.sh
echo '==> [5/6] eval@ablation0 (local, 1 node x 1 process)'
bash "$here"/stages/05-eval@ablation0.sh
echo '==> [6/6] eval@ablation2 (local, 1 node x 1 process)'
bash "$here"/stages/06-eval@ablation2.sh
