#!/usr/bin/env bash
# Stage 1/2 of recipe planner (recipes/planner.yaml): sft
#   kind: sft; launcher: local, 1 node x 1 process
#   global batch: 4 per device x 4 accumulation x 1 process = 16
#   plan fingerprint: a218b31d6482d79169b077eafcfdedc295175e290711217d2d4ced42ec2b9a6e
#   stage fingerprint: a27506f9612fa68bd09619e482bc161daff25233be52815eec8760617ff2ab5e
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
