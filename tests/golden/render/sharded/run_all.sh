#!/usr/bin/env bash
# Recipe sharded (tests/golden/render/recipes/sharded.yaml): its 6 stage(s) in plan order.
#   plan fingerprint: 3387211cfc6064538536165d81d85ce803845a77e2eedc80b2c9ba8066280c5d
#
# Run from the project directory (the paths in plan.json are relative to it):
#   bash path/to/run_all.sh
# Every stage script calls `python -m llm_recipe.runtime plan.json STAGE`, which skips a
# fresh stage; the first failure stops the run, and running again resumes there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo '==> [1/6] fsdp (accelerate, 2 nodes x 8 processes)'
bash "$here"/stages/01-fsdp.sh
echo '==> [2/6] zero3 (accelerate, 1 node x 4 processes)'
bash "$here"/stages/02-zero3.sh
echo '==> [3/6] ddp_nodes (accelerate, 3 nodes x 4 processes)'
bash "$here"/stages/03-ddp_nodes.sh
echo '==> [4/6] cpu_gloo (accelerate, 1 node x 2 processes)'
bash "$here"/stages/04-cpu_gloo.sh
echo '==> [5/6] boxed (docker ghcr.io/example/trainer:1.0 + accelerate, 1 node x 4 processes)'
bash "$here"/stages/05-boxed.sh
echo '==> [6/6] boxed_nodes (docker ghcr.io/example/trainer:1.0 + torchrun, 2 nodes x 4 processes)'
bash "$here"/stages/06-boxed_nodes.sh
