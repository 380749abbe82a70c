#!/bin/bash
# One device-machine call: GPU correctness check, then the benchmark.  Outputs under $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/e2f_out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used,temperature.gpu --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout ${CHECK_TIMEOUT:-240} python3 tests/gpu/check_kernels.py $OUT/kernels_gpu_check.json ${CHECK_ARGS} 2>&1 | tee $OUT/check.log
# the degree-bucketed v2 launches (E2F_V2_BUCKETS) against float64, buckets on and off
timeout ${CHECK_TIMEOUT:-240} python3 tests/gpu/check_buckets.py $OUT/buckets_gpu_check.json 2>&1 | tee $OUT/check_buckets.log
# the radial-table (TABLE) kernels against float64, every aggregation mode and the [N, D, H] q / k layout
timeout ${CHECK_TIMEOUT:-240} python3 tests/gpu/check_table.py $OUT/table_gpu_check.json 2>&1 | tee $OUT/check_table.log
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  BENCH_BUDGET_S=${BENCH_BUDGET_S:-200} timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/bench_attention.py $OUT/attention_h100 ${BENCH_ARGS} 2>&1 | tee $OUT/bench.log
fi
