#!/usr/bin/env bash
# Stage 4/4 of recipe cluster (tests/golden/render/recipes/cluster.yaml): cluster
#   kind: sft; launcher: slurm, 4 nodes x 8 processes
#   global batch: 2 per device x 4 accumulation x 32 processes = 256
#   plan fingerprint: c29ea587789d6831ebaff4c58062b8772e7a7ceb05c59b03fc5d2cdac11ff750
#   stage fingerprint: 5801e8746db939e224c49a8e37dbce73956b9fb95d738fb36f2af2c638eefe50
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
