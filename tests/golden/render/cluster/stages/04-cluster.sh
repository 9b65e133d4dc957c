#!/usr/bin/env bash
# Stage 4/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): cluster
#   kind: sft; launcher: slurm, 4 nodes x 8 processes
#   global batch: 2 per device x 4 accumulation x 32 processes = 256
#   plan fingerprint: b750f81cdfd5c1f4ee823833aa83445f3faf768a33ca9addfe65fcecd503c9bf
#   stage fingerprint: f03a38566d53a67237429c0d565815cd4c7b8fb8abed1593de5ca4f2a7ec9434
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

# sbatch writes the job log into the stage folder and cannot create it; --wait keeps
# run_all.sh in plan order (the next stage starts when this job has ended).
mkdir -p -- outputs/cluster/cluster
exec sbatch --wait --chdir "$PWD" "$here"/../slurm/cluster.sbatch "$plan" "$@"
