#!/usr/bin/env bash
# Recipe cluster (tests/golden/render/recipes/cluster.yaml): its 4 stage(s) in plan order.
#   plan fingerprint: c29ea587789d6831ebaff4c58062b8772e7a7ceb05c59b03fc5d2cdac11ff750
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/4] single (torchrun, 1 node x 2 processes)'
bash "$here"/stages/01-single.sh
echo '==> [2/4] multi (torchrun, 2 nodes x 8 processes)'
bash "$here"/stages/02-multi.sh
echo '==> [3/4] static (torchrun, 2 nodes x 4 processes)'
bash "$here"/stages/03-static.sh
echo '==> [4/4] cluster (slurm, 4 nodes x 8 processes)'
bash "$here"/stages/04-cluster.sh
