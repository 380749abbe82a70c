#!/usr/bin/env bash
# Proof of concept on the CPU (session 4): can the 5 Å default model learn the teacher's pressure?
# Fine-tune the bundled 0.2-beta weights with the stress loss on a small stress-labelled set, then measure the
# teacher-student pressure gap on the student's own 600-water NPT frames (held out: none of them is trained on).
# ~25 min on 2 CPU cores. Results: benchmarks/results/default_model/stress_poc/.
set -eu
W=${POC_DIR:-/tmp/poc}
R=benchmarks/results/default_model/session3/refs.json
mkdir -p "$W"
# 1. classical frames: the 7 water boxes of the medium plan (0.95-1.05 g/cm3, 280-370 K) + 6 solvated amino acids
python -m training.generate --scale medium --kinds water_box --frames 8 --out "$W/raw"
python -m training.generate --scale medium --systems aa_ALA_solv aa_GLU_solv aa_LYS_solv aa_SER_solv aa_TRP_solv \
    aa_MET_solv --frames 8 --out "$W/raw"
#    + lower densities (0.85-0.92 g/cm3), where the student's NPT run went
python - "$W/raw" <<'PY'
import sys, numpy as np
from pathlib import Path
from training.generate import build_water_box, run_md, stable_seed
from training.shards import save_shard
out = Path(sys.argv[1])
for n, rho in [(96, 0.88), (96, 0.92), (128, 0.90), (128, 0.85)]:
    name = f"water_box_{n}_d{rho:.2f}"
    b = build_water_box(n, rho, stable_seed(name))
    for T in (300.0, 330.0):
        path = out / f"{name}_T{int(T)}.npz"
        if not path.exists():
            traj = run_md(b, T, 8, 100, 2000, stable_seed(name, T), "CPU", False)
            save_shard(path, dict(Z=b.z, pbc=np.array([True] * 3), charge=b.charge, multiplicity=1, system=name,
                                  kind="water_box", temperature=T, source="openmm-amber14", **traj))
PY
# 2. SO3LR energies, forces and stress (384 frames, ~5 min on the CPU)
python -m training.label --raw "$W/raw" --out "$W/labelled" --device cpu --batch-frames 1 --stress
# 3. the bundled weights as a fine-tuning start (train.init_from reads the EMA weights of a checkpoint)
python - "$W/init_ckpt.pt" <<'PY'
import sys, torch, yaml
from openmm_e2former import default_model_path
cfg = yaml.safe_load(open("training/configs/default.yaml"))
d = torch.load(default_model_path(), weights_only=False)
torch.save({"model_config": cfg["model"], "ema": d["state_dict"], "step": 617}, sys.argv[1])
PY
# 4. baseline validation (lr 0, one step) and the fine-tune (STEPS steps of ~1000 atoms, stress_weight 3e4), then
# 5. teacher - student pressure on the student's NPT frames, before (committed) and after
fit_and_compare() {   # LABELLED OUT STEPS VAL_EVERY LOG_EVERY MAX_VAL_FRAMES
    local D="data.dirs=[$1] data.refs=$R train.init_from=$W/init_ckpt.pt train.device=cpu data.max_val_frames=$6"
    python -m training.train --set out_dir="$2/base" $D train.lr=0.0 train.lr_min=0.0 train.max_steps=1 \
        train.warmup_steps=1 train.val_every=1 train.log_every=1 --threads 2
    python -m training.train --set out_dir="$2/ft" $D train.lr=3.0e-4 train.lr_min=3.0e-5 train.max_steps="$3" \
        train.warmup_steps=10 train.val_every="$4" train.log_every="$5" train.ema_decay=0.99 \
        data.atoms_per_step=1000 --threads 2 --max-minutes 40
    python -m training.pressure benchmarks/results/default_model/student_water --frames 12 --model "$2/ft/model.pt" \
        --out "$2/pressure_ft.json"
}
fit_and_compare "$W/labelled" "$W" 200 50 10 400
# 6. (POC_BROAD=1) the same with every kind of data: + water clusters, gas-phase and solvated amino acids,
#    peptides and small molecules (3 frames per run, ~10 min more), 300 steps; per-kind errors before/after
if [ -n "${POC_BROAD:-}" ]; then
    mkdir -p "$W/broad/raw" "$W/broad/labelled"
    cp "$W"/raw/*.npz "$W/broad/raw/"; cp "$W"/labelled/*.npz "$W/broad/labelled/"
    python -m training.generate --scale medium --kinds water_cluster aa_solv aa_gas peptide_solv peptide_gas \
        gas_small --frames 3 --out "$W/broad/raw"
    python -m training.label --raw "$W/broad/raw" --out "$W/broad/labelled" --device cpu --batch-frames 1 --stress
    fit_and_compare "$W/broad/labelled" "$W/broad" 300 100 20 600
fi
