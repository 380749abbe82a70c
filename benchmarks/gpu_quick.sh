#!/usr/bin/env bash
# One short device call (single GPU): install the carried wheels, map model/ and kernels/ into the
# openmm_e2former namespace as setup.py does, and run one benchmark command with its output under $OUT.
#   run(command="bash benchmarks/gpu_quick.sh graphed", carry=[".whl"], timeout_s=...)
#   graphed:  benchmarks/gpu_graphed_check.py (float32 + float64, 200 OpenMM steps) and the padded-path profile
#   e2e1k:    gpu_end_to_end at 1,000 atoms, modes fp32 and graphed_fp32
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
cp -r .whl/pylib/* /tmp/site/
mkdir -p /tmp/pkg/openmm_e2former && cp -r openmm_e2former/* /tmp/pkg/openmm_e2former/
ln -sfn "$PWD/model" /tmp/pkg/openmm_e2former/model; ln -sfn "$PWD/kernels" /tmp/pkg/openmm_e2former/kernels
export PYTHONPATH="/tmp/pkg:/tmp/site:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export E2F_FIXTURES="$PWD/.carry/shared/fixtures/official_parity"
nvidia-smi --query-gpu=name --format=csv,noheader
for what in "$@"; do
  case "$what" in
    graphed) timeout 240 python3 benchmarks/gpu_graphed_check.py --out "$OUT/graphed" --repeats 20 \
                 --dtypes float32,float64 --openmm-steps 200 2>&1 | tail -n 12 ;;
    e2e1k) timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e" --parts speed --sizes 1000,10000 \
                 --modes fp32,graphed_fp32 --no-water --budget-s 120 2>&1 | tail -n 6 ;;
    *) echo "unknown: $what"; exit 2 ;;
  esac
done
