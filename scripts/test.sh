#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: the fast tier (tiny models), then the slow tier (training, real
# architectures, examples). With arguments, pytest runs with exactly those (e.g. -m "not slow" for the fast tier).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$repo"
# One pytest-xdist worker per usable CPU, at most 4 (each loads TensorFlow and PyTorch: ~2 GB); a test file stays on
# one worker, so its session fixtures are built once. EDGEMP_TEST_WORKERS overrides (1: no workers, plain pytest).
workers="${EDGEMP_TEST_WORKERS:-$(python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}"
par=()
[ "$workers" -gt 1 ] && par=(-n "$workers" --dist loadfile)
if [ "$#" -gt 0 ]; then
    exec python -m pytest ${par[@]+"${par[@]}"} "$@"
fi
python -m pytest ${par[@]+"${par[@]}"} -m "not slow" --durations=15
exec python -m pytest ${par[@]+"${par[@]}"} -m slow --durations=15
