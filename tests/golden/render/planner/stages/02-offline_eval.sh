#!/usr/bin/env bash
# Stage 2/2 of recipe planner (recipes/planner.yaml): offline_eval
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: 36e34debfec6ae20486e155966dffb8f359d7645bd7d0c95797d8cd4326df2ca
#   stage fingerprint: fc7b4e8e34eaafe31a5c4c63b1ab34843be4731e611ddd6e8a42f505b6821b2a
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

exec python -m llm_recipe.runtime "$plan" offline_eval "$@"
