#!/usr/bin/env bash
# Everything minitx needs from one GPU session, as a single command that fits a ~10-minute lease on an H100/H200:
#   1. the kernel's tests on the GPU (interpreter tests run there at full speed, plus the `gpu`-marked ones:
#      bf16, long sequences) and the compile-report CI test;
#   2. what the autotuner picked, with the registers/spills of the code that ran, beside the compile report;
#   3. the attention sweep against PyTorch's SDPA kernels (bf16, D 64/128, causal and not, N 1k..16k: the
#      issue's floors), then the training comparison if time is left (`full` runs the papers' whole sweep).
# Results land in benchmarks/results/gpu_* (and are copied to $OUT when it is set, as on a lent device machine).
# Usage: bash benchmarks/gpu_session.sh [full]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TRITON_DEFAULT_FP_FUSION=1
results=benchmarks/results
copy_out() { if [ -n "${OUT:-}" ]; then cp "$results"/gpu_* "$OUT"/ 2>/dev/null; fi; }
trap copy_out EXIT
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$results/gpu_device.txt" || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
    | tee -a "$results/gpu_device.txt"

timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/test_flash_attention.py tests/test_flash_features.py \
    tests/test_compile_report.py tests/test_attention.py 2>&1 | tail -n 40 | tee "$results/gpu_tests.log"
timeout 120 python3 benchmarks/gpu_check.py "$results/gpu_autotune.json" 2>&1 | tee "$results/gpu_autotune.log"
copy_out

sweep=(--dtypes bf16 --head-dims 64 128 --seq-lens 1024 4096 16384 --repeats 10 --warmup 3
       --impls minitx:flash sdpa:flash sdpa:cudnn sdpa:efficient)
if [ "${1:-}" = full ]; then sweep=(); fi
timeout 300 python3 benchmarks/attention.py "${sweep[@]}" 2>&1 | tee "$results/gpu_attention.log"
copy_out
if [ $(( $(date +%s) - start )) -lt 420 ]; then
    timeout 150 python3 benchmarks/training.py 2>&1 | tee "$results/gpu_training.log"
fi
echo "gpu session: $(( $(date +%s) - start )) s"
