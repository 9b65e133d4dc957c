#!/usr/bin/env bash
# Stage 2/2 of recipe planner (recipes/planner.yaml): offline_eval
#   kind: eval; launcher: local, 1 node x 1 process
#   plan fingerprint: 74f31917be6a93336cf2713f14f51526d9eba8748a25e5f981e3352eeb84bad9
#   stage fingerprint: b1163634ae8ab980b67ba52ee0032430ad62962f18e757215393d6666cfbbd83
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
