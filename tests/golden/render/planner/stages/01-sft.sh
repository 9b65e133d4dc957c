#!/usr/bin/env bash
# Stage 1/2 of recipe planner (recipes/planner.yaml): sft
#   kind: sft; launcher: local, 1 node x 1 process
#   global batch: 4 per device x 4 accumulation x 1 process = 16
#   plan fingerprint: 36e34debfec6ae20486e155966dffb8f359d7645bd7d0c95797d8cd4326df2ca
#   stage fingerprint: e1b65b213ecc855c07b74a45accd16994950da71e86d2e0a3ea750905264dbfe
#
# Run from the project directory: the paths in plan.json are relative to it.
# The runtime skips the stage when it is fresh; `--force` (passed on to it) runs it again
# from the start. This file was rendered by `recipe render`
# from the plan next to its folder: change the recipe and render again, do not edit.

set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plan="$here/../plan.json"

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:?MLFLOW_TRACKING_URI must be set}"
export MLFLOW_S3_ENDPOINT_URL="${MLFLOW_S3_ENDPOINT_URL:?MLFLOW_S3_ENDPOINT_URL must be set}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:?AWS_ACCESS_KEY_ID must be set}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY must be set}"
export HF_TOKEN="${HF_TOKEN:?HF_TOKEN must be set}"

exec python -m llm_recipe.runtime "$plan" sft "$@"
