#!/usr/bin/env bash
# One short device call (single GPU): install the carried wheels, map model/ and kernels/ into the
# openmm_e2former namespace as setup.py does, and run one benchmark command with its output under $OUT.
#   run(command="bash benchmarks/gpu_quick.sh graphed", carry=[".whl", ".carry"], timeout_s=...)
#   graphed:  benchmarks/gpu_graphed_check.py (float32 + float64, 200 OpenMM steps)
#   e2e1k:    gpu_end_to_end at 1,000 and 10,000 atoms, modes fp32 and graphed_fp32
#   s21a:     (ran in session 21) the table forward under a 64-register cap (session 20's lead), stages + OpenMM 115k
#   s22g:     session 22: the bundled OpenMM main job at 14k / 115k with session 22's kernel defaults, item 4a's MLP pair at 32k
#   s21d:     session 21: check_stream_unroll.py under the table forward's new cap, the bundled OpenMM main job 14k / 115k
#   ncu21:    session 21: Nsight Compute on the App. A MLP forward at 32k atoms
#   ncu21b:   session 21: its per-instruction counts (SourceCounters), SASS and Python-line CSV
#   md100k:   MD through OpenMM with the BUNDLED model on liquid water replicated from the last frame of the
#             100 ps campaign run: 2x2x2 (14,400 atoms) and 4x4x4 (115,200 atoms), fp32, 0.5 fs, each with the
#             degree buckets off and on, then 14,400 atoms with the CUDA graph forced on (~6 min)
#   variants: the opt-in attention-backward variants (DR_ACC, DU_BCAST) end to end at 10k fp32 vs the default
#   profile10k: torch.profiler of one V1.5-size energy + forces step at 10k atoms (fp32), per kernel
#   profile13: profile10k with the radial tables, fp32 and TF32
#   sem13:    (ran in session 13) relaxed dv / dk atomics: GPU checks, A/B stages, V1.5 with tables
#             at 10k / 20k, bundled OpenMM at 115k (~8 min)
#   final13c / final13t: session 13's defaults: GPU checks and tiny parity (c), then OpenMM 1.8k / 14.4k / 115k
#             and V1.5 10k / 20k / 100k (t) (~5 + 5 min)
#   attn4a13s: item 4a, App. A setting, fused vs reference at 8k / 32k / 100k (~3 min)
#   none14:   FIRST next session: "auto" without checkpointing where it fits vs "block", V1.5 50k / 100k (~8 min)
#   cg14:     next session: the CG, q / k invariant and RMS norm kernels: checks, micro-benchmark, end to end (~7 min)
#   compile14: next session: set_compile / CUDA graph on session 13's kernels with tables, 1k-100k (~9 min)
#   prof100k14: next session: the 100k step's profile (bf16, TF32) with tables (~5 min)
#   attn4a14: next session: item 4a's table pair and V1.5 setting (~6 min)
#   kcheck:   tests/gpu/check_kernels.py alone (~4 min; give the call 330 s: session 14's 250 s cut it off)
#   bf16out15: (ran in session 15): the bf16 node-kernel outputs: GPU bit-identity check and A/B, V1.5 2k-100k (~3 min)
#   prof10k15: next session: the 10k TF32 profile with session 14's defaults (~2 min)
#   s15b:     session 15: bf16out15's check by accuracy against float32, three timed rounds; 10k TF32 / 100k bf16 profiles
#   s15c:     session 15: the defaults after s15b's changes, V1.5 10k / 20k eager + graphed, 100k, 100k compiled bf16
#   s15d:     session 15: degree parts + in-place degree linears: checks, tiny parity, V1.5 10k-100k, OpenMM 1.8k / 115k
#   s15e:     session 15: V1.5 10k / 20k graphed (fp32, TF32, bf16) and 100k bf16 with E2F_V2_BF16_QK=1 (~1-2 min)
#   s16a:     NEXT session: node-kernel checks, eager 10k bf16 q / k A/B, bundled graph threshold at 32k / 49k atoms
#   multigpu16: NEXT session, kind nvidia-h200-x2: tests/gpu/check_multi_gpu.py (model on cuda:1, graphs, two threads)
#   gate15:   (ran in session 15): the opt-in gate kernel (E2F_GATE_KERNEL=1): GPU check, A/B at 10k / 100k (~4 min)
#   final14 / graphed14 / cg14b: (ran in session 14) OpenMM defaults + 100k profile; compile + graphs; node kernels
#   qkl13:    E2F_V2_QK_LAYOUT=dh (contiguous dk atomics) as stages and end to end with tables (~5 min)
#   bf16v13:  E2F_V2_BF16_VALUES=1 in bf16 mode with tables at 10k / 100k beside the default (~4 min)
#   ncu13:    ncu on the TABLE attention kernels (V1.5 10k), then the TABLE stage skips and the backward with its
#             dv / dk atomics as plain stores / left out (timing only: what the atomics cost) (~6 min)
#   ed13:     edge-degree register caps (0 / 128 / 168) under TABLE, V1.5 end to end at 10k / 20k, bundled OpenMM
#             at 115k (~6 min)
#   buckets:  the degree-bucketed kernel launches (E2F_V2_BUCKETS, on by default): correctness vs float64
#             (tests/gpu/check_buckets.py), then the graph check (600 waters, solvated dipeptide, float32) with
#             the buckets off and on (~7 min; md100k has the large systems)
#   prof115k: torch.profiler of one force call of the bundled model on 115,200 atoms of water, buckets off / on
#   stages:   benchmarks/attention_stages.py (fused attention by stage: tiled / streamed / split aggregation) at
#             the bundled and V1.5 sizes, then the 115k bundled profile and V1.5 at 10k with the split backward
#   defaults: the current defaults end to end: graph check (600 waters, dipeptide), the bundled model's MD at
#             14k / 115k atoms, its 115k profile, V1.5 end to end at 1k / 10k / 20k (fp32, graphed fp32)
#   tune_bundled: tile sweep of the v2 attention at the bundled model's sizes (K = 64, 115,200 atoms), each
#             config checked against float64 first (benchmarks/tune_attention_v2.py --bundled; ~7 min)
#   tune15:   the V1.5 tile sweep (tune_attention_v2.py, K = 32, H = 128, 10k atoms) under the register cap (~7 min)
#   nve10:    NVE of the 64-water box for 10 ps (20,000 steps of 0.5 fs) and the gas-phase dipeptide for 2 ps,
#             with the bundled model (training.report --nve; ~4 min)
#   attn4a:   benchmarks/bench_attention.py (issue #4 item 4a): the default fused kernels vs the PyTorch reference,
#             App. A and V1.5 settings, N = 128 ... 100,000 (~5 min)
#   attn4a13: attn4a with the radial-table pair as well (fused_table vs reference_table), N = 2k ... 100k (~6 min)
#   stages9:  attention_stages.py, the new variants only (split backward, tf32x3 / tf32 dots) beside the
#             default stream/tile, at V1.5 (10k) and bundled (115k) sizes (~5 min)
#   win9:     the RBF window (E2F_V2_RBF_WIN) on / off: attention stages, V1.5 end to end at 10k / 20k, and
#             the App. A / V1.5 attention benchmark at 32k / 100k atoms (~8 min)
#   next10v15 / next10bundled / next10appA: the variants written in session 9 without GPU time (streamed forward
#             with 2 / 4 / 8 edges per step, streamed / split backward with 4, 4-warp forward, register caps,
#             DR_ACC), each beside its default, at V1.5 10k / bundled 115k / App. A 100k (~4-5 min each; the JSONL
#             is written as it goes, so a timeout keeps what was measured).  V10="label;label;..." replaces the list
#             (e.g. the 2 / 8 edges per step, "stream, 4 warps", DU_BCAST, and "none" / "none/none" for the stage split)
#   bundled10: the defaults mode without its V1.5 part: graph check (float32 + float64), bundled MD 14k / 115k, profile
#   regs10:   register caps at V1.5 10k and bundled 115k sizes, then V1.5 end to end at 10k with the edge-degree
#             kernels capped too (~6 min)
#   glue10:   V1.5 end to end at 10k / 20k (fp32, TF32, graphed fp32), the 10k and bundled 115k profiles and the
#             graph check (float32), after the node-level changes of session 10 (~3 min)
#   next11:   the DX2_SCR backward (E2F_V2_BWD_DX2_SCR, untimed) beside the default at V1.5 10k / bundled 115k,
#             then V1.5 end to end at 10k / 20k with it (~5 min)
#   qk100k:   model.set_recompute_qk (query / key projections recomputed in the backward; opt-in, untimed) on /
#             off, V1.5 FCC carbon 10k / 100k fp32: steps/s and peak memory (~5 min)
#   s11:      s11a (next11 + qk100k) then s11b (the V1.5 cells not re-measured after session 10's node-level change, the
#             water box, precision tf32 / bf16 through OpenMM); ~6-9 min, or s11a and s11b as two calls
#   s11c:     in-kernel TF32 dots under the cap (stage + TF32 end to end at 10k / 20k), OpenMM MD at 115k (~6 min)
#   auto11:   "auto" checkpointing at 100k atoms on emulated 22 / 17 GiB cards (~3 min)
#   compile11: model.set_compile (experimental) at 10k / 20k beside a plain baseline (~4-5 min)
#   s12a/b/c: set_compile at 10k / 100k (fp32, bf16; first-call cost) / inside the CUDA graph (1k, 10k) / through
#             OpenMM at 115k, each beside plain runs (three calls, ~5 min each)
#   table12:  the radial-table attention kernels: GPU check vs float64, V1.5 end to end with tables (~6 min)
#   tablecheck: tests/gpu/check_table.py alone
#   table12s: the TABLE kernels as stages beside the MLP defaults, register caps (~5 min)
#   tabletiles: tiles / warps / register caps re-swept under TABLE (~5 min)
#   table12md: createSystem(radial_tables=True) through OpenMM, 600 waters and 115k atoms, beside plain (~4 min)
#   default12md: OpenMM MD with the automatic defaults (radial tables on CUDA), bundled model, 1.8k / 14.4k / 115k atoms
#   water13:  the water box with the radial tables (~5 min)
#   water100k: the periodic ~100k-atom water box of item 4c, V1.5 size, fp32 / TF32 / bf16 (~6 min)
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
cp -r .whl/pylib/* /tmp/site/
mkdir -p /tmp/pkg/openmm_e2former && cp -r openmm_e2former/* /tmp/pkg/openmm_e2former/
ln -sfn "$PWD/model" /tmp/pkg/openmm_e2former/model; ln -sfn "$PWD/kernels" /tmp/pkg/openmm_e2former/kernels
# register the openmm-ml entry point as pip would (MLPotential('e2formerv2') looks it up by name)
D=/tmp/pkg/openmm_e2former-0.1.0.dist-info; mkdir -p $D
printf 'Metadata-Version: 2.1\nName: openmm-e2former\nVersion: 0.1.0\n' > $D/METADATA
printf '[openmmml.potentials]\ne2formerv2 = openmm_e2former.potential:E2FormerV2PotentialImplFactory\n' > $D/entry_points.txt
export PYTHONPATH="/tmp/pkg:/tmp/site:$PWD" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export E2F_FIXTURES="$PWD/.carry/shared/fixtures/official_parity"
# liquid water from the last frame of the bundled model's 100 ps NPT run (the MD modes replicate it)
P=benchmarks/results/default_model/long_campaign/water_100ps/last_frame.pdb
. benchmarks/stages.sh    # stages DIR LIMIT ARGS...: attention_stages.py into $OUT/DIR, then its table
nvidia-smi --query-gpu=name --format=csv,noheader
for what in "$@"; do
  case "$what" in
    graphed) timeout 240 python3 benchmarks/gpu_graphed_check.py --out "$OUT/graphed" --repeats 20 \
                 --dtypes float32,float64 --openmm-steps 200 2>&1 | tail -n 12 ;;
    e2e1k) timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e" --parts speed --sizes 1000,10000 \
                 --modes fp32,graphed_fp32 --no-water --budget-s 120 2>&1 | tail -n 6 ;;
    s22g) # session 22, after its kernel defaults (R_SCR, DD_SCR, PHI_SCR on every forward, table forward back at 128
          # registers) (~4 min; carry .whl): the bundled OpenMM main job with no flags at 14,400 atoms (once) and 115,200
          # (twice), then item 4a's MLP pair at App. A 32k
      i=0
      for r in 2,2,2 4,4,4 4,4,4; do
        i=$((i + 1))
        timeout 90 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_s22g_$i.json" 2>&1 | tail -n 1 | cut -c1-300
      done
      BENCH_BUDGET_S=60 timeout 100 python3 benchmarks/bench_attention.py "$OUT/attention_appa_s22g" \
          --impls fused,reference --settings appA --ns 32768 2>&1 | grep -E '^\| appA|budget' ;;
    s21d) # session 21, after the table forward's 64-register default (~4 min; carry .whl and .carry): the GPU check of the
          # streamed forward (tests/gpu/check_stream_unroll.py: MLP and table launches at the App. A / V1.5 / bundled sizes
          # vs SU 1 and float64, now under the new cap), then the bundled OpenMM main job with the defaults and no flags
          # at 14,400 (once) and 115,200 atoms (twice)
      timeout 200 python3 tests/gpu/check_stream_unroll.py "$OUT/stream_unroll_check.json" 2>&1 | tail -n 8 | cut -c1-300
      for r in 2,2,2 4,4,4 4,4,4; do
        timeout 90 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_s21d.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    s21a) # (ran in session 21) first (~5 min; carry .whl and .carry): session 20's lead for the radial-table forward (the
          # main job's attention kernel: 64 registers, 8 CTAs per SM, 4.88 -> 4.64 ms at 115k in ONE call,
          # session20_h200.md section 6): the forward and forward + backward alternated twice at the bundled 115k, then
          # the bundled OpenMM main job at 115,200 atoms with and without E2F_V2_FWD_MAXNREG=64 (it caps every forward
          # launch; with the radial tables on, those are table launches)
      T="stream, table"; B="stream/tile, table"
      V="$T;$T + FWD_MAXNREG=64;$T;$T + FWD_MAXNREG=64;$B;$B + FWD_MAXNREG=64;$B;$B + FWD_MAXNREG=64"
      stages s21a 150 --sizes bundled:115200:64 --variants "$V"
      # the bundled model's edge-MLP forward (tables off, training) the App. A way: offline 80 registers fit 3 CTAs of 8
      # warps (88 spills), 64 fit 4 (132)
      V="stream;stream + FWD_MAXNREG=80, FWD_PROGS_PER_SM=3;stream + FWD_MAXNREG=64, FWD_PROGS_PER_SM=4"
      stages s21a_mlp 120 --sizes bundled:115200:64,bundled:14400:64 --variants "$V"
      for cap in "" 64 "" 64; do
        E2F_V2_FWD_MAXNREG=$cap timeout 80 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P \
            --reps 4,4,4 --steps 20 --out "$OUT/md_cap${cap:-default}.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    md100k)
      for r in 2,2,2 4,4,4; do
        for b in 0 1; do
          E2F_V2_BUCKETS=$b timeout 150 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P \
              --reps $r --steps 10 --out "$OUT/md_bundled_buckets$b.json" 2>&1 | tail -n 1
        done
      done
      # the CUDA-graph path forced on above its 5,000-atom default (the threshold predates the index_select fix)
      E2FORMER_CUDA_GRAPHS=1 timeout 120 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P \
          --reps 2,2,2 --steps 20 --out "$OUT/md_bundled_graphed.json" 2>&1 | tail -n 1 ;;
    variants)
      for v in base E2F_V2_BWD_DR_ACC E2F_V2_BWD_DU_BCAST; do
        env ${v/base/E2F_NONE}=1 timeout 130 python3 benchmarks/gpu_end_to_end.py --parts speed --sizes 10000 \
            --modes fp32 --no-water --budget-s 100 --out "$OUT/variants/$v" 2>&1 | tail -n 1
      done ;;
    profile10k)
      mkdir -p "$OUT/profile"
      timeout 120 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 10000 --out "$OUT/profile" \
          2>&1 | tail -n 3 ;;
    profile13)  # (ran in session 13) where the 10k step's time goes with the radial tables (fp32 and TF32)
      mkdir -p "$OUT/profile"
      for md in fp32 tf32; do
        E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 10000 \
            --modes $md --out "$OUT/profile" 2>&1 | tail -n 3
      done ;;
    final13c)   # session 13's defaults (q / k as [N, D, H] copies, bf16 values in the kernels, relaxed atomics): GPU
                # checks vs float64 (kernels; TABLE kernels, with the old hd layout too), parity of the tiny
                # official fixtures (the V1.5 checkpoint is not in .carry) (~5 min on a cold Triton cache)
      timeout 260 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check.json" 2>&1 | tail -n 1
      timeout 120 python3 tests/gpu/check_table.py "$OUT/table_gpu_check.json" 2>&1 | tail -n 1
      timeout 60 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity.json" --variants tiny_qk,tiny_qkdot,tiny_direct \
          2>&1 | tail -n 1 ;;
    final13t)   # then, on the warm machine: OpenMM with no flags (600 / 4,800 / 38,400 waters), V1.5 end to end with
                # tables at 10k / 20k (fp32, TF32) and 100k (bf16) (~5 min)
      for r in 1,1,1 2,2,2 4,4,4; do
        timeout 70 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-300
      done
      E2F_RADIAL_TABLES=1 timeout 90 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_tables" --parts speed \
          --sizes 10000,20000 --modes fp32,tf32 --no-water --budget-s 70 2>&1 | grep -E '^\{|Error' | cut -c1-200
      E2F_RADIAL_TABLES=1 timeout 70 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_tables_100k" --parts speed \
          --sizes 100000 --modes bf16 --no-water --budget-s 50 2>&1 | grep -E '^\{|Error' | cut -c1-200 ;;
    attn4a13s)  # item 4a in what was left of session 13's device time: App. A setting, fused vs the PyTorch reference
                # at 8k / 32k / 100k atoms with session 13's kernels (relaxed atomics, q / k as [N, D, H]) (~3 min)
      BENCH_BUDGET_S=100 timeout 150 python3 benchmarks/bench_attention.py "$OUT/attention_v2_s13" --impls fused,reference \
          --settings appA --ns 8192,32768,100000 2>&1 | grep -E '^appA' ;;
    none14)     # next session, FIRST: "auto" without checkpointing where it fits (session 13, untimed): V1.5 with tables at
                # 50k / 100k, fp32 and bf16, "auto" (now "none" on an H200) beside an explicit "block"; the JSON
                # says what "auto" chose and its peak memory (~8 min)
      for c in auto block; do
        E2F_RADIAL_TABLES=1 timeout 250 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_ckpt_$c" --parts speed \
            --sizes 50000,100000 --modes fp32,bf16 --no-water --checkpoint $c --budget-s 220 2>&1 \
            | grep -E '^\{|Error' | cut -c1-260
      done ;;
    cg14)       # next session: the three opt-in node-level kernels (session 13, interpreter-checked): the CG
                # contraction (E2F_CG_KERNEL=1), the query / key invariants (E2F_PAIRDOT_KERNEL=1) and the RMS norm
                # (E2F_RMSNORM_KERNEL=1): GPU checks vs float64 and timing beside PyTorch (benchmarks/bench_cg.py),
                # then V1.5 end to end with tables at 10k / 20k: all off, all on (~7 min); if all-on wins, time
                # them one by one before making any the default
      timeout 170 python3 benchmarks/bench_cg.py "$OUT/cg_bench" 2>&1 | grep -E '^\||^Last|FAIL|Error'
      for c in 0 1; do
        E2F_CG_KERNEL=$c E2F_PAIRDOT_KERNEL=$c E2F_RMSNORM_KERNEL=$c E2F_RADIAL_TABLES=1 timeout 90 python3 benchmarks/gpu_end_to_end.py \
            --out "$OUT/e2e_nodek$c" --parts speed --sizes 10000,20000 --modes fp32,tf32 --no-water --budget-s 70 2>&1 \
            | grep -E '^\{|Error' | cut -c1-200
      done ;;
    cg14b)      # session 14: cg14's checks (bench_cg.py; its import was shadowed by the repo's own openmm_e2former in
                # cg14), then each node-level kernel alone at V1.5 10k (fp32, TF32) with tables, and 100k bf16 all off / all on
      timeout 170 python3 benchmarks/bench_cg.py "$OUT/cg_bench" 2>&1 | grep -E '^\||^Last|FAIL|Error|PASS'
      for k in CG PAIRDOT RMSNORM; do
        env E2F_${k}_KERNEL=1 E2F_RADIAL_TABLES=1 timeout 60 python3 benchmarks/gpu_end_to_end.py \
            --out "$OUT/e2e_only_$k" --parts speed --sizes 10000 --modes fp32,tf32 --no-water --budget-s 45 2>&1 \
            | grep -E '^\{|Error' | cut -c1-200
      done
      for c in 0 1; do
        E2F_CG_KERNEL=$c E2F_PAIRDOT_KERNEL=$c E2F_RMSNORM_KERNEL=$c E2F_RADIAL_TABLES=1 timeout 80 python3 benchmarks/gpu_end_to_end.py \
            --out "$OUT/e2e_100k_nodek$c" --parts speed --sizes 100000 --modes bf16,tf32 --no-water --budget-s 65 2>&1 \
            | grep -E '^\{|Error' | cut -c1-200
      done ;;
    final14)    # session 14's defaults (node-level kernels on, "auto" without checkpointing where it fits): OpenMM with
                # no flags (600 / 4,800 / 38,400 waters), then where the 100k bf16 step's time goes (~6 min)
      for r in 1,1,1 2,2,2 4,4,4; do
        timeout 70 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-300
      done
      mkdir -p "$OUT/profile"
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 100000 \
          --modes bf16 --out "$OUT/profile" 2>&1 | tail -n 3 ;;
    graphed14)  # session 14: compile + CUDA graph (E2F_COMPILE=graphs) with tables at 20k / 10k / 1k, TF32 / bf16 / fp32
      E2F_COMPILE=graphs E2F_RADIAL_TABLES=1 timeout 430 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed14" \
          --parts speed --sizes 20000,10000,1000 --modes graphed_tf32,graphed_bf16,graphed_fp32 --no-water --budget-s 390 2>&1 \
          | grep -E '^\{|Error' | cut -c1-200 ;;
    bf16out15)  # next session: session 14's bf16 changes (node-kernel bf16 outputs, shared q/k/v cast, bf16 q/k into the
                # attention kernels; interpreter-checked): GPU check (energy bit-identical) and A/B of the three
                # configurations at V1.5 2k / 10k / 100k (bf16, tables) (~4 min)
      timeout 240 python3 benchmarks/gpu_bf16_out_check.py "$OUT/bf16_out_check.json" --sizes 2000,10000,100000 2>&1 \
          | grep -E '^\{|PASS|FAIL|Error' | cut -c1-300 ;;
    s15b)       # session 15: the bf16 check again (accuracy against float32 instead of bit-identity, three timed
                # rounds), then the 10k TF32 and 100k bf16 profiles with the gate kernel on (~7 min)
      timeout 250 python3 benchmarks/gpu_bf16_out_check.py "$OUT/bf16_out_check.json" --sizes 2000,10000,100000 2>&1 \
          | grep -E '^\{|PASS|FAIL|Error' | cut -c1-400
      mkdir -p "$OUT/prof10k" "$OUT/prof100k"
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 10000 \
          --modes tf32 --out "$OUT/prof10k" 2>&1 | tail -n 2
      E2F_RADIAL_TABLES=1 timeout 150 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 100000 \
          --modes bf16 --out "$OUT/prof100k" 2>&1 | tail -n 2 ;;
    s15c)       # session 15: the defaults after the gate kernel, bf16 q / k off and the edge-degree last Linear as
                # strided GEMMs: V1.5 with tables at 10k / 20k (eager fp32 / TF32 / bf16, graphed with the node
                # kernels, no compile) and 100k (TF32, bf16); then set_compile at 100k bf16 (~9 min)
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_s15" --parts speed \
          --sizes 10000,20000 --modes fp32,tf32,bf16,graphed_fp32,graphed_tf32,graphed_bf16 --no-water \
          --budget-s 180 2>&1 | grep -E '^\{|Error' | cut -c1-240
      E2F_RADIAL_TABLES=1 timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_s15_100k" --parts speed \
          --sizes 100000 --modes bf16,tf32 --no-water --budget-s 130 2>&1 | grep -E '^\{|Error' | cut -c1-240
      E2F_COMPILE=1 E2F_RADIAL_TABLES=1 timeout 190 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_s15_comp" \
          --parts speed --sizes 100000 --modes bf16 --no-water --budget-s 170 2>&1 | grep -E '^\{|Error' | cut -c1-240 ;;
    s15d)       # session 15, last call: q / k / v from contiguous degree parts and the degree-wise linears written in
                # place (E2F_DEGREE_LINEAR): its GPU check (with a micro-benchmark against the cat), tiny official
                # parity, V1.5 with tables at 10k / 20k (graphed TF32 / bf16, eager TF32) and 100k bf16 with
                # E2F_DEGREE_LINEAR on / off, then OpenMM with the bundled model and no flags at 1.8k / 115k (~9 min)
      timeout 60 python3 tests/gpu/check_degree_linear.py "$OUT/degree_linear_gpu_check.json" 2>&1 \
          | grep -E '^\{|PASS|FAIL|Error' | cut -c1-260
      timeout 100 python3 tests/gpu/check_parity.py "$E2F_FIXTURES" "$OUT/parity_tiny.json" \
          --variants tiny_qk,tiny_qkdot,tiny_direct 2>&1 | tail -n 1
      E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_s15d" --parts speed \
          --sizes 10000,20000 --modes graphed_tf32,graphed_bf16,tf32 --no-water --budget-s 80 2>&1 \
          | grep -E '^\{|Error' | cut -c1-200
      for dl in 1 0; do
        E2F_DEGREE_LINEAR=$dl E2F_RADIAL_TABLES=1 timeout 90 python3 benchmarks/gpu_end_to_end.py \
            --out "$OUT/e2e_s15d_100k_dl$dl" --parts speed --sizes 100000 --modes bf16 --no-water --budget-s 75 2>&1 \
            | grep -E '^\{|Error' | cut -c1-200
      done
      for r in 4,4,4 1,1,1; do
        timeout 70 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    s15e)       # session 15, after s15d: 10k / 20k graphed (fp32, TF32, bf16) with every session-15 default, and 100k
                # bf16 with E2F_V2_BF16_QK=1 (opt-in; +1 % at 100k in s15b) (~4 min)
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_s15e" --parts speed \
          --sizes 20000,10000 --modes graphed_tf32,graphed_bf16,graphed_fp32 --no-water --budget-s 105 2>&1 \
          | grep -E '^\{|Error' | cut -c1-200
      E2F_V2_BF16_QK=1 E2F_RADIAL_TABLES=1 timeout 80 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_s15e_100k_qk" \
          --parts speed --sizes 100000 --modes bf16 --no-water --budget-s 65 2>&1 | grep -E '^\{|Error' | cut -c1-200 ;;
    s16b)       # session 16 (run as "multigpu16 s16b" on kind nvidia-h200-x2): a fresh 10k TF32 profile (V1.5, tables; the last
                # one predates session 15's copy fixes) and the bundled model at 115,200 atoms with
                # E2FORMER_CUDA_GRAPHS 0 / 1 (s16a: graphs +35 % at 32k, +13 % at 49k), peak memory recorded (~7 min)
      mkdir -p "$OUT/prof10k"
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 10000 \
          --modes tf32 --out "$OUT/prof10k" 2>&1 | tail -n 2
      for gr in 0 1; do
        E2FORMER_CUDA_GRAPHS=$gr timeout 120 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P \
            --reps 4,4,4 --steps 20 --out "$OUT/md115k_graphs$gr.json" 2>&1 | tail -n 1 | cut -c1-200
      done ;;
    s16c)       # session 16 (run as "multigpu16 s16c" on kind nvidia-h200-x2): the graphed call's parts (eager neighbour
                # list, replay) at V1.5 10k / 20k TF32 with tables, and queries / keys made as [N, D, H] against the
                # [N, H, D] projection, alternated (~3 min)
      E2F_RADIAL_TABLES=1 timeout 300 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_breakdown.json" \
          --sizes 10000,20000 --precision tf32 2>&1 | grep -E '^\{|Error' | cut -c1-330 ;;
    s16e)       # session 16: the Verlet list against the eager list on the periodic water box (V1.5, 10k, fp32), then the
                # bundled model through OpenMM at 32k / 49k / 115k atoms with E2FORMER_CUDA_GRAPHS 0 / 1 (graphs now
                # with the Verlet list) for the size threshold (~6 min)
      E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_breakdown_water_fp32.json" \
          --system water --sizes 10000 --precision fp32 --rounds 1 --variants dh,host_nl 2>&1 \
          | grep -E '^\{|Error' | cut -c1-300
      for r in 3,3,2 3,3,3 4,4,4; do
        for gr in 0 1; do
          E2FORMER_CUDA_GRAPHS=$gr timeout 100 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P \
              --reps $r --steps 20 --out "$OUT/md_verlet_graphs$gr.json" 2>&1 | tail -n 1 | cut -c1-120
        done
      done ;;
    s16f)       # session 16's defaults: OpenMM with the bundled model and no flags (graphs up to 150,000 atoms, the
                # Verlet list checked before each replay) at 1.8k / 14.4k / 115k atoms, then the V1.5 graphed TF32
                # cells (10k / 20k) in two processes (~4 min)
      for r in 1,1,1 2,2,2 4,4,4; do
        timeout 100 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-120
      done
      for k in 1 2; do
        E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed_tf32_$k" \
            --parts speed --sizes 10000,20000 --modes graphed_tf32 --no-water --budget-s 90 2>&1 \
            | grep -E '^\{|Error' | cut -c1-200
      done ;;
    s16g)       # session 16: NVE of 4,800 waters (14,400 atoms) for 1,000 steps of 0.5 fs through OpenMM, bundled model:
                # the CUDA graph with its Verlet list against the eager path (energy drift / fluctuation, builds)
      timeout 240 python3 benchmarks/verlet_nve_check.py "$OUT/verlet_nve.json" --from-pdb $P --reps 2,2,2 \
          --steps 1000 2>&1 | grep -E '^\{|Error|Traceback' | cut -c1-420 ;;
    s17a)       # NEXT session: the residual passthrough (E2F_RMS_RESIDUAL=1, written in session 16 after its GPU time:
                # interpreter-checked only) against the default, graphed V1.5 10k / 20k TF32 with tables, alternated
                # in one process, with the energy / force comparison (~3 min); then bench_cg.py's kernel checks
      E2F_RADIAL_TABLES=1 timeout 250 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_rms_res.json" \
          --sizes 10000,20000 --precision tf32 --variants dh,rms_res 2>&1 | grep -E '^\{|Error' | cut -c1-300 ;;
    s17b)       # session 17: the 10k TF32 profile (tables) with E2F_RMS_RESIDUAL=1, with the adds' sources; then the
                # passthrough against the default in float32 (the TF32 A/B differed by 7e-4 in forces: is it TF32 noise?)
      mkdir -p "$OUT/prof_rms"
      E2F_RMS_RESIDUAL=1 E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/gpu_end_to_end.py --parts profile \
          --sizes 10000 --modes tf32 --out "$OUT/prof_rms/x" 2>&1 | tail -n 3
      E2F_RADIAL_TABLES=1 timeout 150 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_rms_res_fp32.json" \
          --sizes 10000 --precision fp32 --variants dh,rms_res 2>&1 | grep -E '^\{|Error' | cut -c1-300 ;;
    s17c)       # session 17: where the graphed call's ~0.6 ms beyond its replay goes (the pre-replay move check, the stats
                # read, the call without its replay) and the call without the pre-check, V1.5 10k / 20k TF32 (~2 min)
      E2F_RADIAL_TABLES=1 timeout 250 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_overhead.json" \
          --sizes 10000,20000 --precision tf32 --variants rms_res,rms_res_nopre 2>&1 | grep -E '^\{|Error' | cut -c1-400 ;;
    s17d)       # session 17: the fused q / k / v projections (E2F_QKV_FUSED): GPU check (pairdot_groups against float64,
                # the V1.5 model 0 vs 1 in float32), then graphed V1.5 10k / 20k TF32 A/B against session 17's first
                # default (rms_res), with and without the pre-replay move check (~4 min)
      timeout 150 python3 tests/gpu/check_qkv_fused.py "$OUT/qkv_fused_check.json" 2>&1 | grep -E '^\{|PASS|FAIL|Error' \
          | cut -c1-300
      E2F_RADIAL_TABLES=1 timeout 300 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_qkv.json" \
          --sizes 10000,20000 --precision tf32 --variants rms_res,qkv,qkv_nopre 2>&1 | grep -E '^\{|Error' | cut -c1-400 ;;
    s17e)       # session 17: the residual sums inside the norm kernels (E2F_RMS_ADD): GPU check against float64, then graphed
                # V1.5 10k / 20k TF32 A/B against the fused q / k / v alone, and a float32 10k comparison (~5 min)
      timeout 120 python3 tests/gpu/check_rms_addend.py "$OUT/rms_addend_check.json" 2>&1 | grep -E '^\{|PASS|FAIL|Error' \
          | cut -c1-300
      E2F_RADIAL_TABLES=1 timeout 280 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_add.json" \
          --sizes 10000,20000 --precision tf32 --variants qkv,add --rounds 3 2>&1 | grep -E '^\{|Error' | cut -c1-600
      E2F_RADIAL_TABLES=1 timeout 120 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_add_fp32.json" \
          --sizes 10000 --precision fp32 --variants qkv,add --rounds 1 2>&1 | grep -E '^\{|Error' | cut -c1-600 ;;
    s17f)       # session 17: a profiler trace of one graphed V1.5 20k TF32 call and one bare replay (where the call's ~0.6 ms
                # beyond the replay's GPU time goes), then OpenMM with no flags on the bundled model (1,800 / 14,400 /
                # 115,200 atoms) with every session-17 default (~4 min)
      E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/graphed_breakdown.py "$OUT/graphed_trace.json" \
          --sizes 20000 --precision tf32 --variants add --rounds 1 --trace 2>&1 | grep -E '^\{|Error' | cut -c1-3000
      for r in 1,1,1 2,2,2 4,4,4; do
        timeout 80 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    s17j)       # session 17: tests/gpu/check_qkv_fused.py again, now with the bf16 section (pairdot_groups, and pairdot with
                # float32 / bf16 outputs, backward in bf16: the session-15 to_out path had no GPU accuracy check) (~2 min)
      timeout 200 python3 tests/gpu/check_qkv_fused.py "$OUT/qkv_fused_check.json" 2>&1 | grep -E '^\{|PASS|FAIL|Error' \
          | cut -c1-300 ;;
    multigpu16) # NEXT session, on kind nvidia-h200-x2 (2 GPUs): tests/gpu/check_multi_gpu.py (the model on cuda:1 while
                # cuda:0 is current: eager fp32 / bf16, MLPs / tables, the CUDA-graph path, two replicas from two
                # threads) (~2 min)
      nvidia-smi --query-gpu=index,name --format=csv,noheader
      timeout 200 python3 tests/gpu/check_multi_gpu.py "$OUT/multi_gpu_check.json" 2>&1 | grep -E '^\{|PASS|FAIL|SKIP|Error' \
          | cut -c1-300 ;;
    s16a)       # NEXT session (~8 min): bench_cg.py (the node kernels' GPU checks, now with the pairdot backward's
                # to_out rounding), eager 10k bf16 with E2F_V2_BF16_QK 0 / 1 (re-timed after session 15's changes), and
                # the CUDA-graph threshold for the bundled model: OpenMM at 32,400 and 48,600 atoms with
                # E2FORMER_CUDA_GRAPHS=0 / 1 (the default graphs up to 15,000 atoms; V1.5 at 20k is +21 % graphed)
      timeout 170 python3 benchmarks/bench_cg.py "$OUT/cg_bench" 2>&1 | grep -E '^\||^Last|FAIL|Error|PASS'
      for q in 0 1; do
        E2F_V2_BF16_QK=$q E2F_RADIAL_TABLES=1 timeout 60 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_qk$q" \
            --parts speed --sizes 10000 --modes bf16 --no-water --budget-s 45 2>&1 | grep -E '^\{|Error' | cut -c1-200
      done
      for r in 3,3,2 3,3,3; do
        for gr in 0 1; do
          E2FORMER_CUDA_GRAPHS=$gr timeout 80 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P \
              --reps $r --steps 20 --out "$OUT/md_graphs$gr.json" 2>&1 | tail -n 1 | cut -c1-300
        done
      done ;;
    prof10k15)  # next session: where the 10k TF32 step goes now (tables, node-level kernels on): the 5x target
      mkdir -p "$OUT/profile"
      E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 10000 \
          --modes tf32 --out "$OUT/profile" 2>&1 | tail -n 3 ;;
    gate15)     # next session: the opt-in gate kernel (E2F_GATE_KERNEL=1, session 14, interpreter-checked): GPU check
                # vs float64, then V1.5 with tables at 10k (fp32, TF32) and 100k (bf16) off / on (~4 min)
      timeout 150 python3 tests/gpu/check_gate.py "$OUT/gate_gpu_check.json" 2>&1 | tail -n 2
      for c in 0 1; do
        E2F_GATE_KERNEL=$c E2F_RADIAL_TABLES=1 timeout 70 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_gate$c" \
            --parts speed --sizes 10000 --modes fp32,tf32 --no-water --budget-s 55 2>&1 | grep -E '^\{|Error' | cut -c1-200
        E2F_GATE_KERNEL=$c E2F_RADIAL_TABLES=1 timeout 70 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_gate100k$c" \
            --parts speed --sizes 100000 --modes bf16 --no-water --budget-s 55 2>&1 | grep -E '^\{|Error' | cut -c1-200
      done ;;
    compile14)  # next session: set_compile and the CUDA graph on top of session 13's kernels, with tables: V1.5 at 10k /
                # 20k (fp32, TF32) and 100k (TF32, bf16; the 3 steps/s target), then graphed 1k / 10k with compile (~9 min)
      E2F_COMPILE=1 E2F_RADIAL_TABLES=1 timeout 300 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_compiled" \
          --parts speed --sizes 10000,20000,100000 --modes fp32,tf32,bf16 --no-water --budget-s 270 2>&1 \
          | grep -E '^\{|Error' | cut -c1-220
      E2F_COMPILE=graphs E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed" \
          --parts speed --sizes 1000,10000 --modes graphed_fp32,graphed_tf32 --no-water --budget-s 170 2>&1 \
          | grep -E '^\{|Error' | cut -c1-220 ;;
    prof100k14) # next session: where the 100k bf16 step's time goes with session 13's kernels (tables), and TF32
      mkdir -p "$OUT/profile"
      for md in bf16 tf32; do
        E2F_RADIAL_TABLES=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 100000 \
            --modes $md --out "$OUT/profile" 2>&1 | tail -n 3
      done ;;
    attn4a14)   # next session: the rest of item 4a (session 13 ran App. A, fused vs reference, 8k-100k): the radial-table
                # pair and the V1.5 setting, N = 2k ... 100k (~6 min; written as it goes)
      BENCH_BUDGET_S=420 timeout 540 python3 benchmarks/bench_attention.py "$OUT/attention_v2_tables_s14" \
          --impls fused,reference,fused_table,reference_table --ns 2048,8192,32768,100000 2>&1 | grep -E '^(appA|v15)' ;;
    kcheck)     # tests/gpu/check_kernels.py alone, with room to finish (sem13's 150 s cut it off before its summary)
      timeout 300 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check.json" 2>&1 | tail -n 4 ;;
    sem13)      # (ran in session 13) the relaxed dv / dk atomics (default since session 12, untimed; acq_rel compiled
                # each atomic to MEMBAR.ALL.GPU + CCTL.IVALL, attention_atomic_sem_report.md): GPU checks against
                # float64, the A/B as stages, then V1.5 end to end with tables and the bundled 115k OpenMM step, to
                # set beside session 12's numbers (~8 min)
      timeout 120 python3 tests/gpu/check_table.py "$OUT/table_gpu_check.json" 2>&1 | tail -n 2
      timeout 150 python3 tests/gpu/check_kernels.py "$OUT/kernels_gpu_check.json" 2>&1 | tail -n 3
      timeout 170 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream/tile, table;stream/tile, table, acq_rel atomics;stream/tile, DX2_SCR;stream/tile, DX2_SCR, acq_rel atomics" \
          2>&1 | grep '^{' | cut -c1-220
      E2F_RADIAL_TABLES=1 timeout 80 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_tables" --parts speed \
          --sizes 10000,20000 --modes fp32,tf32 --no-water --budget-s 60 2>&1 | grep -E '^\{|Error' | cut -c1-200
      timeout 70 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps 4,4,4 --steps 20 \
          --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-300 ;;
    qkl13)      # (ran in session 13; dh is the default since) q / k in the [N, D, H] layout (E2F_V2_QK_LAYOUT=dh: contiguous dk atomics; interpreter-
                # checked, ptxas in attention_qk_layout_compile_report.md) as stages beside the defaults, then V1.5
                # end to end with tables at 10k / 20k, both layouts in one call (~5 min)
      timeout 200 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream, table;stream, table, QK hd;stream/tile, table;stream/tile, table, QK hd;stream/tile, DX2_SCR;stream/tile, DX2_SCR, QK hd" \
          2>&1 | grep '^{' | cut -c1-220
      for L in hd dh; do
        E2F_V2_QK_LAYOUT=$L E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_qk_$L" \
            --parts speed --sizes 10000,20000 --modes fp32,tf32 --no-water --budget-s 80 2>&1 | grep -E '^\{|Error' | cut -c1-200
      done ;;
    bf16v13)    # (ran in session 13; now the default) E2F_V2_BF16_VALUES=1 (bf16 values straight into the kernels; bit-identical, interpreter-
                # checked) in bf16 mode with tables, 10k / 100k, beside the default in the same call (~4 min)
      for b in 0 1; do
        E2F_V2_BF16_VALUES=$b E2F_RADIAL_TABLES=1 timeout 110 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_bf16v$b" \
            --parts speed --sizes 10000,100000 --modes bf16 --no-water --budget-s 90 2>&1 | grep -E '^\{|Error' | cut -c1-220
      done ;;
    ncu21)      # session 21 (~2 min; carry .whl, which this script installs first): Nsight Compute on the App. A MLP forward at 32k atoms (item 4a): is its
                # edge-MLP phase bound by the FMA pipe or by the shared-memory / LSU path its gathers also use (s21c: CTAs
                # started out of phase gained nothing)
      timeout 200 ncu --clock-control none -k regex:_attn_fwd --launch-skip 2 --launch-count 2 --section SpeedOfLight \
          --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis --section Occupancy \
          --section InstructionStats --metrics sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.avg.pct_of_peak_sustained_elapsed,l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum,lts__t_sectors_srcunit_tex_op_read.sum,dram__bytes_read.sum,smsp__inst_executed.sum \
          python3 benchmarks/ncu_attention.py --setting appA --n 32768 --k 64 --repeats 3 > "$OUT/ncu_appa_fwd_32k.txt" 2>&1
      grep -v "^==PROF==" "$OUT/ncu_appa_fwd_32k.txt" | grep -v -E "^ +(OPT|WRN|INF)? +[A-Za-z(].*[a-z.,]  +$" | cut -c1-130 | tail -n 150 ;;
    ncu21b)     # session 21 (~2 min; carry .whl): per-instruction counts (SourceCounters) of the App. A MLP forward at 32k,
                # to see which part of the edge MLP issues the instructions that are not FFMA (ncu21: 2.2 of 5.4 G are)
      timeout 240 ncu --clock-control none -k regex:_attn_fwd --launch-skip 3 --launch-count 1 --section SourceCounters \
          --section WarpStateStats --import-source yes -o "$OUT/appa_src" \
          python3 benchmarks/ncu_attention.py --setting appA --n 32768 --k 64 --repeats 3 2>&1 | tail -n 3
      for p in sass cuda; do
        timeout 120 ncu -i "$OUT/appa_src.ncu-rep" --page source --csv --print-source $p > "$OUT/appa_src_$p.csv" 2>&1
        echo "$p: $(wc -l < "$OUT/appa_src_$p.csv") lines"; head -c 600 "$OUT/appa_src_$p.csv"; echo
      done
      gzip "$OUT"/appa_src_*.csv; ls -la "$OUT" ;;
    ncu13)      # next session: Nsight Compute on the TABLE attention kernels at V1.5 10k (if the machine's runtime gives
                # ncu its counters: KINDS.md), then the TABLE stage skips (aggregation left out) as the counter-free way
      timeout 240 ncu --clock-control none -k regex:_attn_ --launch-skip 2 --launch-count 2 --section SpeedOfLight \
          --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
          python3 benchmarks/ncu_attention.py --setting v15 --n 10000 --k 32 --table > "$OUT/ncu_table_v15_10k.txt" 2>&1
      tail -n 60 "$OUT/ncu_table_v15_10k.txt"
      timeout 200 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream, table;none, table;stream/tile, table;stream/none, table;stream/tile, table, plain stores;stream/tile, table, no dv / dk write" \
          2>&1 | grep '^{' | cut -c1-220 ;;
    ed13)       # next session: register caps on the edge-degree kernels under TABLE (V1.5 table backward: 181 registers,
                # 1 CTA of 8 warps per SM, attention_table_compile_report.md), V1.5 end to end at 10k / 20k with tables
      for r in 0 128 168; do
        E2F_ED_V2_MAXNREG=$r E2F_RADIAL_TABLES=1 timeout 100 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_ed_maxnreg$r" \
            --parts speed --sizes 10000,20000 --modes fp32 --no-water --budget-s 80 2>&1 | grep -E '^\{|Error' | cut -c1-200
      done
      # the bundled model, where the edge-degree kernels took 17 % of the 115k step (session 10 profile); under TABLE
      # its forward compiles to 128 registers with no spills at the cap (4 CTAs per SM instead of 3)
      for r in 0 128; do
        E2F_ED_V2_MAXNREG=$r timeout 100 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps 4,4,4 \
            --steps 20 --out "$OUT/md_ed_maxnreg$r.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    buckets)
      timeout 270 python3 tests/gpu/check_buckets.py "$OUT/buckets_gpu_check.json" 2>&1 | tail -n 5
      for b in 0 1; do
        E2F_V2_BUCKETS=$b timeout 180 python3 benchmarks/gpu_graphed_check.py --out "$OUT/graphed_buckets$b" \
            --repeats 20 --dtypes float32 --openmm-steps 200 2>&1 | grep -E "ms_graphed|openmm_steps" | cut -c1-300
      done ;;
    prof115k)
      for b in 0 1; do
        E2F_V2_BUCKETS=$b timeout 200 python3 benchmarks/profile_bundled_water.py --reps 4,4,4 \
            --out "$OUT/prof_buckets$b" 2>&1 | head -n 30
      done ;;
    stages)
      timeout 330 python3 benchmarks/attention_stages.py --out "$OUT/stages" \
          --sizes bundled:115200:64,v15:10000:32 2>&1 | grep '^{' | cut -c1-220
      # the bundled model's 115k force call with the defaults, then with the split backward
      timeout 80 python3 benchmarks/profile_bundled_water.py --reps 4,4,4 --out "$OUT/prof" 2>&1 | grep '^{'
      E2F_V2_BWD_AGG=split timeout 80 python3 benchmarks/profile_bundled_water.py --reps 4,4,4 \
          --out "$OUT/prof_split" 2>&1 | grep '^{'
      E2F_V2_BWD_AGG=split timeout 100 python3 benchmarks/gpu_end_to_end.py --parts speed --sizes 10000 \
          --modes fp32 --no-water --budget-s 80 --out "$OUT/e2e_split" 2>&1 | grep '^{' | tail -n 1 ;;
    defaults)
      timeout 110 python3 benchmarks/gpu_graphed_check.py --out "$OUT/graphed" --repeats 20 --dtypes float32 \
          --openmm-steps 200 2>&1 | grep -E "ms_graphed|openmm_steps" | cut -c1-300
      for r in 2,2,2 4,4,4; do
        timeout 90 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 10 \
            --out "$OUT/md_bundled.json" 2>&1 | tail -n 1
      done
      timeout 60 python3 benchmarks/profile_bundled_water.py --reps 4,4,4 --out "$OUT/prof" 2>&1 | grep '^{'
      timeout 160 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e" --parts speed --sizes 1000,10000,20000 \
          --modes fp32,graphed_fp32 --no-water --budget-s 140 2>&1 | grep '^{' | cut -c1-200 ;;
    bundled10)   # defaults without its V1.5 part (gpu_v15.sh e2e has that): graph check, bundled MD 14k / 115k, profile
      timeout 110 python3 benchmarks/gpu_graphed_check.py --out "$OUT/graphed" --repeats 20 --dtypes float32,float64 \
          --openmm-steps 200 2>&1 | grep -E "ms_graphed|openmm_steps|max_" | cut -c1-300
      for r in 2,2,2 4,4,4; do
        timeout 90 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 10 \
            --out "$OUT/md_bundled.json" 2>&1 | tail -n 1
      done
      timeout 60 python3 benchmarks/profile_bundled_water.py --reps 4,4,4 --out "$OUT/prof" 2>&1 | grep '^{' ;;
    tune_bundled)
      for part in 1/2 2/2; do
        timeout 300 python3 benchmarks/tune_attention_v2.py compile --bundled --part $part --n 115200 \
            --out "$OUT/tune_bundled" > "$OUT/tune_bundled_compile_${part/\//of}.log" 2>&1 &
      done
      wait
      timeout 200 python3 benchmarks/tune_attention_v2.py time --bundled --n 115200 --out "$OUT/tune_bundled" \
          2>&1 | grep '^{' | cut -c1-160
      python3 benchmarks/tune_attention_v2.py report --bundled --out "$OUT/tune_bundled" | tail -n 20 ;;
    tune15)   # session 10: the V1.5 tile sweep again, now under the default register cap (128)
      for part in 1/4 2/4 3/4 4/4; do
        timeout 200 python3 benchmarks/tune_attention_v2.py compile --part $part --n 10000 \
            --out "$OUT/tune15" > "$OUT/tune15_compile_${part/\//of}.log" 2>&1 &
      done
      wait
      timeout 230 python3 benchmarks/tune_attention_v2.py time --n 10000 --out "$OUT/tune15" 2>&1 | grep '^{' | cut -c1-160
      python3 benchmarks/tune_attention_v2.py report --out "$OUT/tune15" | tail -n 40 ;;
    nve10)
      # python -m puts the working tree first on sys.path, whose openmm_e2former has no model/ or kernels/
      # (setup.py maps them in): link them in this copy of the tree, as the installed package has them
      ln -sfn ../model openmm_e2former/model; ln -sfn ../kernels openmm_e2former/kernels
      timeout 420 python3 -m training.report --nve --nve-steps 4000 --nve-water-steps 20000 --device cuda \
          --platform CUDA --out "$OUT/nve" 2>&1 | tail -n 4 ;;
    attn4a)
      BENCH_BUDGET_S=230 timeout 330 python3 benchmarks/bench_attention.py "$OUT/attention_v2" \
          --impls fused,reference 2>&1 | grep -vE '^\|' | tail -n 40 ;;
    attn4a13)   # (not run: session 13 ran attn4a13s; attn4a14 has the rest) item 4a again, the MLP pair and the radial-table pair (fused_table vs reference_table,
                # like for like), App. A and V1.5 settings, N = 2,048 ... 100,000 (~6 min; written as it goes)
      BENCH_BUDGET_S=420 timeout 540 python3 benchmarks/bench_attention.py "$OUT/attention_v2_tables" \
          --impls fused,reference,fused_table,reference_table --ns 2048,8192,32768,100000 2>&1 | grep -vE '^\|' | tail -n 40 ;;
    stages9)
      timeout 400 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream;stream, tf32x3 dots;stream/tile;stream/split;stream/tile, tf32x3 dots;stream/tile, tf32 dots" \
          2>&1 | grep '^{' | cut -c1-220 ;;
    win9)
      timeout 240 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream;stream, every RBF centre;stream/tile;stream/tile, every RBF centre" \
          2>&1 | grep '^{' | cut -c1-220
      for w in auto 0; do
        E2F_V2_RBF_WIN=$w timeout 100 python3 benchmarks/gpu_end_to_end.py --parts speed --sizes 10000,20000 \
            --modes fp32 --no-water --budget-s 80 --out "$OUT/e2e_win_$w" 2>&1 | grep '^{' | cut -c1-200
      done
      BENCH_BUDGET_S=100 timeout 150 python3 benchmarks/bench_attention.py "$OUT/attention_win" \
          --impls fused --ns 32768,100000 2>&1 | grep -E '^(appA|v15)' ;;
    next10v15|next10bundled|next10appA)
      # session 9's untimed variants beside their defaults: SG edges per streamed step, register caps, and DR_ACC
      # at sizes with many channels per head (bundled C/H 4, App. A C/H 16; V1.5's 2 showed no effect)
      case "$what" in next10v15) S=v15:10000:32 ;; next10bundled) S=bundled:115200:64 ;; *) S=appA:100000:64 ;; esac
      timeout 560 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes $S \
          --variants "${V10:-stream;stream, 128 registers;stream, 4 edges per step;stream/tile;stream/tile, 128 registers;stream/tile, bwd 168 registers;stream/stream, 4 edges per step;stream/split, 4 edges per step;stream/tile, DR_ACC}" \
          2>&1 | grep '^{' | cut -c1-220 ;;
    regs10)
      # session 10: register caps (every default launch sat at 8 warps per SM) at V1.5 10k and bundled 115k, then V1.5
      # end to end at 10k with the attention caps and with the edge-degree kernels capped too (E2F_ED_V2_MAXNREG)
      timeout 330 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "${V10:-stream, 96 registers;stream, 4 warps, 128 registers;stream/tile, 96 registers;stream/tile, fwd 128, bwd 96 registers;stream/tile, fwd 128, bwd 80 registers;stream/split, 128 registers;stream/tile, 128 registers, 16 programs per SM}" \
          2>&1 | grep '^{' | cut -c1-220
      for ed in 0 128 96; do
        E2F_V2_FWD_MAXNREG=128 E2F_V2_BWD_MAXNREG=128 E2F_ED_V2_MAXNREG=$ed timeout 70 python3 benchmarks/gpu_end_to_end.py \
            --parts speed --sizes 10000 --modes fp32 --no-water --budget-s 50 --out "$OUT/e2e_regs_ed$ed" 2>&1 | grep '^{' | cut -c1-200
      done ;;
    glue10)   # session 10: the node-level changes (degree parts, folded output weights) end to end
      timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e" --parts speed --sizes 10000,20000 \
          --modes fp32,tf32,graphed_fp32 --no-water --budget-s 130 2>&1 | grep '^{' | cut -c1-200
      mkdir -p "$OUT/profile"
      timeout 80 python3 benchmarks/gpu_end_to_end.py --parts profile --sizes 10000 --out "$OUT/profile" 2>&1 | tail -n 1
      timeout 60 python3 benchmarks/profile_bundled_water.py --reps 4,4,4 --out "$OUT/prof" 2>&1 | grep '^{'
      timeout 80 python3 benchmarks/gpu_graphed_check.py --out "$OUT/graphed" --repeats 20 --dtypes float32 \
          --openmm-steps 200 2>&1 | grep -E "ms_graphed|openmm_steps" | cut -c1-300 ;;
    next11)   # written in session 10 after its GPU time was spent: the DX2_SCR backward beside the default
      timeout 300 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream/tile;stream/tile, DX2_SCR;stream/split, DX2_SCR" 2>&1 | grep '^{' | cut -c1-220
      E2F_V2_BWD_DX2_SCR=1 timeout 100 python3 benchmarks/gpu_end_to_end.py --parts speed --sizes 10000,20000 \
          --modes fp32 --no-water --budget-s 80 --out "$OUT/e2e_dx2" 2>&1 | grep '^{' | cut -c1-200 ;;
    qk100k)   # session 10, untimed: set_recompute_qk (E2F_RECOMPUTE_QK=1) vs not, V1.5 at 10k and 100k, fp32
      for q in 0 1; do
        E2F_RECOMPUTE_QK=$q timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_qk$q" --parts speed \
            --sizes 10000,100000 --modes fp32 --no-water --budget-s 180 2>&1 | grep '^{' | cut -c1-200
      done ;;
    s11)      # (session 11's plan) the first call (~6-9 min): s11a then s11b (each has its own time limits; if the call's
              # 10 minutes are short, run "s11a" and "s11b" as two calls)
      bash "$0" s11a s11b 2>&1 | grep -v '^NVIDIA' ;;
    s11a) bash "$0" next11 qk100k 2>&1 | grep -v '^NVIDIA' ;;
    s11b)     # the cells of the V1.5 table session 10 did not re-measure after its node-level change (1k, 100k,
              # bf16, graphed TF32), the water box, and precision='tf32' / 'bf16' through OpenMM
      timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_rest" --parts speed --sizes 1000,10000,100000 \
          --modes fp32,bf16,graphed_tf32 --budget-s 130 --no-water 2>&1 | grep '^{' | cut -c1-200
      timeout 100 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_water" --parts speed --sizes "" \
          --modes fp32,bf16 --budget-s 80 2>&1 | grep '^{' | cut -c1-200
      # createSystem(precision='tf32' / 'bf16') with the bundled model through OpenMM (CUDA graph path), 600 waters
      for mp in single tf32 bf16; do
        timeout 60 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps 1,1,1 --steps 200 \
            --ml-precision $mp --out "$OUT/md_precision.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    s11c)     # session 11: in-kernel TF32 dots under the register cap (slower than exact fp32 before the cap, session
              # 9), as a stage and end to end in TF32 mode; then item 4d, OpenMM MD of the bundled model, 115,200 atoms
      timeout 200 python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream;stream, tf32 dots;stream/tile, DX2_SCR;stream/tile, DX2_SCR, tf32 dots" 2>&1 | grep '^{' | cut -c1-220
      for d in ieee tf32; do
        env $([ $d = tf32 ] && echo E2F_V2_DOT_PREC=tf32) timeout 100 python3 benchmarks/gpu_end_to_end.py --parts speed \
            --sizes 10000,20000 --modes tf32 --no-water --budget-s 80 --out "$OUT/e2e_dot_$d" 2>&1 | grep '^{' | cut -c1-200
      done
      timeout 150 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps 4,4,4 --steps 20 \
          --out "$OUT/md_bundled_115k.json" 2>&1 | tail -n 1 | cut -c1-300 ;;
    auto11)   # session 11: "auto" checkpointing on emulated smaller cards (a ballast leaves F GiB free), V1.5 at
              # 100k atoms, fp32: ~22 GiB free should take "block+qk", ~17 "fine"
      for F in 22 17; do
        E2F_EMULATE_FREE_GIB=$F timeout 140 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_free$F" --parts speed \
            --sizes 100000 --modes fp32 --no-water --budget-s 120 2>&1 | grep '^{' | cut -c1-300
      done ;;
    compile11)  # session 11, experimental: model.set_compile (torch.compile of the blocks' node-level parts) at 10k /
                # 20k, fp32 and TF32, beside a plain fp32 baseline in the same call
      timeout 45 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_plain" --parts speed --sizes 10000 --modes fp32 \
          --no-water --budget-s 30 2>&1 | grep '^{' | cut -c1-200
      E2F_COMPILE=1 timeout ${COMPILE_TIMEOUT:-230} python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_compiled" \
          --parts speed --sizes 10000,20000 --modes fp32,tf32 --no-water --budget-s 200 2>&1 | grep -E '^\{|Error' | cut -c1-200 ;;
    s12)      # (session 12's plan) three calls of <= 10 min each: s12a, s12b, s12c (or "s12a s12b" in one if the first is short)
      echo "run s12a, s12b and s12c as separate calls"; exit 2 ;;
    s12a)     # set_compile's first-call cost and what it gives at 100k / with bf16, beside plain runs (~5 min)
      E2F_COMPILE=1 timeout 200 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_compiled" --parts speed \
          --sizes 10000,100000 --modes fp32,bf16 --no-water --budget-s 180 2>&1 | grep -E '^\{|Error' | cut -c1-260
      timeout 120 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_plain" --parts speed \
          --sizes 10000,100000 --modes fp32,bf16 --no-water --budget-s 100 2>&1 | grep '^{' | cut -c1-260 ;;
    s12b)     # the compiled parts inside the CUDA graph (set_compile(in_graphs=True)) beside the plain graphed path
      for c in graphs 0; do
        E2F_COMPILE=$c timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_graphed_compile_$c" --parts speed \
            --sizes 1000,10000 --modes graphed_fp32,graphed_tf32 --no-water --budget-s 130 2>&1 | grep -E '^\{|Error' | cut -c1-260
      done ;;
    s12c)     # createSystem(compile=True) through OpenMM, bundled model, 115,200 atoms (eager path), beside plain
      for c in "" --compile; do
        timeout 150 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps 4,4,4 --steps 20 $c \
            --out "$OUT/md_bundled_115k.json" 2>&1 | tail -n 1 | cut -c1-300
      done ;;
    table12)  # the radial-table attention kernels (TABLE, written in session 11, CPU-checked only): GPU check against
              # float64, then V1.5 end to end with tables beside a plain run in the same call (~6 min)
      timeout 150 python3 tests/gpu/check_table.py "$OUT/table_gpu_check.json" 2>&1 | tail -n 8
      timeout 60 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_plain" --parts speed --sizes 10000 \
          --modes fp32 --no-water --budget-s 40 2>&1 | grep '^{' | cut -c1-200
      E2F_RADIAL_TABLES=1 timeout 300 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_tables" --parts speed \
          --sizes 10000,20000,100000 --modes fp32,tf32 --no-water --budget-s 270 2>&1 | grep -E '^\{|Error' | cut -c1-300 ;;
    tablecheck) # tests/gpu/check_table.py alone (session 12: rerun after its random tables were made continuous)
      timeout 200 python3 tests/gpu/check_table.py "$OUT/table_gpu_check.json" 2>&1 | tail -n 12 ;;
    table12s)   # the TABLE kernels as stages (random smooth tables, checked against float64 first) beside the MLP
                # defaults, with register caps, at V1.5 10k and bundled 115k (~5 min)
      timeout ${STAGES_TIMEOUT:-560} python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream;stream, table;stream/tile, DX2_SCR;stream/tile, table;stream/split, table;stream/tile, table, 96 registers;stream/tile, table, uncapped" \
          2>&1 | grep '^{' | cut -c1-220 ;;
    tabletiles) # session 12: tiles / warps / caps re-swept under TABLE, beside the TABLE defaults (V1.5 10k, bundled 115k)
      timeout ${STAGES_TIMEOUT:-560} python3 benchmarks/attention_stages.py --out "$OUT/stages" --sizes v15:10000:32,bundled:115200:64 \
          --variants "stream, table;stream/tile, table;stream, table, HB 64;stream, table, 4 warps;stream, table, 8 warps;stream, table, 2 edges per step;stream, table, 160 registers;stream/tile, table, bwd HB 64;stream/tile, table, bwd 8 warps;stream/tile, table, bwd BLOCK_T 2;stream/tile, table, bwd 160 registers" \
          2>&1 | grep '^{' | cut -c1-220 ;;
    table12md)  # createSystem(radial_tables=True) through OpenMM: 600 waters (CUDA graph) and 115,200 atoms (eager)
      for r in 1,1,1 4,4,4; do
        for c in "" --radial-tables; do
          timeout 120 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 $c \
              --out "$OUT/md_tables.json" 2>&1 | tail -n 1 | cut -c1-300
        done
      done ;;
    default12md) # session 12: OpenMM with the automatic default (radial tables on for float32 on CUDA), no flags:
                 # 600 waters, 4,800 waters (CUDA graph) and 38,400 waters (eager); the JSON says what was used
      for r in 1,1,1 2,2,2 4,4,4; do
        timeout 120 python3 benchmarks/openmm_md_water.py --model bundled --from-pdb $P --reps $r --steps 20 \
            --out "$OUT/md_default.json" 2>&1 | tail -n 1 | cut -c1-400
      done ;;
    water13)    # next session: the periodic ~100k-atom water box of item 4c with the radial tables (fp32 / TF32 / bf16)
      E2F_RADIAL_TABLES=1 timeout 400 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_water_tables" --parts speed \
          --sizes "" --modes fp32,tf32,bf16 --budget-s 360 2>&1 | grep '^{' | cut -c1-260 ;;
    water100k)
      # item 4c's periodic ~100k-atom water box (last run in session 1, with older kernels): fp32, TF32, bf16
      timeout 560 python3 benchmarks/gpu_end_to_end.py --out "$OUT/e2e_water" --parts speed --sizes "" \
          --modes fp32,tf32,bf16 --budget-s 500 2>&1 | grep '^{' | cut -c1-260 ;;
    *) echo "unknown: $what"; exit 2 ;;
  esac
done
