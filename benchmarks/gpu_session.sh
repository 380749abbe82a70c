#!/usr/bin/env bash
# One device call that runs the pending GPU measurements, most important first; each step writes into
# $OUT and is cut by its own time limit so one slow step cannot starve the rest.
# Carry the fixtures (.carry_full/shared/fixtures/official_parity, ~53 MB: cp -r ../shared/fixtures/official_parity
# .carry_full/shared/fixtures/) and run from the repository root:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".carry_full"], timeout_s=590)
set -u
mkdir -p /tmp/pkg/openmm_e2former
cp -r openmm_e2former/* /tmp/pkg/openmm_e2former/
ln -sfn "$PWD/model" /tmp/pkg/openmm_e2former/model
ln -sfn "$PWD/kernels" /tmp/pkg/openmm_e2former/kernels
export PYTHONPATH=/tmp/pkg E2F_FIXTURES="$PWD/.carry_full/shared/fixtures/official_parity" PYTHONUNBUFFERED=1
REPO="$PWD"
cd /tmp
nvidia-smi --query-gpu=name,memory.total --format=csv
# 1. whole model: parity + speed (fp32 / tf32 / bf16), FCC carbon 1k..100k and the 97k water box
timeout 330 python3 "$REPO/benchmarks/gpu_end_to_end.py" --parts parity,speed \
    --sizes 1000,10000,20000,50000,100000 --out "$OUT" --budget-s 300 2>&1 | tee "$OUT/e2e.log" | grep -v "OK$"
# 2. EAAS tensor product vs e3nn on the GPU (needs e3nn: carry its wheel if the image lacks it)
timeout 60 python3 "$REPO/benchmarks/bench_eaas_tp.py" --device cuda --edges 200000 --out "$OUT/eaas_tp_gpu.json" 2>&1 | tail -5
# 3. attention kernel v1 vs v2 (v2: 0 spills at compile time, never run on a GPU yet): check vs float64
#    reference (1e-5 gate), then time both; if v2 wins, make it the default (kernels/__init__.py)
(cd "$REPO" && timeout 200 python3 -m kernels._compile_report --gpu 16384 100000 2>&1 | tail -40)
