#!/usr/bin/env bash
# One GPU session that cannot fail to deliver (benchmarks/gpu_session.py has the details):
#   bash benchmarks/gpu_session.sh                  # first call: env, gpu tests, autotuner picks, bf16 sweeps
#   bash benchmarks/gpu_session.sh --mode second    # a second call: training comparison, the full sweep
#   bash benchmarks/gpu_session.sh --dry-run        # every step on a CPU at tiny sizes (the test suite runs it)
# Results: ONE archive and a one-page summary in $OUT (refreshed as results arrive), step budgets <= 540 s.
set -u
cd "$(dirname "$0")/.."
exec python3 benchmarks/gpu_session.py "$@"
