#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: the fast tier (tiny models), then the slow tier (training, real
# architectures, examples). With arguments, pytest runs with exactly those (e.g. -m "not slow" for the fast tier).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$repo"
if [ "$#" -gt 0 ]; then
    exec python -m pytest "$@"
fi
python -m pytest -m "not slow"
exec python -m pytest -m slow
