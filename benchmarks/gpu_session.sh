#!/usr/bin/env bash
# Everything minitx needs from one GPU session, prepared so it runs as a single command:
#   1. the `gpu`-marked tests (Triton kernel in bf16/fp16 at large N, CUDA timing paths, AMP),
#   2. the attention sweep (FlashAttention papers' sizes) and the training-throughput comparison.
# Results land in benchmarks/results/ (and are copied to $OUT when it is set, as on a lent device machine).
# Usage: bash benchmarks/gpu_session.sh [quick]     ("quick": bf16 only, N up to 8192, for a short lease)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=benchmarks/results
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"

python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$results/gpu_tests.log"

sweep=()
if [ "${1:-}" = quick ]; then sweep=(--dtypes bf16 --seq-lens 512 1024 2048 4096 8192); fi
python3 benchmarks/attention.py "${sweep[@]}" 2>&1 | tee "$results/gpu_attention.log"
python3 benchmarks/training.py 2>&1 | tee "$results/gpu_training.log"

if [ -n "${OUT:-}" ]; then cp "$results"/gpu_* "$OUT"/ 2>/dev/null; fi
