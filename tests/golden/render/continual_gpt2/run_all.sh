#!/usr/bin/env bash
# Recipe continual-gpt2 (recipes/continual_gpt2.yaml): its 3 stage(s) in plan order.
#   plan fingerprint: 567eeb066b2dc449cb78c5e09bcb11f92c99dd7eb4004c96771dd2309c453705
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/3] continual (local, 1 node x 1 process)'
bash "$here"/stages/01-continual.sh
echo '==> [2/3] eval_wikitext (local, 1 node x 1 process)'
bash "$here"/stages/02-eval_wikitext.sh
echo '==> [3/3] eval_imdb (local, 1 node x 1 process)'
bash "$here"/stages/03-eval_imdb.sh
