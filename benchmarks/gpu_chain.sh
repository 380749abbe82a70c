#!/usr/bin/env bash
# One GPU machine, several chained device calls (each <= 10 min; the machine stays warm between calls that
# follow each other at once). The first call runs two short GPU benchmarks (issues #3, #4) on the idle GPU,
# then starts a background pipeline (setsid, survives the end of a call) that builds the bundled default
# model (issue #5); later calls wait for it and bring the results back.
#
#   call 1:  bash benchmarks/gpu_chain.sh start 585      (carry .whl and .carry; timeout_s 600)
#   call 2+: bash benchmarks/gpu_chain.sh poll 570       (same carry; returns early once everything is done)
#   validation of a finished model instead of training: `validate-start 585`, then `poll 570`
#   two GPUs (kind nvidia-h200-x2): `x2-start 585` (carry .whl, .carry), then `poll 570` with carry .carry_full
#   (the full parity fixtures, too big to travel with the wheels), then `poll 570` until done:
#     GPU 0: student water NPT MD alone (<= X2_WATER_MIN, 100 ps), then NVE on the GPU (dipeptide, water64);
#            X2_GRAPHS=1 first runs benchmarks/gpu_graphed_check.py and, if it passes, sets E2FORMER_CUDA_GRAPHS=1
#     GPU 1: the 20 solvated amino acids batched (<= X2_STAB_MIN, 50 ps), then benchmarks/gpu_session.sh
#            (end-to-end speed, fine checkpointing, 1M atoms, profile; official parity last)
#   `x2-stress-start 585` (carry .whl, .carry), then `poll 570` twice: a stress-trained successor of the bundled
#   model in one lease (docs/training.md, "Stress labels"):
#     GPU 0: generate + label (with stress) + refs, fine-tune the bundled weights with the stress loss
#            (X2_FIT_MIN), then the 20 solvated amino acids with the new model (X2_STAB_MIN)
#     GPU 1: CUDA-graph check, then (once the model is ready) its 600-water NPT (X2_WATER_MIN; graphed if OK)
#   The new model comes back in results.tgz (run/model.pt); analyse the water here, then decide whether to ship.
#   `x2-long-start 585` (carry .whl, .carry and, after the first lease, .carry_long), then `poll` until done: the
#   long validation campaign of the bundled model, resumable over leases (X2_DEADLINE_MIN minutes each):
#     GPU 0: 600-water NPT towards 100 ps (water_md --resume); GPU 1: the 20 solvated amino acids towards 50 ps
#     (stability --state-dir, LONG_PROCS processes; LONG_ENGINE=batched instead: half of them in ONE batched +
#     graphed process per GPU, GPU 0 after the water; lease 1 showed 20 OpenMM contexts time-slicing one GPU
#     at 10 ns/day in all). Everything comes back in long_state.tgz; unpack it into
#     .carry_long (rm -rf .carry_long && mkdir .carry_long && tar xzf long_state.tgz -C .carry_long) for the next
#     lease, and analyse it here (water_md analyse .carry_long/water; stability --summary .carry_long/stability.jsonl).
#
# Pipeline (in /tmp/e2f, which lives as long as the machine):
#   generate (OpenMM amber14: solvated systems on the GPU, gas phase on the CPU cores)  ->  label (SO3LR,
#   training.teacher on the GPU, 4 workers, batches of frames)  ->  refs  ->  train round 0 (--fit-minutes)
#   ->  active learning (student MD, worst frames vs the teacher relabelled)  ->  train round 1 (fine-tune)
#   ->  student water NPT MD (600 waters) beside the 20 solvated amino-acid stability runs
# (the teacher's own water MD was run in session 2: benchmarks/results/default_model/teacher_water/)
# Everything that should come back is packed into at most 8 files under $OUT by `collect`.
#
# The git-ignored folders the calls carry (build them here once; add /.whl/ /.carry/ /.carry_full/ to
# .git/info/exclude):
#   .whl   cp312 wheels the GPU image lacks, plus two pure-Python packages copied from this machine:
#          pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl openmm==8.6.1 \
#            openmm-cuda-13==8.6.1 ase==3.29.0 matscipy==1.3.1 so3krates-torch==0.2.1 torch-ema prettytable
#          mkdir -p .whl/pylib && cp -r $(python -c 'import openmmml, pdbfixer, os; \
#            print(os.path.dirname(openmmml.__file__), os.path.dirname(pdbfixer.__file__))') .whl/pylib/
#   .carry .carry/shared/fixtures/official_parity/{tiny_qk,manifest.json,reference_energies.json,README.md,
#          v15/config.yaml} (copies from ../shared/fixtures) and .carry/water_gOO_skinner2013.txt (../shared/data)
#   .carry_full  the whole ../shared/fixtures/official_parity under .carry_full/shared/fixtures/ (~53 MB)
set -u
MODE=${1:-poll}
LIMIT=${2:-570}
T0=$(date +%s)
W=${CHAIN_DIR:-/tmp/e2f}
SCALE=${CHAIN_SCALE:-medium}        # local rehearsal: CHAIN_LOCAL=1 CHAIN_SCALE=tiny CHAIN_DEVICE=cpu ...
DEV=${CHAIN_DEVICE:-cuda}
OMM=${CHAIN_PLATFORM:-CUDA}
NGEN=${CHAIN_GEN_WORKERS:-12}
WATERS=${CHAIN_WATERS:-600}
mkdir -p "$W"
SRC=$PWD

setup() {
    if [ ! -f "$W/.setup_done" ]; then
        [ -n "${CHAIN_LOCAL:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 1
        [ -n "${CHAIN_LOCAL:-}" ] || cp -r .whl/pylib/* /tmp/site/
        rm -rf "$W/repo" && mkdir -p "$W/repo" && cp -r "$SRC"/. "$W/repo/"   # a stable copy for the pipeline
        mkdir -p "$W/pkg/openmm_e2former"
        cp -r "$W/repo/openmm_e2former/"* "$W/pkg/openmm_e2former/"
        ln -sfn "$W/repo/model" "$W/pkg/openmm_e2former/model"
        ln -sfn "$W/repo/kernels" "$W/pkg/openmm_e2former/kernels"
        touch "$W/.setup_done"
    fi
    export PYTHONPATH="$W/pkg:/tmp/site:$W/repo" PYTHONUNBUFFERED=1
    export E2F_FIXTURES="$W/repo/.carry/shared/fixtures/official_parity"
}

stage() { echo "$(date +%H:%M:%S) [+$(( $(date +%s) - $(cat $W/.t_start) ))s] $*" >> "$W/progress.log"; }

seconds_left() {   # seconds until X2_DEADLINE_MIN minutes after the start (the x2 modes never run past the lease)
    echo $(( ${X2_DEADLINE_MIN:-26} * 60 - ($(date +%s) - $(cat $W/.t_start)) ))
}

gen_and_label() {
    # classical frames -> SO3LR labels (energies, forces and, by default, stress) -> reference energies
    if [ -z "${CHAIN_GEN_CPU_ONLY:-}" ]; then
        # session 2 measured 13 min for 'medium' on 12 CPU workers, dominated by the solvated systems:
        # run those on the GPU (4 workers) and the small gas-phase ones on the CPU
        stage "generate: solvated on $OMM (4 workers), gas phase on CPU ($NGEN workers)"
        for i in 1 2 3 4; do
            python3 -m training.generate --scale $SCALE --out "$W/raw" --platform $OMM --part "$i/4" \
                --kinds aa_solv peptide_solv water_box > "$W/logs/gen_gpu_$i.log" 2>&1 &
        done
        for i in $(seq 1 $NGEN); do
            python3 -m training.generate --scale $SCALE --out "$W/raw" --platform CPU --part "$i/$NGEN" \
                --kinds water_cluster aa_gas peptide_gas gas_small > "$W/logs/gen_$i.log" 2>&1 &
        done
    else
        stage "generate: $NGEN CPU workers"
        for i in $(seq 1 $NGEN); do
            python3 -m training.generate --scale $SCALE --out "$W/raw" --platform CPU --part "$i/$NGEN" \
                > "$W/logs/gen_$i.log" 2>&1 &
        done
    fi
    wait
    stage "generate done: $(ls $W/raw | wc -l) shards"
    stage "label: 4 GPU workers, batches of up to 8 frames / ${CHAIN_BATCH_ATOMS:-6000} atoms"
    for i in 0 1 2 3; do
        python3 -m training.label --raw "$W/raw" --out "$W/labelled" --device $DEV --part "$i/4" \
            --batch-frames 8 --batch-atoms "${CHAIN_BATCH_ATOMS:-6000}" > "$W/logs/label_$i.log" 2>&1 &
    done
    wait
    python3 - "$W" <<'PY' > "$W/logs/label_check.log" 2>&1
import sys, numpy as np, pathlib
w = pathlib.Path(sys.argv[1]); left = 0
for p in sorted((w / "raw").glob("*.npz")):
    q = w / "labelled" / p.name
    left += (not q.exists()) or (not np.load(q)["labelled"].all())
print(left); sys.exit(1 if left else 0)
PY
    if [ $? -ne 0 ]; then
        stage "unlabelled shards left ($(cat $W/logs/label_check.log)): one frame per call, 4 workers"
        for i in 0 1 2 3; do
            python3 -m training.label --raw "$W/raw" --out "$W/labelled" --device $DEV --part "$i/4" \
                --batch-frames 1 > "$W/logs/label_single_$i.log" 2>&1 &
        done
        wait
    fi
    stage "label done: $(ls $W/labelled/*.npz | wc -l) shards"
    python3 -m training.refs --data "$W/labelled" --out "$W/refs.json" > "$W/logs/refs.log" 2>&1
    stage "refs done"
}

pipeline() {
    # run from $W, not from the repository: `python -m` puts the working directory first on sys.path, and
    # the repository's openmm_e2former/ has no model/ or kernels/ inside (they are mapped in $W/pkg)
    cd "$W"
    date +%s > "$W/.t_start"
    gen_and_label
    CFG="$W/repo/training/configs/default.yaml"
    COMMON="data.refs=$W/refs.json data.max_val_frames=1500 data.atoms_per_step=${CHAIN_ATOMS_PER_STEP:-3000}"
    # round 0: the student on the classical-MD frames
    python3 -m training.train --config "$CFG" --set out_dir="$W/run1" "data.dirs=[$W/labelled]" $COMMON \
        train.val_every=100000 ${CHAIN_TRAIN_SET:-} --fit-minutes "$(cat $W/fit_minutes 2>/dev/null || echo 8)" \
        --max-minutes 14 > "$W/logs/train1.log" 2>&1
    stage "train round 0 finished: $(tail -1 $W/logs/train1.log | cut -c1-400)"
    if [ -f "$W/run1/model.pt" ]; then
        # active learning: student MD from training-split structures, frames ranked by the force error against
        # the teacher, the worst relabelled and added (al1_*.npz) to the labelled set
        stage "active learning round 1: 8 workers"
        for i in 0 1 2 3 4 5 6 7; do
            python3 -m training.active --model-a "$W/run1/model.pt" --data "$W/labelled" --out "$W/labelled" \
                --round 1 --steps "${CHAIN_AL_STEPS:-1000}" --stride 25 --per-system 8 --device $DEV \
                --systems aa_ pep_ gas_ water_cluster water_box_64 --train-only 0.1 0 --part "$i/8" \
                > "$W/logs/active_$i.log" 2>&1 &
        done
        wait
        cat "$W/labelled/active_log.jsonl" > "$W/active_log.jsonl" 2>/dev/null
        stage "active learning done: $(ls $W/labelled/al1_*.npz 2>/dev/null | wc -l) new shards"
        # round 1: fine-tune from round 0's EMA weights on the enlarged set
        python3 -m training.train --config "$CFG" --set out_dir="$W/run" "data.dirs=[$W/labelled]" $COMMON \
            train.init_from="$W/run1/checkpoint.pt" train.lr=6.0e-4 train.warmup_steps=30 train.val_every=100000 \
            ${CHAIN_TRAIN_SET:-} --fit-minutes "$(cat $W/fit2_minutes 2>/dev/null || echo 4)" --max-minutes 8 \
            > "$W/logs/train2.log" 2>&1
        stage "train round 1 finished: $(tail -1 $W/logs/train2.log | cut -c1-400)"
        [ -f "$W/run/model.pt" ] || cp "$W/run1/model.pt" "$W/run/model.pt"
    fi
    if [ -f "$W/run/model.pt" ]; then
        cp "$W/run/model.pt" "$W/model_final.pt"
        stage "validation MD: student water (600) + 20 solvated amino acids (4 workers)"
        setsid python3 -m training.water_md run --potential student --model "$W/model_final.pt" --waters $WATERS \
            --temperature 298 --minutes "$(cat $W/student_minutes 2>/dev/null || echo 9)" --out "$W/student_md" \
            --platform $OMM --device $DEV --frame-fs 200 > "$W/logs/student_md.log" 2>&1 < /dev/null &
        for i in 0 1 2 3; do
            setsid python3 -m training.stability --model "$W/model_final.pt" --out "$W/stability_$i.jsonl" \
                --ps 50 --minutes "$(cat $W/stab_minutes 2>/dev/null || echo 1.6)" --device $DEV --platform $OMM \
                --letters "${CHAIN_STAB_LETTERS:-ACDEFGHIKLMNPQRSTVWY}" --box-nm "${CHAIN_STAB_BOX:-2.0}" \
                --part "$i/4" > "$W/logs/stability_$i.log" 2>&1 < /dev/null &
        done
        wait
        stage "validation MD done"
    fi
    touch "$W/pipeline.done"
}

water_long() {   # MODEL MINUTES: 600-water NPT of a model alone on its GPU, <= 100 ps (analysed here later)
    python3 -m training.water_md run --potential student --model "$1" --waters $WATERS --temperature 298 --ps 100 \
        --minutes "$2" --out "$W/student_md" --platform $OMM --device $DEV --frame-fs 200 \
        --no-analyse > "$W/logs/student_md.log" 2>&1
}

stability_batched() {   # MODEL MINUTES: the 20 solvated capped amino acids in one batched integrator, <= 50 ps
    python3 -m training.stability --engine batched --model "$1" --out "$W/stability_batched.jsonl" --ps 50 \
        --minutes "$2" --device $DEV --platform $OMM > "$W/logs/stability.log" 2>&1
}

validate() {
    # long validation MD of a finished model (the bundled one unless $W/model_final.pt exists), each run with the
    # GPU to itself: student water NPT (600 waters, up to 100 ps), then the 20 solvated capped amino acids in ONE
    # batched integrator (training.stability --engine batched), then NVE (gas-phase dipeptide and water64)
    cd "$W"
    date +%s > "$W/.t_start"
    M="$W/model_final.pt"
    [ -f "$M" ] || M="$W/pkg/openmm_e2former/data/e2formerv2_default.pt"
    stage "validate $M: student water MD alone, <= ${VAL_WATER_MIN:-12} min"
    water_long "$M" "${VAL_WATER_MIN:-12}"
    stage "student water MD: $(grep -o '"simulated_ps": [0-9.]*' $W/student_md/summary.json)"
    stage "validate: 20 solvated amino acids in one batch, <= ${VAL_STAB_MIN:-10} min"
    stability_batched "$M" "${VAL_STAB_MIN:-10}"
    stage "stability done"
    python3 -m training.report --model "$M" --nve --nve-steps 4000 --nve-water-steps "${VAL_NVE_WATER_STEPS:-20000}" \
        --device $DEV --platform $OMM --out "$W/report" > "$W/logs/nve.log" 2>&1
    stage "NVE done"
    touch "$W/pipeline.done"
}

x2_gpu0() {
    cd "$W"
    export CUDA_VISIBLE_DEVICES=0
    M="$W/pkg/openmm_e2former/data/e2formerv2_default.pt"
    if [ -n "${X2_GRAPHS:-}" ]; then
        # CUDA-graph replay of the force call (opt-in, first GPU run): check it, and use it for the water MD only
        # if every float32 system was captured and matches the eager forces
        stage "gpu0: CUDA-graph check"
        (cd "$W/repo" && timeout 300 python3 benchmarks/gpu_graphed_check.py --out "$W/graphed" --openmm-steps 200) \
            > "$W/logs/graphed_check.log" 2>&1
        if graphs_ok
        then export E2FORMER_CUDA_GRAPHS=1; stage "gpu0: CUDA graphs ON for the water MD"
        else stage "gpu0: CUDA-graph check failed: eager force for the water MD"; fi
    fi
    stage "gpu0: student water MD alone, <= ${X2_WATER_MIN:-15} min, 100 ps"
    water_long "$M" "${X2_WATER_MIN:-15}"
    stage "gpu0: student water MD: $(grep -o '"simulated_ps": [0-9.]*' $W/student_md/summary.json)"
    timeout "${X2_NVE_S:-420}" python3 -m training.report --model "$M" --nve --nve-steps 4000 \
        --nve-water-steps "${X2_NVE_WATER_STEPS:-20000}" --device $DEV --platform $OMM --out "$W/report" \
        > "$W/logs/nve.log" 2>&1
    stage "gpu0: NVE done (rc $?)"
    touch "$W/gpu0.done"
}

x2_gpu1() {
    cd "$W"
    export CUDA_VISIBLE_DEVICES=1
    M="$W/pkg/openmm_e2former/data/e2formerv2_default.pt"
    stage "gpu1: 20 solvated amino acids in one batch, <= ${X2_STAB_MIN:-10} min, 50 ps"
    stability_batched "$M" "${X2_STAB_MIN:-10}"
    stage "gpu1: stability done (rc $?)"
    (cd "$W/repo" && GS_OUT="$W/gs" GS_PKG=1 GS_PARITY_LAST=1 GS_PARITY_WAIT=600 \
        E2F_FIXTURES="$W/fixtures/official_parity" PYTHONPATH="$W/pkg:/tmp/site" bash benchmarks/gpu_session.sh) \
        > "$W/logs/gpu_session.log" 2>&1
    stage "gpu1: gpu_session done"
    touch "$W/gpu1.done"
}

x2_stress_gpu0() {
    # the stress fine-tune of the bundled weights (no round 0, no active learning: it fits one lease with the
    # validation), then the 20 solvated amino acids with the new model
    cd "$W"
    export CUDA_VISIBLE_DEVICES=0
    gen_and_label
    python3 - "$W/init_ckpt.pt" <<'PY'
import sys, torch, yaml
from openmm_e2former import default_model_path
cfg = yaml.safe_load(open("repo/training/configs/default.yaml"))
d = torch.load(default_model_path(), weights_only=False)
torch.save({"model_config": cfg["model"], "ema": d["state_dict"], "step": 617}, sys.argv[1])
PY
    python3 -m training.train --config "$W/repo/training/configs/default.yaml" --set out_dir="$W/run" \
        "data.dirs=[$W/labelled]" data.refs="$W/repo/benchmarks/results/default_model/session3/refs.json" \
        data.max_val_frames=1500 data.atoms_per_step=3000 \
        train.init_from="$W/init_ckpt.pt" train.lr=6.0e-4 train.warmup_steps=30 train.val_every=100000 \
        ${CHAIN_TRAIN_SET:-} --fit-minutes "${X2_FIT_MIN:-5}" --max-minutes 9 > "$W/logs/train_stress.log" 2>&1
    stage "gpu0: stress fine-tune finished: $(tail -1 $W/logs/train_stress.log | cut -c1-600)"
    if [ -f "$W/run/model.pt" ]; then
        cp "$W/run/model.pt" "$W/model_final.pt" && touch "$W/model_ready"
        left=$(( $(seconds_left) / 60 ))
        smin=$(( left < ${X2_STAB_MIN:-10} ? left : ${X2_STAB_MIN:-10} ))
        stage "gpu0: 20 solvated amino acids with the new model, <= $smin min"
        [ "$smin" -ge 1 ] && stability_batched "$W/model_final.pt" "$smin"
        # NVE with the new model in what is left (dipeptide, then water64; each result written when done)
        left=$(( $(seconds_left) - 20 ))
        if [ "$left" -ge 120 ]; then
            stage "gpu0: NVE with the new model, <= $left s"
            graphs_ok && export E2FORMER_CUDA_GRAPHS=1
            timeout "$left" python3 -m training.report --model "$W/model_final.pt" --nve --nve-steps 4000 \
                --nve-water-steps "${X2_NVE_WATER_STEPS:-4000}" --device $DEV --platform $OMM --out "$W/report" \
                > "$W/logs/nve.log" 2>&1
            stage "gpu0: NVE done (rc $?)"
        fi
    fi
    stage "gpu0: done"
    touch "$W/gpu0.done"
}

x2_stress_gpu1() {
    # CUDA-graph check while GPU 0 trains (the attention v2 tile sweep compiles and checks beside it on the
    # CPU cores), then the sweep's timings and a 10k end-to-end step with its best tiles (#4), then (once the
    # model is ready) the new model's water NPT (graphed if the check passed)
    cd "$W"
    export CUDA_VISIBLE_DEVICES=1
    stage "gpu1: CUDA-graph check + attention v2 tile sweep (compile, 3 workers)"
    for i in 1 2 3; do
        (cd "$W/repo" && timeout 420 python3 benchmarks/tune_attention_v2.py compile --part "$i/3" --out "$W/tune") \
            > "$W/logs/tune_compile_$i.log" 2>&1 &
    done
    (cd "$W/repo" && timeout 300 python3 benchmarks/gpu_graphed_check.py --out "$W/graphed" --openmm-steps 200) \
        > "$W/logs/graphed_check.log" 2>&1
    wait
    graphs_ok && stage "gpu1: CUDA graphs OK"
    if [ ! -f "$W/model_ready" ]; then
        stage "gpu1: attention v2 tile timings (N = 10k, 100k)"
        (cd "$W/repo" && timeout 150 python3 benchmarks/tune_attention_v2.py time --out "$W/tune" --n 10000) \
            > "$W/logs/tune_time.log" 2>&1
        if [ ! -f "$W/model_ready" ]; then
            mkdir -p "$W/tune/n100k" && cp "$W/tune/check.jsonl" "$W/tune/n100k/" 2>/dev/null
            (cd "$W/repo" && timeout 120 python3 benchmarks/tune_attention_v2.py time --out "$W/tune/n100k" \
                --n 100000) > "$W/logs/tune_time_100k.log" 2>&1
        fi
        # the fastest checked forward and backward tiles -> E2F_V2_* for one end-to-end 10k step vs the defaults
        (cd "$W/repo" && python3 benchmarks/tune_attention_v2.py best --out "$W/tune") > "$W/tune/best.env" 2>> "$W/logs/tune_time.log"
        stage "gpu1: best tiles: $(tr '\n' ' ' < $W/tune/best.env)"
        for variant in default tuned; do
            [ -f "$W/model_ready" ] && break
            (cd "$W/repo" && [ "$variant" = tuned ] && set -a && . "$W/tune/best.env"; set +a; \
                timeout 150 python3 benchmarks/gpu_end_to_end.py --out "$W/tune/e2e_$variant" --parts speed \
                --sizes 10000 --modes fp32 --no-water --budget-s 100) > "$W/logs/tune_e2e_$variant.log" 2>&1
        done
        stage "gpu1: sweep done"
    fi
    unset E2FORMER_CUDA_GRAPHS
    graphs_ok && export E2FORMER_CUDA_GRAPHS=1 && stage "gpu1: CUDA graphs ON"
    for _ in $(seq 1 $(( ${X2_WAIT_MIN:-20} * 4 ))); do [ -f "$W/model_ready" ] && break; sleep 15; done
    if [ -f "$W/model_ready" ]; then
        # never past the lease: at most X2_DEADLINE_MIN minutes after the start, whatever X2_WATER_MIN says
        left=$(( $(seconds_left) / 60 ))
        wmin=$(( left < ${X2_WATER_MIN:-12} ? left : ${X2_WATER_MIN:-12} ))
        stage "gpu1: new model's water NPT, <= $wmin min"
        [ "$wmin" -ge 2 ] && water_long "$W/model_final.pt" "$wmin"
        stage "gpu1: water MD: $(grep -o '"simulated_ps": [0-9.]*' $W/student_md/summary.json)"
    fi
    touch "$W/gpu1.done"
}

stab_half() {   # HALF (0/1) FLAG (--graphed or empty): that half of the amino acids, one batched process,
    # resuming from and saving to the campaign's state dir, until the lease's deadline
    local left=$(( $(seconds_left) / 60 - 1 ))
    stage "gpu$1: amino acids part $1/2, batched $2, <= $left min, to 50 ps (resume)"
    python3 -m training.stability --engine batched $2 --model "$M" --out "$W/long/stability.jsonl" \
        --state-dir "$W/long/stab" --ps "${LONG_STAB_PS:-50}" --minutes "$left" --device $DEV \
        --platform $OMM --part "$1/2" --letters "${LONG_LETTERS:-ACDEFGHIKLMNPQRSTVWY}" \
        --box-nm "${LONG_BOX_NM:-2.0}" > "$W/logs/long_stab_b$1.log" 2>&1
    stage "gpu$1: amino acids part $1/2 done (rc $?)"
}

x2_long() {
    # one GPU of the long-validation campaign (#5), resumable across leases and sessions: the state arrives in
    # .carry_long (from the previous call's long_state.tgz) and leaves in long_state.tgz
    #   gpu 0: the bundled model's 600-water NPT towards 100 ps (training.water_md --resume; CUDA graph)
    #   gpu 1: the 20 solvated capped amino acids towards 50 ps each, LONG_PROCS processes of the openmm engine
    #          (one OpenMM context per system, CUDA graph) with --state-dir, letters split over the processes
    cd "$W"
    export CUDA_VISIBLE_DEVICES=$1
    M="$W/pkg/openmm_e2former/data/e2formerv2_default.pt"
    left=$(( $(seconds_left) / 60 ))
    if [ "$1" = 0 ]; then
        if [ "${X2_PROFILE:-1}" = 1 ] && [ ! -d "$W/profile" ]; then
            # where a small-system force call goes now (eager profile + the CUDA-graph call's eager part / replay)
            mkdir -p "$W/profile"
            (cd "$W/repo" && timeout 150 python3 benchmarks/md_step_profile.py \
                benchmarks/results/default_model/student_water_v03/top.pdb "$W/profile") > "$W/logs/profile.log" 2>&1
            stage "gpu0: force-call profile done (rc $?)"
            left=$(( $(seconds_left) / 60 ))
        fi
        if [ "${LONG_ENGINE:-openmm}" = batched ]; then
            # the water's force uses the in-graph neighbour list (new in session 6) only once GPU 1's CUDA-graph
            # check has passed with it; otherwise the eager list, the path validated in sessions 5-6
            for _ in $(seq 60); do [ -f "$W/long_stab_graphed_flag" ] && break; sleep 5; done
            grep -q "graphed:--graphed" "$W/long_stab_graphed_flag" 2>/dev/null || export E2FORMER_GRAPH_NEIGHBORS=host
            stage "gpu0: graph check flag: $(cat $W/long_stab_graphed_flag 2>/dev/null || echo none), neighbour list: ${E2FORMER_GRAPH_NEIGHBORS:-auto}"
            left=$(( $(seconds_left) / 60 ))
        fi
        stage "gpu0: water NPT (resume), <= $left min, to 100 ps"
        python3 -m training.water_md run --potential student --model "$M" --waters $WATERS --temperature 298 \
            --ps "${LONG_WATER_PS:-100}" --minutes "$left" --out "$W/long/water" --platform $OMM --device $DEV \
            --frame-fs 200 --omm-threads 2 \
            --no-analyse --resume > "$W/logs/long_water.log" 2>&1
        stage "gpu0: water: $(grep -o '"simulated_ps": [0-9.]*' $W/long/water/summary.json)"
        left=$(( $(seconds_left) / 60 - 1 ))
        if [ "${LONG_ENGINE:-openmm}" = batched ] && [ "$left" -ge 2 ]; then
            G=--graphed
            grep -q "graphed:--graphed" "$W/long_stab_graphed_flag" 2>/dev/null || G=
            stab_half 0 "$G"
        fi
    elif [ "${LONG_ENGINE:-openmm}" = batched ]; then
        # first the CUDA-graph check (graphed vs eager on this GPU, now with the neighbour list inside the
        # graph; and its speed), then the other half of the amino acids in ONE process: one graphed padded call
        # per step for all of them, or the plain batched engine if the check failed
        (cd "$W/repo" && timeout 240 python3 benchmarks/gpu_graphed_check.py --out "$W/graphed" --repeats 20 \
            --dtypes float32 --openmm-steps 200) > "$W/logs/graphed_check.log" 2>&1
        G=--graphed
        graphs_ok || G=
        echo "graphed:${G:-no}" > "$W/long_stab_graphed_flag"
        stage "gpu1: CUDA-graph check: ${G:-FAILED, the plain batched engine}"
        stab_half 1 "$G"
        stage "gpu1: amino acids: $(python3 -m training.stability --summary $W/long/stability.jsonl | tr -d '\n' | grep -o '"stable": [0-9]*, "completed": [0-9]*, "min_ps": [0-9.]*')"
    else
        n=${LONG_PROCS:-10}
        letters=${LONG_LETTERS:-ACDEFGHIKLMNPQRSTVWY}
        per=$(( (left - 2) * n / ${#letters} ))    # minutes per system: each process runs its systems in turn
        [ "$per" -lt 1 ] && per=1
        stage "gpu1: 20 solvated amino acids, $n processes, <= $per min per system, to 50 ps (resume)"
        for i in $(seq 0 $(( n - 1 ))); do
            python3 -m training.stability --model "$M" --out "$W/long/stability.jsonl" --state-dir "$W/long/stab" \
                --ps "${LONG_STAB_PS:-50}" --minutes "$per" --device $DEV --platform $OMM --part "$i/$n" \
                --letters "$letters" --box-nm "${LONG_BOX_NM:-2.0}" \
                > "$W/logs/long_stab_$i.log" 2>&1 &
        done
        wait
        stage "gpu1: amino acids: $(python3 -m training.stability --summary $W/long/stability.jsonl | tr -d '\n' | grep -o '"stable": [0-9]*, "completed": [0-9]*, "min_ps": [0-9.]*')"
    fi
    if [ "${LONG_ENGINE:-openmm}" = batched ] && [ "$(seconds_left)" -ge 240 ]; then
        # the campaign finished early: #4 timings in the time left (GPU 0: the opt-in attention backward
        # variants end to end at 10k atoms against the default; GPU 1: the end-to-end table again)
        mkdir -p "$W/tune"
        if [ "$1" = 0 ]; then
            for v in base E2F_V2_BWD_DR_ACC E2F_V2_BWD_DU_BCAST; do
                [ "$(seconds_left)" -ge 150 ] || break
                (cd "$W/repo" && env ${v/base/E2F_NONE}=1 timeout 130 python3 benchmarks/gpu_end_to_end.py \
                    --parts speed --sizes 10000 --modes fp32 --no-water --out "$W/tune/e2e_$v") \
                    > "$W/logs/e2e_$v.log" 2>&1
                stage "gpu0: e2e 10k fp32 with $v (rc $?)"
            done
        else
            (cd "$W/repo" && timeout $(( $(seconds_left) - 30 )) python3 benchmarks/gpu_end_to_end.py --parts speed \
                --sizes 1000,10000,20000,100000 --modes fp32,graphed_fp32,tf32,graphed_tf32 --no-water \
                --out "$W/tune/e2e_table") \
                > "$W/logs/e2e_table.log" 2>&1
            stage "gpu1: e2e table (rc $?)"
        fi
    fi
    touch "$W/gpu$1.done"
}

graphs_ok() {
    python3 - "$W/graphed/gpu_graphed_check.json" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
ok = [s for s in rep["systems"] if s.get("dtype") == "float32"]
good = bool(ok) and all(s.get("graph_captured") and s.get("worst_dF_rel", 1) < 1e-4 for s in ok)
if "batched" in rep or any("neighbor_list" in s for s in ok):
    # since session 6: the in-graph neighbour list must be the one checked, and the batched class too
    b = rep.get("batched", {})
    good = good and all(s.get("neighbor_list") == "device" for s in ok) and bool(b.get("graph_captured")) \
        and b.get("worst_dF_rel", 1) < 1e-4 and b.get("neighbor_list") == "device"
sys.exit(0 if good else 1)
PY
}

collect() {
    # <= 8 files back: results tarball (small), model, logs, and the two MD trajectories
    mkdir -p "$W/collect"
    for d in teacher_md student_md; do
        if [ -d "$W/$d" ]; then
            python3 -m training.water_md analyse "$W/$d" --exp "$W/repo/.carry/water_gOO_skinner2013.txt" \
                > "$W/logs/${d}_analyse.log" 2>&1 || true
        fi
    done
    cat "$W"/stability_*.jsonl > "$W/stability.jsonl" 2>/dev/null
    (cd "$W" && tar czf "$OUT/results.tgz" progress.log logs refs.json run/train_log.jsonl run1/train_log.jsonl \
        run1/model.pt model_final.pt active_log.jsonl stability.jsonl labelled/label_log.jsonl \
        teacher_md/*.json teacher_md/*.csv teacher_md/*.png student_md/*.json student_md/*.csv student_md/*.png \
        report/default_model_nve.json bench stability_batched.jsonl gs graphed tune profile run/model.pt logs/train_stress.log \
        2>/dev/null)
    # the long campaign's whole state (the next call carries it back in as .carry_long)
    [ -d "$W/long" ] && (cd "$W/long" && tar czf "$OUT/long_state.tgz" .)
    for d in teacher_md student_md; do
        if ls "$W/$d"/*.dcd > /dev/null 2>&1; then
            (cd "$W" && tar czf "$OUT/${d}_traj.tgz" "$d"/*.dcd "$d"/*.pdb 2>/dev/null)
        fi
    done
    ls -la "$OUT"
}

setup
mkdir -p "$W/logs" "$W/bench"
if [ -d "$SRC/.carry_full/shared/fixtures/official_parity" ] && [ ! -f "$W/fixtures/official_parity/.complete" ]; then
    # the full parity fixtures arrive with a later call: copy, then flag them complete (gpu_session waits)
    rm -rf "$W/fixtures.tmp" && mkdir -p "$W/fixtures.tmp"
    cp -r "$SRC/.carry_full/shared/fixtures/official_parity" "$W/fixtures.tmp/" && touch "$W/fixtures.tmp/official_parity/.complete"
    rm -rf "$W/fixtures" && mv "$W/fixtures.tmp" "$W/fixtures"
fi
launch_pair() {   # PREFIX: start PREFIX-gpu0 and PREFIX-gpu1 in the background (once per machine)
    if [ ! -f "$W/.t_start" ]; then
        date +%s > "$W/.t_start"
        setsid bash "$W/repo/benchmarks/gpu_chain.sh" "$1-gpu0" > "$W/logs/gpu0.log" 2>&1 < /dev/null &
        setsid bash "$W/repo/benchmarks/gpu_chain.sh" "$1-gpu1" > "$W/logs/gpu1.log" 2>&1 < /dev/null &
        sleep 2
    fi
}

if [ "$MODE" = "x2-long-start" ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv
    if [ ! -f "$W/.t_start" ]; then
        mkdir -p "$W/long"
        [ -d "$SRC/.carry_long" ] && cp -r "$SRC/.carry_long/." "$W/long/"
    fi
    launch_pair x2-long
elif [ "$MODE" = "x2-stress-start" ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv
    launch_pair x2-stress
elif [ "$MODE" = "x2-start" ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv
    python3 -c 'import torch; print("cuda devices", torch.cuda.device_count())'
    if [ ! -d "$W/fixtures" ]; then
        mkdir -p "$W/fixtures" && cp -r "$SRC/.carry/shared/fixtures/official_parity" "$W/fixtures/"
    fi
    launch_pair x2
elif [ "$MODE" = "validate-start" ]; then
    mkdir -p "$W/report"
    if [ ! -f "$W/.t_start" ]; then
        setsid bash "$W/repo/benchmarks/gpu_chain.sh" validate > "$W/logs/pipeline.log" 2>&1 < /dev/null &
        sleep 2
    fi
elif [ "$MODE" = "start" ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv
    if [ ! -f "$W/bench.done" ] && [ -z "${CHAIN_NO_BENCH:-}" ]; then
        # short GPU benchmarks first, on an idle GPU (clean timings), then the pipeline
        export E2FORMER_ATTENTION_BACKEND=${E2FORMER_ATTENTION_BACKEND:-auto}
        (cd "$W/repo" && timeout 110 python3 -m kernels._compile_report --gpu --edge 10000 16384 100000 2>&1 \
            | tee "$W/bench/edge_degree_v2.log")
        (cd /tmp && timeout 75 python3 "$W/repo/benchmarks/openmm_overhead.py" --sizes 100000 --breakdown \
            --variants empty,ours,ours_analytic --repeats 3 --steps 100 \
            --json "$W/bench/openmm_overhead_breakdown.json" --md "$W/bench/openmm_overhead_breakdown.md" 2>&1 \
            | tee "$W/bench/overhead_breakdown.log")
        touch "$W/bench.done"
    fi
    if [ ! -f "$W/.t_start" ]; then
        setsid bash "$W/repo/benchmarks/gpu_chain.sh" pipeline > "$W/logs/pipeline.log" 2>&1 < /dev/null &
        sleep 2
    fi
elif [ "$MODE" = "poll" ] && [ ! -f "$W/.t_start" ]; then
    echo "fresh machine: the pipeline's state is gone (start again with 'start')"
    exit 3
elif [ "$MODE" = "poll" ]; then
    # fixes made between calls reach the stages not yet started (each stage is a new python process);
    # the running pipeline script itself is never touched (bash reads it as it goes)
    cp "$SRC"/training/*.py "$W/repo/training/"
fi
if [ "$MODE" = "pipeline" ]; then
    pipeline
    exit 0
fi
if [ "$MODE" = "validate" ]; then
    validate
    exit 0
fi
if [ "$MODE" = "x2-gpu0" ]; then x2_gpu0; exit 0; fi
if [ "$MODE" = "x2-stress-gpu0" ]; then x2_stress_gpu0; exit 0; fi
if [ "$MODE" = "x2-long-gpu0" ]; then x2_long 0; exit 0; fi
if [ "$MODE" = "x2-long-gpu1" ]; then x2_long 1; exit 0; fi
if [ "$MODE" = "x2-stress-gpu1" ]; then x2_stress_gpu1; exit 0; fi
if [ "$MODE" = "x2-gpu1" ]; then x2_gpu1; exit 0; fi
if [ -f "$W/gpu0.done" ] && [ -f "$W/gpu1.done" ]; then touch "$W/pipeline.done"; fi
# wait for the pipeline (or this call's time) to end, then collect
while [ $(( $(date +%s) - T0 )) -lt $(( LIMIT - 45 )) ] && [ ! -f "$W/pipeline.done" ]; do
    sleep 15
    if [ -f "$W/gpu0.done" ] && [ -f "$W/gpu1.done" ]; then touch "$W/pipeline.done"; fi
done
cat "$W/progress.log" 2>/dev/null
tail -2 "$W/logs/train1.log" "$W/logs/train2.log" 2>/dev/null; tail -2 "$W"/logs/stability_*.log 2>/dev/null
collect
