#!/usr/bin/env bash
# Recipe custom-configs (tests/golden/render/recipes/custom_configs.yaml): its 3 stage(s) in plan order.
#   plan fingerprint: 05588477eddf1a823d847e4cde51e1c1ec2613742012226bfbf87fb5bf29e258
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/3] zero3 (accelerate, 1 node x 4 processes)'
bash "$here"/stages/01-zero3.sh
echo '==> [2/3] fsdp2 (accelerate, 2 nodes x 4 processes)'
bash "$here"/stages/02-fsdp2.sh
echo '==> [3/3] boxed (docker ghcr.io/example/trainer:1.0 + accelerate, 1 node x 4 processes)'
bash "$here"/stages/03-boxed.sh
