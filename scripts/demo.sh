#!/usr/bin/env bash
# Set up (idempotent) and run the main job on shipped defaults: train (once, cached) the example Keras
# model, convert it to full INT8 with calibration_data/, validate on the host, print the report, write dist/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$repo"
exec edgemp demo "$@"
