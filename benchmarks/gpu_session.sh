#!/usr/bin/env bash
# One device call for the pending issue-#4 measurements, most important first; each step writes into $OUT
# and is cut by its own time limit so one slow step cannot starve the rest.
# Carry the fixtures (.carry_full/shared/fixtures/official_parity, ~53 MB: cp -r ../shared/fixtures/official_parity
# .carry_full/shared/fixtures/) and run from the repository root:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".carry_full"], timeout_s=590)
# Inside a longer chain (benchmarks/gpu_chain.sh x2-start): GS_OUT=DIR writes there instead of $OUT, GS_PKG=DIR
# reuses an existing package mapping, and GS_PARITY_LAST=1 runs the parity part last, once
# $E2F_FIXTURES/.complete exists (a later call carries the fixtures in; waits up to GS_PARITY_WAIT s).
# Pending since session 3 (2026-11-29): the edge-degree v2 kernels are the default but the end-to-end numbers
# predate them; the "fine" activation checkpointing (model/e2former.py) is unmeasured on a GPU; 1M atoms untried.
set -u
OUT=${GS_OUT:-$OUT}
mkdir -p "$OUT"
if [ -z "${GS_PKG:-}" ]; then
    mkdir -p /tmp/pkg/openmm_e2former
    cp -r openmm_e2former/* /tmp/pkg/openmm_e2former/
    ln -sfn "$PWD/model" /tmp/pkg/openmm_e2former/model
    ln -sfn "$PWD/kernels" /tmp/pkg/openmm_e2former/kernels
    export PYTHONPATH=/tmp/pkg E2F_FIXTURES="$PWD/.carry_full/shared/fixtures/official_parity"
fi
export PYTHONUNBUFFERED=1
REPO="$PWD"
cd /tmp
nvidia-smi --query-gpu=name,memory.total --format=csv
# 1. whole model with the current kernels: parity (70 cases) + speed, FCC carbon 1k..100k, fp32/tf32
PARTS=parity,speed
[ -n "${GS_PARITY_LAST:-}" ] && PARTS=speed
timeout 240 python3 "$REPO/benchmarks/gpu_end_to_end.py" --parts $PARTS --no-water \
    --sizes 1000,10000,20000,50000,100000 --modes fp32,tf32 --out "$OUT/e2e" --budget-s 220 2>&1 \
    | tee "$OUT/e2e.log" | grep -v "OK$"
# 2. memory: 100k atoms with whole-block vs fine checkpointing (peak GiB and step time), then 1M atoms
#    (auto = fine above ~116k atoms at C = 256); an OOM is recorded, not fatal
timeout 90 python3 "$REPO/benchmarks/gpu_end_to_end.py" --parts speed --no-water --sizes 100000 --modes fp32 \
    --checkpoint fine --out "$OUT/fine" --budget-s 80 2>&1 | tee "$OUT/fine100k.log"
timeout 150 python3 "$REPO/benchmarks/gpu_end_to_end.py" --parts speed --no-water --sizes 1000000 --modes fp32 \
    --checkpoint auto --out "$OUT/million" --budget-s 140 2>&1 | tee "$OUT/million.log"
# 3. where the time goes at 10k (attention backward was 33 % before edge-degree v2)
timeout 70 python3 "$REPO/benchmarks/gpu_end_to_end.py" --parts profile --sizes 10000 --out "$OUT/profile" \
    > "$OUT/profile.log" 2>&1
# 4. (GS_PARITY_LAST) the 70 official parity cases once the full fixtures are there
if [ -n "${GS_PARITY_LAST:-}" ]; then
    for _ in $(seq 1 $(( ${GS_PARITY_WAIT:-300} / 5 ))); do
        [ -f "$E2F_FIXTURES/.complete" ] && break
        sleep 5
    done
    timeout 120 python3 "$REPO/benchmarks/gpu_end_to_end.py" --parts parity --out "$OUT/parity" 2>&1 \
        | tee "$OUT/parity.log" | grep -v "OK$"
fi
