#!/usr/bin/env bash
# Recipe llm-lab (recipes/llm_lab.yaml): its 3 stage(s) in plan order.
#   plan fingerprint: 324be36044676ec2187bee04afeaaae9dd7ea39f5b47abc5aaee9382a786d20b
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/3] pretraining (docker llm-lab + local, 1 node x 1 process)'
bash "$here"/stages/01-pretraining.sh
echo '==> [2/3] sft (docker llm-lab + local, 1 node x 1 process)'
bash "$here"/stages/02-sft.sh
echo '==> [3/3] rlhf (docker llm-lab + local, 1 node x 1 process)'
bash "$here"/stages/03-rlhf.sh
