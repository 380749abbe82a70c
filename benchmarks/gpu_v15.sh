#!/usr/bin/env bash
# One device call with the official V1.5 checkpoint (47 MB), which does not fit beside the carried wheels: carry
# only the fixtures, copied to .carry15/official_parity (cp -r ../shared/fixtures/official_parity .carry15/).  Needs
# nothing beyond the device's torch + triton (no OpenMM).
#   run(command="bash benchmarks/gpu_v15.sh parity e2e", carry=[".carry15"])
#   parity: tests/gpu/check_parity.py, every fixture variant (tiny_* and v15) on the GPU vs the official outputs
#   e2e:    the V1.5 end-to-end table of item 4c: FCC carbon 1k / 10k / 20k / 100k, fp32 / TF32 / bf16 / graphed
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
rm -rf /tmp/pkg2 && mkdir -p /tmp/pkg2/openmm_e2former && cp -r openmm_e2former/* /tmp/pkg2/openmm_e2former/
rm -rf /tmp/pkg2/openmm_e2former/model /tmp/pkg2/openmm_e2former/kernels && cp -r model kernels /tmp/pkg2/openmm_e2former/
export PYTHONPATH="/tmp/pkg2:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export E2F_FIXTURES="$PWD/.carry15/official_parity"
nvidia-smi --query-gpu=name --format=csv,noheader
for what in "$@"; do
  case "$what" in
    parity) timeout 200 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu.json" 2>&1 | tail -n 8 ;;
    e2e) timeout ${E2E_TIMEOUT:-330} python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e" --parts speed \
             --sizes 1000,10000,20000,100000 --modes fp32,tf32,bf16,graphed_fp32,graphed_tf32 --no-water \
             --budget-s ${E2E_BUDGET:-300} 2>&1 | grep '^{' | cut -c1-230 ;;
    *) echo "unknown: $what"; exit 2 ;;
  esac
done
