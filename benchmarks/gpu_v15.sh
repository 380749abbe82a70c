#!/usr/bin/env bash
# One device call with the official V1.5 checkpoint (47 MB), which does not fit beside the carried wheels: carry
# only the fixtures, copied to .carry15/official_parity (cp -r ../shared/fixtures/official_parity .carry15/).  Needs
# nothing beyond the device's torch + triton (no OpenMM).  Since session 18 the tree plus all fixtures exceed the
# 64 MiB carry: .carry15 holds the V1.5 variant only and .carry15_tiny the tiny_* folders (modes s18c / parity with
# PARITY_VARIANTS); speed-only modes need just the config (E2F_FIXTURES=$PWD/.carry_bisect/fix, random weights).
#   run(command="bash benchmarks/gpu_v15.sh parity e2e", carry=[".carry15"])
#   parity: tests/gpu/check_parity.py, every fixture variant (tiny_* and v15) on the GPU vs the official outputs
#   tablecheck / kcheck: tests/gpu/check_table.py (TABLE attention and the edge-degree v2 kernels vs float64) /
#           tests/gpu/check_kernels.py (~4 min), as in gpu_quick.sh
#   parity_tables: the same with model.set_radial_tables(True) (frozen weights, edge MLPs read from tables)
#   tables12: radial tables end to end with bf16 (10k / 100k) and with set_compile (10k / 20k, fp32 / TF32)
#   graphed12: the CUDA-graph path (1k / 10k, fp32 / TF32) with radial tables, without and with set_compile(in_graphs)
#   e2e:    the V1.5 end-to-end table of item 4c: FCC carbon 1k / 10k / 20k / 100k, fp32 / TF32 / bf16 / graphed
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. benchmarks/stages.sh    # stages DIR LIMIT ARGS...: attention_stages.py into $OUT/DIR, then its table
rm -rf /tmp/pkg2 && mkdir -p /tmp/pkg2/openmm_e2former && cp -r openmm_e2former/* /tmp/pkg2/openmm_e2former/
rm -rf /tmp/pkg2/openmm_e2former/model /tmp/pkg2/openmm_e2former/kernels && cp -r model kernels /tmp/pkg2/openmm_e2former/
export PYTHONPATH="/tmp/pkg2:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export E2F_FIXTURES="${E2F_FIXTURES:-$PWD/.carry15/official_parity}"
nvidia-smi --query-gpu=name --format=csv,noheader
# an older tree (git archive COMMIT model kernels openmm_e2former, unpacked in $1) as the openmm_e2former package under
# $2, as setup.py maps it (session 18's A/B modes)
old_tree_pkg() {
  rm -rf "$2" && mkdir -p "$2/openmm_e2former" && cp -r "$1"/openmm_e2former/* "$2/openmm_e2former/"
  rm -rf "$2/openmm_e2former/model" "$2/openmm_e2former/kernels" && cp -r "$1/model" "$1/kernels" "$2/openmm_e2former/"
}
# water_e2e DIR LIMIT BUDGET: item 4c's periodic ~100k-atom water box alone, eager fp32 / TF32 / bf16, radial tables
# (session 23), into $OUT/DIR under a time limit of LIMIT seconds and a measuring budget of BUDGET
water_e2e() {
  E2F_RADIAL_TABLES=1 timeout "$2" python3 benchmarks/gpu_end_to_end.py --out "$OUT/$1" --parts speed --sizes "" \
      --modes fp32,tf32,bf16 --budget-s "$3" 2>&1 | grep -E '^\{|Error|budget' | cut -c1-300
}
# kcheck_appa CHECK BENCH: tests/gpu/check_kernels.py --v2 (every v2 case, today's default launches) into $OUT/CHECK.json,
# then item 4a's MLP and table pairs (fused and reference, App. A, 8k / 32k / 100k) into $OUT/BENCH (s22c, s24g)
kcheck_appa() {
  timeout 330 python3 tests/gpu/check_kernels.py "$OUT/$1.json" --v2 2>&1 | cut -c1-150 | tail -n 22
  BENCH_BUDGET_S=150 timeout 220 python3 benchmarks/bench_attention.py "$OUT/$2" \
      --impls fused,reference,fused_table,reference_table --settings appA --ns 8192,32768,100000 2>&1 \
      | grep -E '^\| appA|budget'
}
# 100k bf16 eager (radial tables), session 15's tree (.carry_old15) against this one, alternated, two processes each
ab_100k_old15() {
  old_tree_pkg .carry_old15 /tmp/pkg15
  for rep in 1 2; do
    for tree in old15 now; do
      pp="$PYTHONPATH"; [ "$tree" = old15 ] && pp="/tmp/pkg15:$PWD"
      PYTHONPATH="$pp" E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py \
          --out "$OUT/e2e_100k_${tree}_$rep" --parts speed --sizes 100000 --modes bf16 --no-water --budget-s 80 2>&1 \
          | grep -E '^\{|Error' | sed "s/^/$tree $rep /" | cut -c1-260
    done
  done
}
for what in "$@"; do
  case "$what" in
    s19a) # session 19, first: Block.forward no longer keeps U [N, 3, 9, C] through the FFN (session 18, untimed:
          # the bf16 / checkpointed blocks' path). 100k bf16 eager before / after, alternated, through the bisect mode:
          #   rm -rf .carry_bisect/t* && mkdir -p .carry_bisect/t7-55bd35a && git archive 55bd35a model kernels \
          #     openmm_e2former | tar -x -C .carry_bisect/t7-55bd35a
          #   run(command="E2F_FIXTURES=$PWD/.carry_bisect/fix BISECT_SIZES=100000 BISECT_MODES=bf16 bash
          #       benchmarks/gpu_v15.sh bisect", carry=[".carry_bisect"])
          # then this mode: the "block"-checkpointed 100k peaks (the <= 25 GB target; session 14: 23.5 GiB fp32 /
          # 19.3 GiB bf16) and graphed bf16 20k / 10k (~4 min)
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_100k_block" --parts speed \
          --sizes 100000 --modes fp32,bf16 --checkpoint block --no-water --budget-s 180 2>&1 | grep -E '^\{|Error' \
          | cut -c1-230
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed_bf16" --parts speed \
          --sizes 20000,10000 --modes graphed_bf16 --no-water --budget-s 100 2>&1 | grep -E '^\{|Error' | cut -c1-230 ;;
    tab19) # session 19: the TABLE launch settings re-swept at the bundled model's size (H 16, K 64, 115,200
           # atoms: the OpenMM main job) and at V1.5 10k, after the relaxed atomics; each variant checked against
           # float64 first (~6 min; needs no carry)
      V="stream, table;stream, table, 8 warps;stream, table, 160 registers;stream, table, 2 edges per step"
      V="$V;stream/tile, table;stream/tile, table, bwd 8 warps;stream/tile, table, bwd 2 warps"
      V="$V;stream/tile, table, bwd BLOCK_T 2;stream/tile, table, bwd 160 registers;stream/tile, table, uncapped"
      V="$V;stream/tile, table, bwd 4 programs per SM;stream/tile, table, bwd 16 programs per SM"
      stages tab_stages 500 --sizes bundled:115200:64,v15:10000:32 --variants "$V" ;;
    appa19) # session 19, for item 4a's MLP pair: the edge-MLP launch settings at the App. A size (H 16, K 64,
            # the untuned launch) re-swept after the relaxed atomics, as session 18 did for the TABLE backward (8 -> 4
            # warps: -11 % of the V1.5 20k step), 32k atoms, every variant checked against float64 first; then item
            # 4a's pair with the defaults (~7 min; needs no carry)
            #   run(command="bash benchmarks/gpu_v15.sh appa19")
      V="stream;stream, 4 warps;stream, uncapped;stream, 128 registers;stream, KC 16;stream, KC 64"
      V="$V;stream, 4 programs per SM;stream, 2 edges per step;stream/tile, DX2_SCR;stream/tile, DX2_SCR, bwd 8 warps"
      V="$V;stream/tile, DX2_SCR, bwd 2 warps;stream/tile, DX2_SCR, bwd uncapped;stream/tile, DX2_SCR, bwd KC 16"
      V="$V;stream/tile, DX2_SCR, bwd 4 programs per SM"
      stages appa_stages 420 --sizes appA:32768:64 --variants "$V"
      BENCH_BUDGET_S=100 timeout 150 python3 benchmarks/bench_attention.py "$OUT/attention_appa_s19" \
          --impls fused,reference --settings appA --ns 8192,32768 2>&1 | tail -n 4 ;;
    appa19b) # session 19, after appa19 (appA 32k: bwd 8 warps 46.0 -> 41.0 ms, fwd 4 programs per SM 11.3 -> 10.9):
             # the MLP launch's combinations around those two at the App. A size and the bundled model's (H 16, hid
             # 32: the same "untuned" defaults), each checked against float64 first (~3 min; needs no carry)
      V="stream;stream, 8 warps;stream, 4 programs per SM;stream, 2 programs per SM;stream/tile, DX2_SCR"
      V="$V;stream/tile, DX2_SCR, bwd 4 warps;stream/tile, DX2_SCR, bwd 8 warps;stream/tile, DX2_SCR, bwd 8 warps, HB 32"
      V="$V;stream/tile, DX2_SCR, bwd 8 warps, KC 32;stream/tile, DX2_SCR, bwd 8 warps, 4 programs per SM"
      V="$V;stream/tile, DX2_SCR, bwd 8 warps, uncapped"
      stages appa_stages_b 400 --sizes appA:32768:64,bundled:14400:64 --variants "$V" ;;
    su19) # session 19: the streamed forward's one-edge step unrolled 2 / 4 times (E2F_V2_FWD_STREAM_U; U bit-for-bit
          # the same), MLP and table forward, at App. A 32k with random sources (item 4a's setting), then the bundled
          # 115k (table: the OpenMM main job) and V1.5 10k with local ones; each checked against float64 (~5 min)
      V="stream;stream, unroll 2;stream, unroll 4;stream, table;stream, table, unroll 2;stream, table, unroll 4"
      stages su_random 220 --sizes appA:32768:64 --random-src --variants "$V"
      stages su_local 260 --sizes bundled:115200:64,v15:10000:32 --variants "$V" ;;
    s20d) # session 20, with the App. A launch from s20b / s20c (8 warps, 80 registers, KC 16, 3 programs per SM both ways,
          # forward SU 8): the unroll check (SU 4 / 8 / default bit-equal to SU 1; the default against float64), then
          # item 4a's MLP pair (fused and reference, App. A, N = 128 ... 32768 and 100k) (~5 min; needs no carry)
      timeout 170 python3 tests/gpu/check_stream_unroll.py "$OUT/stream_unroll_check.json" 2>&1 | tail -n 1 | cut -c1-300
      BENCH_BUDGET_S=150 timeout 260 python3 benchmarks/bench_attention.py "$OUT/attention_appa_s20d" \
          --impls fused,reference --settings appA 2>&1 | grep -E '^\| appA|budget' ;;
    s20e) # session 20, after s20d: tests/gpu/check_kernels.py (every kernel against its reference, App. A included) with
          # the new App. A launch (~4 min; needs no carry)
      timeout 400 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check.json" 2>&1 | tail -n 4 ;;
    s20f) # session 20, after s20d (whose unroll check ran past its 170 s): tests/gpu/check_kernels.py's App. A cases and
          # the unroll check again, then a last sweep around the new App. A launch (SU 16, HB 8, BLOCK_T 2, every RBF
          # centre; backward HB 8, KC 32, 6 programs per SM) (~6 min; needs no carry)
      timeout 150 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check_appa.json" --only=appA 2>&1 | tail -n 3 \
          | cut -c1-200
      timeout 230 python3 tests/gpu/check_stream_unroll.py "$OUT/stream_unroll_check.json" 2>&1 | tail -n 7 \
          | sed -E 's/"rel_err_U_dvec_dq_dk_dv": \[[^]]*\], //' | cut -c1-200
      B="stream/tile, DX2_SCR"
      V="stream;stream + FWD_STREAM_U=16;stream + FWD_HB=8;stream + FWD_BLOCK_T=2;stream + RBF_WIN=0"
      V="$V;$B;$B + BWD_HB=8;$B + BWD_KC=32;$B + BWD_PROGS_PER_SM=6"
      stages s20f 200 --sizes appA:32768:64 --random-src --variants "$V" ;;
    s23a) # session 23 (~9 min): (1) the _stream_step merge timed where its SASS changed (offline: the V1.5 table forward,
          # same loops, set-up order only): V1.5 10k table forward, this tree against the one before the merge (.carry_prev:
          # git archive 817c087 kernels benchmarks), alternated, two rounds; (2) item 4c's V1.5 table with session 22's
          # kernels, as s18g: graphed 20k / 10k / 1k TF32 / bf16 / fp32, then 100k eager bf16 / TF32, radial tables,
          # random V1.5 weights
          #   run(command="E2F_FIXTURES=$PWD/.carry_cfg bash benchmarks/gpu_v15.sh s23a", carry=[".carry_prev", ".carry_cfg"])
      for r in 1 2; do
        (cd .carry_prev && stages s23a_prev_$r 70 --sizes v15:10000:32 --variants "stream, table")
        stages s23a_new_$r 70 --sizes v15:10000:32 --variants "stream, table"
      done
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed_s23" --parts speed \
          --sizes 20000,10000,1000 --modes graphed_tf32,graphed_bf16,graphed_fp32 --no-water --budget-s 170 2>&1 \
          | grep -E '^\{|Error' | cut -c1-230
      E2F_RADIAL_TABLES=1 timeout 130 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_100k_s23" --parts speed \
          --sizes 100000 --modes bf16,tf32 --no-water --budget-s 100 2>&1 | grep -E '^\{|Error' | cut -c1-230 ;;
    s23c) # session 23 (~8 min): the whole model on the GPU against the official V1.5 outputs with session 19-22's kernels
          # (exact MLPs, then radial tables; parity last ran in session 18), then item 4c's periodic ~100k-atom water box
          # (last measured in session 14): eager fp32 / TF32 / bf16, radial tables, the V1.5 fixture checkpoint
          #   run(command="bash benchmarks/gpu_v15.sh s23c", carry=[".carry15"])   (.carry15/official_parity/v15 only)
      timeout 150 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu_s23.json" --variants v15 2>&1 \
          | tail -n 3
      timeout 150 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu_tables_s23.json" --variants v15 \
          --radial-tables 2>&1 | tail -n 3
      water_e2e e2e_water_s23 280 250 ;;
    s24g) # session 24, last (~9 min; needs no carry): s22c again with this session's tree (no default changed), for the
          # closing note: tests/gpu/check_kernels.py --v2 (20 cases), then item 4a's MLP and table pairs (App. A, 8k / 32k / 100k)
          #   run(command="bash benchmarks/gpu_v15.sh s24g")
      kcheck_appa kernels_gpu_check_v2_s24g attention_appa_s24g ;;
    s24f) # session 24 (~4 min; needs no carry): E2F_V2_FWD_DEPHASE_NS, the programs sharing an SM started k * N ns apart
          # (s24a: the MLP phase and the aggregation add up, 5.35 + ~5.4 ms; with equal work per block the resident
          # programs may stay in step); App. A 32k random sources, MLP forward, then the table forward; alternated.
          # No gain: the switch was removed again after this run; its code is in commit 550bbb8
          #   run(command="bash benchmarks/gpu_v15.sh s24f")
      S="stream"; T="stream, table"
      stages s24f_appa 300 --sizes appA:32768:64 --random-src --variants "$S;$S + FWD_DEPHASE_NS=20000;$S + FWD_DEPHASE_NS=43000;$S + FWD_DEPHASE_NS=65000;$S;$S + FWD_DEPHASE_NS=20000;$S + FWD_DEPHASE_NS=43000;$S + FWD_DEPHASE_NS=65000;$T;$T + FWD_DEPHASE_NS=10000;$T + FWD_DEPHASE_NS=25000" ;;
    s24e) # session 24, after s24d (grouped layer 1 3x slower: an exp per row and column thread in the inner loop): the
          # same with the basis values staged per 32-column chunk (~2 min; needs no carry)
          #   run(command="bash benchmarks/gpu_v15.sh s24e")
      timeout 200 python3 benchmarks/mlp_phase_probe.py --set l1gs --out "$OUT/mlp_phase_probe_${what}" 2>&1 | cut -c1-300 ;;
    s24d) # session 24, after s24c (~2 min; needs no carry): the probe's grouped first layer (rows sorted by d in the tile,
          # groups of RG rows walking the union of their windows: one weight row per group instead of per row)
          #   run(command="bash benchmarks/gpu_v15.sh s24d")
      timeout 200 python3 benchmarks/mlp_phase_probe.py --set l1g --out "$OUT/mlp_phase_probe_${what}" 2>&1 | cut -c1-300 ;;
    s24c) # session 24 (~5 min; needs no carry): the streamed forward's value rows cached in L2 only (E2F_V2_FWD_V_CG=1), to
          # keep L1 for the edge MLP's gathered first-layer weight rows: App. A 32k random sources (MLP and table forward,
          # MLP forward + backward), the bundled 115k table forward and V1.5 10k (MLP, table); alternated with the default
          #   run(command="bash benchmarks/gpu_v15.sh s24c")
      S="stream"; T="stream, table"; B="stream/tile, DX2_SCR"
      stages s24c_appa 300 --sizes appA:32768:64 --random-src \
          --variants "$S;$S + FWD_V_CG=1;$T;$T + FWD_V_CG=1;$S;$S + FWD_V_CG=1;$T;$T + FWD_V_CG=1;$B;$B + FWD_V_CG=1"
      stages s24c_bundled 120 --sizes bundled:115200:64 --variants "$T;$T + FWD_V_CG=1;$T;$T + FWD_V_CG=1"
      stages s24c_v15 120 --sizes v15:10000:32 --random-src --variants "$S;$S + FWD_V_CG=1;$T;$T + FWD_V_CG=1;$S;$S + FWD_V_CG=1" ;;
    s24b) # session 24, after s24a (~2 min; needs no carry): the probe's second config list (layer 1 with RBF windows of
          # 32 / 24 / 16 / 0 centres; tf32x3 with the weights split on the host and loaded once per program)
          #   run(command="bash benchmarks/gpu_v15.sh s24b")
      timeout 200 python3 benchmarks/mlp_phase_probe.py --out "$OUT/mlp_phase_probe_${what}" 2>&1 | cut -c1-300 ;;
    s24a) # session 24 (~4 min; needs no carry): benchmarks/mlp_phase_probe.py, the App. A edge MLP alone in the kernels'
          # SIMT form against full-K tensor-core dots (tf32x3) kept in the MMA layout through LN / SiLU, 32k atoms x 64;
          # then the real App. A forward with and without its aggregation ("none"), random sources, alternated (the
          # probe's config list has changed since: s24a ran the simt / tc3 / tc1 rows of mlp_phase_probe_s24a_h200.json)
          #   run(command="bash benchmarks/gpu_v15.sh s24a")
      timeout 200 python3 benchmarks/mlp_phase_probe.py --out "$OUT/mlp_phase_probe_${what}" 2>&1 | cut -c1-300
      stages s24a_appa 200 --sizes appA:32768:64 --random-src --variants "stream;none;stream;none" ;;
    s23e) # session 23, after the shift fix (neighbor_list's n @ cell in float64): tests/gpu/check_tf32_shift.py (the shifts
          # under allow_tf32 against float64, now and in the former float32 product), then s23c's water box again
          # (fp32 / TF32 / bf16 force differences; s23c had 0.35 / 0.34 eV/Å) (~5 min)
          #   run(command="bash benchmarks/gpu_v15.sh s23e", carry=[".carry15"])
      timeout 100 python3 tests/gpu/check_tf32_shift.py "$OUT/tf32_shift_check.json" 2>&1 | tail -n 3 | cut -c1-600
      water_e2e e2e_water_s23e 300 260 ;;
    s23b) # session 23 (~8 min): one million atoms (FCC carbon, item 4c's last target) with today's kernels: fp32 then
          # bf16, eager, radial tables, automatic checkpointing; session 4 ran it at 38.7 s/step, 100.6 GiB (exact MLPs)
          #   run(command="E2F_FIXTURES=$PWD/.carry_cfg bash benchmarks/gpu_v15.sh s23b", carry=[".carry_cfg"])
      E2F_RADIAL_TABLES=1 timeout 560 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_1m_s23" --parts speed \
          --sizes 1000000 --modes fp32,bf16 --no-water --budget-s 400 2>&1 | grep -E '^\{|Error|budget' | cut -c1-300 ;;
    s22f) # session 22, after s22e (~4 min; needs no carry): the bundled table forward at 128 registers (s22e, 115k: 4.51 -> 3.83 ms)
          # at the main job's small size too, and App. A with PHI_SCR on for both kernels (s22e forward: 10.97 -> 10.74
          # ms) as forward + backward; alternated
      T="stream, table"
      stages s22f_bundled 100 --sizes bundled:14400:64 --variants "$T;$T + FWD_MAXNREG=128;$T;$T + FWD_MAXNREG=128"
      F="stream/tile, DX2_SCR"
      stages s22f_appa 200 --sizes appA:32768:64 --random-src --variants "$F;$F + PHI_SCR=1;$F;$F + PHI_SCR=1" ;;
    s22e) # session 22 (~5 min; needs no carry): the launch knobs around R_SCR (it moved the forward's spills: App. A MLP 66 -> 74
          # at 80 registers, bundled table 4 -> 16 at 64): App. A 32k random sources, the MLP forward with SU 4 / 16 and
          # PHI_SCR on; the bundled 115k table forward with SU 2 and at 128 registers; defaults alternated
      S="stream"
      V="$S;$S + FWD_STREAM_U=4;$S + FWD_STREAM_U=16;$S + PHI_SCR=1;$S;$S + FWD_STREAM_U=4;$S + FWD_STREAM_U=16;$S + PHI_SCR=1"
      stages s22e_appa 250 --sizes appA:32768:64 --random-src --variants "$V"
      T="stream, table"
      V="$T;$T + FWD_STREAM_U=2;$T + FWD_MAXNREG=128;$T;$T + FWD_STREAM_U=2;$T + FWD_MAXNREG=128"
      stages s22e_bundled 150 --sizes bundled:115200:64 --variants "$V" ;;
    s22d) # (ran in session 22 as a raw command, ~1 min) item 4a's two fused kernels at App. A 32k in bench_attention's own
          # harness with E2F_V2_FWD_R_SCR off / on, alternated (s22c's table forward at 32k, 6.19 ms, was off its 5.8 ms)
      for i in 1 2; do for r in 0 1; do E2F_V2_FWD_R_SCR=$r BENCH_BUDGET_S=60 timeout 100 python3 benchmarks/bench_attention.py \
          "$OUT/ab_r${r}_$i" --impls fused_table,fused --settings appA --ns 32768 2>&1 | grep -E '^\| appA' \
          | sed "s/^/R_SCR=$r round $i /" | cut -c1-90; done; done ;;
    s22c) # session 22, after R_SCR / DD_SCR became defaults (~9 min; needs no carry): tests/gpu/check_kernels.py --v2, all 20
          # cases with today's default launches, then item 4a's MLP and table pairs (fused and reference, App. A, 8k / 32k / 100k)
      kcheck_appa kernels_gpu_check_v2 attention_appa_s22c ;;
    s22b) # session 22 (~8 min; needs no carry): E2F_V2_FWD_R_SCR, the streamed forward's unit vectors staged in scratch once
          # per block instead of recomputed (3 loads, sqrt, 3 divisions) per edge by every thread (bit-for-bit the same U;
          # offline sm_90 its per-edge loop App. A MLP 733 -> 622 instructions per 8 edges, V1.5 138 -> 118), forward only,
          # alternated: App. A 32k random sources (MLP and table), the bundled 115k table (the OpenMM main job), V1.5 10k;
          # then tests/gpu/check_table.py with it on
      S="stream"; T="stream, table"
      V="$S;$S + FWD_R_SCR=1;$S;$S + FWD_R_SCR=1;$T;$T + FWD_R_SCR=1;$T;$T + FWD_R_SCR=1"
      stages s22b_appa 200 --sizes appA:32768:64 --random-src --variants "$V"
      V="$T;$T + FWD_R_SCR=1;$T;$T + FWD_R_SCR=1"
      stages s22b_bundled 110 --sizes bundled:115200:64 --variants "$V"
      V="$S;$S + FWD_R_SCR=1;$S;$S + FWD_R_SCR=1"
      stages s22b_v15 80 --sizes v15:10000:32 --variants "$V"
      E2F_V2_FWD_R_SCR=1 timeout 150 python3 tests/gpu/check_table.py "$OUT/table_gpu_check_rscr.json" 2>&1 | tail -n 4 ;;
    s22a) # session 22, first (~4 min; needs no carry; its result made it the default, so the variants now name both states): E2F_V2_BWD_DD_SCR: the
          # backward's d/dd over the RBF window with the basis values staged in scratch (bit-for-bit the default's result
          # in the interpreter; offline sm_90 its loop 255 -> 202 instructions per term at V1.5, 282 -> 218 at App. A),
          # forward + backward alternated at V1.5 10k and App. A 32k (both with random sources), checked against float64
          # first; then
          # tests/gpu/check_kernels.py --v2 --only=v15 with it on
      F="stream/tile, DX2_SCR"
      V="$F + BWD_DD_SCR=0;$F + BWD_DD_SCR=1;$F + BWD_DD_SCR=0;$F + BWD_DD_SCR=1"
      stages s22a 200 --sizes v15:10000:32,appA:32768:64 --random-src --variants "$V"
      E2F_V2_BWD_DD_SCR=1 timeout 230 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check_v2_v15_ddscr.json" --v2 \
          --only=v15 2>&1 | tail -n 3 | cut -c1-200 ;;
    s21h) # session 21, after PHI_SCR became the V1.5 (tuned) launches' default: tests/gpu/check_kernels.py --v2, the v15 cases
          # (every kernel against its reference, N 100-20,000, degrees 8-64, with the RBF window) (~3 min; needs no carry)
      timeout 230 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check_v2_v15.json" --v2 --only=v15 2>&1 | tail -n 14 ;;
    s21g) # (ran in session 21 as a raw command) V1.5 10k PHI_SCR off / on, alternated (~1 min)
      F="stream/tile, DX2_SCR"
      stages s21g 150 --sizes v15:10000:32 --variants "stream + PHI_SCR=0;stream;$F + PHI_SCR=0;$F;stream + PHI_SCR=0;stream" ;;
    s21f) # session 21, last call (~5 min; needs no carry): the RBF window's basis values staged in scratch once per block
          # (E2F_V2_PHI_SCR, the new default; ncu21b: the window loop issued 23 % of the App. A forward's instructions,
          # ~40 % of them the per-term exp) against the old per-term form, App. A 32k random sources and V1.5 10k,
          # alternated, every variant checked against float64 first; then item 4a's MLP pair at 8k / 32k / 100k
      F="stream/tile, DX2_SCR"
      V="stream;stream + PHI_SCR=0;stream;stream + PHI_SCR=0;$F;$F + PHI_SCR=0;$F;$F + PHI_SCR=0"
      stages s21f 170 --sizes appA:32768:64 --random-src --variants "$V"
      V="stream;stream + PHI_SCR=0;$F;$F + PHI_SCR=0"
      stages s21f_v15 70 --sizes v15:10000:32 --variants "$V"
      BENCH_BUDGET_S=70 timeout 110 python3 benchmarks/bench_attention.py "$OUT/attention_appa_s21f" \
          --impls fused,reference --settings appA --ns 8192,32768,100000 2>&1 | grep -E '^\| appA|budget' ;;
    s21e) # session 21 (~2 min; needs no carry): the App. A table forward at 128 registers (fixed default) and at 64 (the
          # first version of session 21's table cap also applied to it), then overlap21 again
      T="stream, table"
      stages s21e 120 --sizes appA:32768:64 --random-src --variants "$T;$T + FWD_MAXNREG=64;$T"
      timeout 200 python3 benchmarks/overlap_probe.py --out "$OUT/overlap" 2>&1 | grep -v '^{' | tail -n 9 ;;
    overlap21) # session 21 (~2 min; needs no carry): benchmarks/overlap_probe.py: the App. A MLP forward without its
          # aggregation and the table forward (same gathers, no MLP) each alone and together on two CUDA streams
      # (its last call in session 21 ran --pairs 2:1,1:2,1:1,2:2, where both kernels fit on an SM at once: PAIRS=...)
      timeout 200 python3 benchmarks/overlap_probe.py --out "$OUT/overlap" ${PAIRS:+--pairs $PAIRS} 2>&1 \
          | grep -v '^{' | tail -n 9 ;;
    s21c) # needs the tree of commit 21ffa03 (E2F_V2_FWD_STAGGER_NS was removed after this run: no gain, session21_h200.md)
          # session 21, after s21a / s21b (~3 min; needs no carry): (1) the App. A forward's CTAs started out of phase
          # (E2F_V2_FWD_STAGGER_NS: program pid waits (pid // n_SM) * T ns, or (pid % 3) * T with STAGGER_MOD=3, so one
          # CTA of an SM runs its edge MLP while another gathers; session 20: MLP ~6.1 ms + gathers ~4.7 ms = 10.85 ms,
          # i.e. little overlap), alternated; (2) the bundled table forward's new 64-register default at 14,400 atoms
          # beside the old 128 (s21a measured 115k)
      S="stream + FWD_STAGGER_NS"
      V="stream;$S=15000;$S=30000;$S=45000;stream;$S=30000;$S=30000, FWD_STAGGER_MOD=3;$S=60000"
      stages s21c 260 --sizes appA:32768:64 --random-src --variants "$V"
      T="stream, table"
      V="$T;$T + FWD_MAXNREG=128;$T;$T + FWD_MAXNREG=128"
      stages s21c_table 100 --sizes bundled:14400:64,bundled:115200:64 --variants "$V" ;;
    s21b) # (ran in session 21), after gpu_quick.sh s21a (~4 min; needs no carry): what the backward's dv / dk atomics cost
          # (E2F_V2_BWD_ATOM=1: plain stores, 2: no write; timing only, wrong gradients, so their float64 checks fail by
          # design) and the backward without its aggregation, at the bundled 115k (table launch, the main job's) and App. A
          # 32k (MLP, item 4a): it decides whether a source-major backward without atomics is worth writing
      B="stream/tile, table"
      V="$B;$B, plain stores;$B, no dv / dk write;stream/none, table"
      stages s21b_table 150 --sizes bundled:115200:64 --variants "$V"
      M="stream/tile, DX2_SCR"
      V="$M;$M + BWD_ATOM=1;$M + BWD_ATOM=2;$M + BWD_AGG=none"
      stages s21b_mlp 200 --sizes appA:32768:64 --random-src --variants "$V" ;;
    s20i) # session 20, last call: the radial-table forward (the OpenMM main job's attention kernel) under a lower register cap:
          # offline sm_90 the bundled table forward needs no spills at 80 registers (6 CTAs of 4 warps per SM instead of 4)
          # and 4 spilled floats at 64 (8 CTAs); V1.5's spills 30 -> 80 at 80 (~3 min; needs no carry)
      T="stream, table"
      V="$T;$T + FWD_MAXNREG=80, FWD_PROGS_PER_SM=6;$T + FWD_MAXNREG=80;$T + FWD_MAXNREG=64"
      stages s20i 200 --sizes bundled:115200:64,v15:10000:32 --variants "$V" ;;
    s20h) # needs the tree of commit e4fc2ce (the option was removed after this run: slower; session20_h200.md section 5)
          # session 20, last: E2F_V2_FWD_PIPE (each block's streamed aggregation inside the next block's second Linear, so its
          # gathers are in flight under the dot's multiply-adds; bit-equal U in the interpreter) at App. A 32k, random
          # sources: with the new launch (80 registers: offline 122 spills), at 128 registers / 2 programs per SM (54
          # spills), and with KC 32 (16 edges per chunk) (~3 min; needs no carry)
      V="stream;stream + FWD_PIPE=1;stream + FWD_PIPE=1, FWD_MAXNREG=128, FWD_PROGS_PER_SM=2;stream + FWD_PIPE=1, FWD_KC=32"
      stages s20h 260 --sizes appA:32768:64 --random-src --variants "$V" ;;
    s20g) # session 20: tests/gpu/check_kernels.py with --v2 (the default CUDA kernel; every earlier kcheck ran v1, the
          # script's only kernel until now), all 20 cases, today's default launches (App. A's from session 20) (~5 min)
      timeout 450 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check_v2.json" --v2 2>&1 | cut -c1-150 | tail -n 24 ;;
    s20c) # session 20, after s20b (App. A fwd 12.84 -> 11.30 ms with KC 16, 80 registers, 3 programs per SM: 3 CTAs of 8
          # warps resident instead of 2): around that launch (SU, 16 / 4 warps, programs per SM), and the backward's
          # register cap the same way (offline sm_90: 80 -> 3 CTAs, 188 spills; 16 warps at 64 -> 2 CTAs of 16, 110) (~5 min)
      F="stream + FWD_KC=16, FWD_MAXNREG=80, FWD_PROGS_PER_SM=3"
      V="stream;$F;$F, FWD_STREAM_U=2;$F, FWD_STREAM_U=8;$F, FWD_STREAM_U=1"
      V="$V;stream + FWD_NUM_WARPS=16, FWD_KC=16, FWD_MAXNREG=64, FWD_PROGS_PER_SM=2"
      V="$V;stream + FWD_KC=16, FWD_MAXNREG=80, FWD_PROGS_PER_SM=6"
      V="$V;stream + FWD_NUM_WARPS=4, FWD_KC=16, FWD_MAXNREG=96, FWD_PROGS_PER_SM=5"
      B="stream/tile, DX2_SCR"
      V="$V;$B;$B + BWD_MAXNREG=80, BWD_PROGS_PER_SM=3;$B + BWD_NUM_WARPS=16, BWD_MAXNREG=64, BWD_PROGS_PER_SM=2"
      V="$V;$B + BWD_MAXNREG=64, BWD_PROGS_PER_SM=4"
      stages s20c 420 --sizes appA:32768:64 --random-src --variants "$V" ;;
    s20b) # session 20, after s20a (App. A MLP forward 12.98 ms = 6.07 MLP/logits/softmax + ~6.9 aggregation; the table
          # kernel aggregates the same gathers in ~4.7 ms at 4 CTAs of 4 warps per SM against the MLP kernel's 2 of 8):
          # more resident CTAs through a register cap (offline sm_90: 80 regs -> 3 CTAs, 74 spills; 64 -> 4, 94 spills;
          # 16 warps at 64 -> 2 CTAs of 16 warps, 58 spills), and the RBF window's share of the MLP phase (~4 min)
      V="stream;none;none + RBF_WIN=0;stream + RBF_WIN=0;stream + FWD_MAXNREG=80, FWD_PROGS_PER_SM=3"
      V="$V;stream + FWD_MAXNREG=64, FWD_PROGS_PER_SM=4;stream + FWD_NUM_WARPS=16, FWD_MAXNREG=64, FWD_PROGS_PER_SM=2"
      V="$V;none + FWD_MAXNREG=64, FWD_PROGS_PER_SM=4;stream + FWD_KC=16, FWD_MAXNREG=80, FWD_PROGS_PER_SM=3"
      stages s20b 280 --sizes appA:32768:64 --random-src --variants "$V" ;;
    s20a) # NEXT session (20), first (~4 min; needs no carry): the GPU check of the App. A launch's SU 4 default
          # (sucheck, never run: session 19's device time ran out), then item 4a's MLP pair with it (fused and
          # reference, App. A, 8k / 32k / 100k), to replace the SU 1 rows of attention_appa_s19c_h200.md; then the
          # MLP forward's breakdown at App. A 32k (aggregation left out: "none"), for the next lever (~6 min)
      timeout 180 python3 tests/gpu/check_stream_unroll.py "$OUT/stream_unroll_check.json" 2>&1 | tail -n 2 | cut -c1-300
      BENCH_BUDGET_S=120 timeout 200 python3 benchmarks/bench_attention.py "$OUT/attention_appa_s20" \
          --impls fused,reference --settings appA --ns 8192,32768,100000 2>&1 | grep -E '^\| appA|budget'
      stages appa_none 150 --sizes appA:32768:64 --random-src --variants "stream;none;stream, table;none, table" ;;
    sucheck) # session 19: tests/gpu/check_stream_unroll.py (SU 4 and the default bit-equal to SU 1, MLP and table, App. A /
             # V1.5 / bundled sizes; the default against float64, forward and backward; ~2 min; needs no carry)
      timeout 180 python3 tests/gpu/check_stream_unroll.py "$OUT/stream_unroll_check.json" 2>&1 | tail -n 8 | cut -c1-300 ;;
    x3_19) # session 19, last: tf32x3 edge-MLP dots (fp32-accurate on tensor cores; 17-38 % slower at V1.5 / bundled in
           # session 9, never timed at App. A) at App. A 32k, random sources, with and without SU 4 (~3 min)
      V="stream;stream, tf32x3 dots;stream, unroll 4;stream, tf32x3 dots, unroll 4;stream/tile, DX2_SCR"
      V="$V;stream/tile, DX2_SCR, tf32x3 dots"
      stages x3 250 --sizes appA:32768:64 --random-src --variants "$V" ;;
    appa19c) # session 19, with the App. A launch of appa19 / appa19b (bwd 8 warps, fwd 4 programs per SM from hid 128):
             # item 4a's table, both pairs (MLP and radial table), N = 128 ... 32768 and 100k (~3 min; needs no carry)
      BENCH_BUDGET_S=120 timeout 200 python3 benchmarks/bench_attention.py "$OUT/attention_appa_s19c" \
          --impls fused,reference,fused_table,reference_table --settings appA 2>&1 | grep -E '^\| appA|budget' ;;
    s18h) # session 18, after the forward_pending memory fix: graphed V1.5 20k / 10k TF32, peak memory (~1.5 min)
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed" --parts speed \
          --sizes 20000,10000 --modes graphed_tf32 --no-water --budget-s 100 2>&1 | grep -E '^\{|Error' | cut -c1-230 ;;
    s18g) # session 18, last: the V1.5 headline with the table backward's 4 warps: graphed 20k / 10k / 1k (TF32, bf16,
          # fp32), then 100k eager bf16 / TF32, official V1.5 checkpoint, radial tables (~5 min)
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed" --parts speed \
          --sizes 20000,10000,1000 --modes graphed_tf32,graphed_bf16,graphed_fp32 --no-water --budget-s 170 2>&1 \
          | grep -E '^\{|Error' | cut -c1-230
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_100k" --parts speed \
          --sizes 100000 --modes bf16,tf32 --no-water --budget-s 100 2>&1 | grep -E '^\{|Error' | cut -c1-230 ;;
    s18f) # session 18, after s18e: the table backward's new default (4 warps) against the old (8) and with HB 64, 20k /
          # 10k TF32 graphed, alternated in one process; then tests/gpu/check_table.py (TABLE kernels vs float64)
      timeout 200 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_nw.json" --sizes 20000,10000 --precision tf32 \
          --variants "l0,l0+E2F_V2_BWD_NUM_WARPS=8,l0+E2F_V2_BWD_HB=64" --rounds 2 --repeats 10 2>&1 | grep -E '^\{|Error' \
          | sed -E 's/"(precheck|stats_read|call_no_replay|neighbor_edges|neighbor_list_mode|graph_captured|system|replay|replay_gpu_in_call)(_ms)?": [^,]+, //g' \
          | cut -c1-240
      timeout 150 python3 tests/gpu/check_table.py "$OUT/table_gpu_check.json" 2>&1 | tail -n 3 ;;
    s18e) # session 18: the attention kernels' launch settings re-swept on the graphed V1.5 20k TF32 step (radial
          # tables; the table sweep of session 12 ran before the relaxed atomics and the [N, D, H] layout), alternated
          # in one process, two rounds (~6 min)
      v="l0"
      for e in E2F_V2_BWD_NUM_WARPS=4 E2F_V2_BWD_MAXNREG=0 E2F_V2_BWD_MAXNREG=168 E2F_V2_BWD_PROGS_PER_SM=4 \
               E2F_V2_BWD_HB=64 E2F_V2_FWD_NUM_WARPS=8 E2F_V2_FWD_MAXNREG=0; do v="$v,l0+$e"; done
      timeout 420 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_sweep.json" --sizes 20000 --precision tf32 \
          --variants "$v" --rounds 2 --repeats 10 2>&1 | grep -E '^\{|Error' \
          | sed -E 's/"(precheck|stats_read|call_no_replay|neighbor_edges|neighbor_list_mode|graph_captured|system)(_ms)?": [^,]+, //g' \
          | cut -c1-300 ;;
    s18d) # session 18, with the degree_linear fix: the graphed V1.5 headline (20k / 10k, TF32 / bf16) and 100k eager
          # bf16 / TF32, official V1.5 checkpoint, radial tables (~5 min)
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed" --parts speed \
          --sizes 20000,10000 --modes graphed_tf32,graphed_bf16 --no-water --budget-s 180 2>&1 \
          | grep -E '^\{|Error' | cut -c1-230
      E2F_RADIAL_TABLES=1 timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_100k" --parts speed \
          --sizes 100000 --modes bf16,tf32 --no-water --budget-s 130 2>&1 | grep -E '^\{|Error' | cut -c1-230 ;;
    s18c) # session 18: parity of the tiny fixtures (carried as .carry15_tiny: the tiny_* variant folders), then 100k
          # bf16 eager, session 15's code (.carry_old15) against this tree (degree_linear keeps bf16 parts in bf16
          # again), alternated, two processes each, random V1.5 weights (~4 min)
          #   run(command="E2F_FIXTURES=$PWD/.carry_bisect/fix bash benchmarks/gpu_v15.sh s18c",
          #       carry=[".carry_bisect", ".carry_old15", ".carry15_tiny"])
      timeout 120 python3 tests/gpu/check_parity.py .carry15_tiny "$OUT/parity_gpu_tiny.json" \
          --variants tiny_qk,tiny_qkdot,tiny_direct 2>&1 | tail -n 2
      ab_100k_old15 ;;
    bisect) # session 18: 100k bf16 eager (random V1.5 weights, radial tables) for each older tree unpacked under
            # .carry_bisect/tNAME (git archive COMMIT model kernels openmm_e2former), then this tree, two passes:
            # which commit after session 15 (6ff766d: 3.08 steps/s, 35.2 GiB) made 100k bf16 slower and larger.
            # BISECT_REPS: passes (default 2). BISECT_SIZES / BISECT_MODES: other cases (session 18: 20000 / graphed_tf32, before and after the refactors)
            #   run(command="E2F_FIXTURES=$PWD/.carry_bisect/fix bash benchmarks/gpu_v15.sh bisect", carry=[".carry_bisect"])
      for rep in $(seq 1 ${BISECT_REPS:-2}); do
        for tree in .carry_bisect/t* now; do
          pp="$PYTHONPATH"
          if [ "$tree" != now ]; then
            p=/tmp/pkgb/$(basename "$tree"); old_tree_pkg "$tree" "$p"; pp="$p:$PWD"
          fi
          PYTHONPATH="$pp" E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py \
              --out "$OUT/bisect_$(basename $tree)_$rep" --parts speed --sizes ${BISECT_SIZES:-100000} \
              --modes ${BISECT_MODES:-bf16} --no-water --budget-s 80 2>&1 \
              | grep -E '^\{|Error' | sed "s/^/$(basename $tree) $rep /" | cut -c1-200
        done
      done ;;
    s18b) # session 18, first: the GPU checks of session 17's four refactor commits (pairdot as one Function, the
          # RMS-norm vjp double backward, Block._node_part_pair): check_qkv_fused, check_rms_addend, then parity of
          # every fixture with exact MLPs (~6 min)
      timeout 170 python3 tests/gpu/check_qkv_fused.py "$OUT/qkv_fused_check.json" 2>&1 | grep -E '^\{|PASS|FAIL|Error' \
          | cut -c1-300
      timeout 150 python3 tests/gpu/check_rms_addend.py "$OUT/rms_addend_check.json" 2>&1 | grep -E '^\{|PASS|FAIL|Error' \
          | cut -c1-300
      timeout 170 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu_${PARITY_VARIANTS:-all}.json" \
          ${PARITY_VARIANTS:+--variants $PARITY_VARIANTS} 2>&1 | tail -n 3 ;;
    s18a) # session 18: 100k bf16 eager, session 15's code (commit 6ff766d, where 3.07 steps/s / 35.6 GiB were
          # measured) against this tree, alternated, two processes each (~6 min). Needs, carried beside .carry15:
          #   mkdir -p .carry_old15 && git archive 6ff766d model kernels openmm_e2former | tar -x -C .carry_old15
          #   run(command="bash benchmarks/gpu_v15.sh s18a", carry=[".carry15", ".carry_old15"])
      ab_100k_old15 ;;
    s17i) # session 17: 100k bf16 eager with the residual passthrough and sums off (E2F_RMS_RESIDUAL=0 E2F_RMS_ADD=0) and
          # on (the default): s17h gave 2.89 steps/s and 38.4 GiB against session 15's 2.96-3.07 and 35.6 (~4 min)
      for flags in "0 0" "1 1"; do
        set -- $flags
        E2F_RMS_RESIDUAL=$1 E2F_RMS_ADD=$2 E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py \
            --out "$OUT/e2e_100k_res$1" --parts speed --sizes 100000 --modes bf16 --no-water --budget-s 80 2>&1 \
            | grep -E '^\{|Error' | cut -c1-260
      done ;;
    s17h) # session 17, last: the graphed V1.5 20k / 10k TF32 in three separate processes (run-to-run spread of the
          # headline number), then 100k bf16 and TF32 eager (>= 3 steps/s) (~5 min)
      for i in 1 2 3; do
        E2F_RADIAL_TABLES=1 timeout 75 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_rep$i" --parts speed \
            --sizes 20000,10000 --modes graphed_tf32 --no-water --budget-s 60 2>&1 | grep -E '^\{|Error' | cut -c1-170
      done
      E2F_RADIAL_TABLES=1 timeout 110 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_100k" --parts speed \
          --sizes 100000 --modes bf16 --no-water --budget-s 90 2>&1 | grep -E '^\{|Error' | cut -c1-250 ;;
    s17g) # session 17: parity of every fixture (exact MLPs, then radial tables) with the session-17 defaults, the final
          # norm's l = 0 row A/B (graphed 20k / 10k TF32), then the graphed V1.5 table at 1k / 10k / 20k (TF32 / bf16 /
          # fp32), radial tables (~9 min)
      timeout 150 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu.json" 2>&1 | tail -n 3
      E2F_RADIAL_TABLES=1 timeout 150 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_l0.json" \
          --sizes 20000,10000 --precision tf32 --variants add,l0 --rounds 2 2>&1 | grep -E '^\{|Error' \
          | sed -E 's/"(precheck|stats_read|call_no_replay|neighbor_edges)_ms": [0-9.e-]+, //g' | cut -c1-400
      E2F_RADIAL_TABLES=1 timeout 260 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed" --parts speed \
          --sizes 20000,10000,1000 --modes graphed_tf32,graphed_bf16,graphed_fp32 --no-water --budget-s 240 2>&1 \
          | grep -E '^\{|Error' | cut -c1-300
      timeout 150 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu_tables.json" --radial-tables 2>&1 \
          | tail -n 3 ;;
    s16d) # session 16: the graphed call's parts (Verlet list / eager list, [N, D, H] / [N, H, D] projections) at V1.5
          # 10k TF32 and fp32, then the graphed V1.5 table at 10k / 20k (fp32 / TF32 / bf16), radial tables (~5 min)
      E2F_RADIAL_TABLES=1 timeout 130 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_breakdown_tf32.json" \
          --sizes 10000 --precision tf32 --rounds 1 2>&1 | grep -E '^\{|Error' | cut -c1-300
      E2F_RADIAL_TABLES=1 timeout 80 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_breakdown_fp32.json" \
          --sizes 10000 --precision fp32 --rounds 1 --variants dh,host_nl 2>&1 | grep -E '^\{|Error' | cut -c1-300
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed" --parts speed \
          --sizes 10000,20000 --modes graphed_fp32,graphed_tf32,graphed_bf16 --no-water --budget-s 180 2>&1 \
          | grep -E '^\{|Error' | cut -c1-300 ;;
    parity) timeout 200 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu.json" 2>&1 | tail -n 8 ;;
    tablecheck) timeout 200 python3 tests/gpu/check_table.py "$OUT/table_gpu_check.json" 2>&1 | tail -n 6 ;;
    kcheck) # the v1 kernels (the script's default); s20g: --v2
      timeout 300 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check.json" 2>&1 | tail -n 4 ;;
    parity_tables) timeout 200 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_gpu_tables.json" \
             --radial-tables 2>&1 | tail -n 8 ;;
    tables12) # session 12: radial tables with bf16 (10k / 100k), and with set_compile (fp32 / TF32, 10k / 20k)
      E2F_RADIAL_TABLES=1 timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_tables_bf16" --parts speed \
          --sizes 10000,100000 --modes bf16 --no-water --budget-s 130 2>&1 | grep -E '^\{|Error' | cut -c1-300
      E2F_RADIAL_TABLES=1 E2F_COMPILE=1 timeout ${COMPILE_TIMEOUT:-230} python3 benchmarks/gpu_end_to_end.py \
          --out "$OUT/e2e_tables_compiled" --parts speed --sizes 10000,20000 --modes fp32,tf32 --no-water \
          --budget-s 200 2>&1 | grep -E '^\{|Error' | cut -c1-300 ;;
    graphed12) # session 12: the CUDA-graph path with radial tables, plain and with set_compile(in_graphs=True)
      for c in 0 graphs; do
        E2F_RADIAL_TABLES=1 E2F_COMPILE=$c timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed_tables_compile_$c" \
            --parts speed --sizes 1000,10000 --modes graphed_fp32,graphed_tf32 --no-water --budget-s 180 2>&1 | grep -E '^\{|Error' | cut -c1-300
      done ;;
    e2e) timeout ${E2E_TIMEOUT:-330} python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e" --parts speed \
             --sizes 1000,10000,20000,100000 --modes fp32,tf32,bf16,graphed_fp32,graphed_tf32 --no-water \
             --budget-s ${E2E_BUDGET:-300} 2>&1 | grep '^{' | cut -c1-230 ;;
    *) echo "unknown: $what"; exit 2 ;;
  esac
done
