"""MD through OpenMM (PythonForce path) for a ~100k-atom periodic water box: ms/step and ns/day.

The 648-atom water box of the parity fixtures is replicated 5x5x6 (97,200 atoms), turned into an OpenMM
Topology, and simulated with ``MLPotential('e2formerv2', modelPath=...).createSystem(topology)`` on the
CUDA platform (LangevinMiddleIntegrator, 0.5 fs). The model runs on the GPU inside the PythonForce.

    python benchmarks/openmm_md_water.py --model CKPT [--tf32] [--steps 3] --out results.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def water_topology(reps=(5, 5, 6)):
    import openmm.app as app
    import openmm.unit as u

    fix = Path(os.environ.get("E2F_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/official_parity"))
    box = np.load(fix / "v15" / "water216_pbc.npz")
    z0, p0, cell0 = box["atomic_numbers"], box["positions"], box["cell"]
    shifts = np.stack(np.meshgrid(*[np.arange(n) for n in reps], indexing="ij"), -1).reshape(-1, 3)
    pos = np.concatenate([p0 + s @ cell0 for s in shifts])
    z = np.tile(z0, len(shifts))
    top = app.Topology()
    chain = top.addChain()
    O, H = app.Element.getByAtomicNumber(8), app.Element.getByAtomicNumber(1)
    for i in range(0, len(z), 3):
        assert tuple(z[i:i + 3]) == (8, 1, 1)
        res = top.addResidue("HOH", chain)
        top.addAtom("O", O, res)
        top.addAtom("H1", H, res)
        top.addAtom("H2", H, res)
    cell = cell0 * np.array(reps)[:, None]
    top.setPeriodicBoxVectors([u.Quantity(v / 10.0, u.nanometer) for v in cell])
    return top, pos / 10.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="checkpoint (default: a randomly initialised V1.5-size model, see --config)")
    ap.add_argument("--config", help="official yaml for the random model (default: the v15 fixture config)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--out", default="openmm_md_water.json")
    args = ap.parse_args()
    import torch
    import openmm
    import openmm.unit as u
    from openmmml import MLPotential

    if args.model is None:  # V1.5 size, random weights (speed does not depend on the weight values)
        from openmm_e2former.model import E2FormerV2, load_config, official_reference_energies, save_model

        fix = Path(os.environ.get("E2F_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/official_parity"))
        torch.manual_seed(0)
        model = E2FormerV2(load_config(args.config or fix / "v15" / "config.yaml"), official_reference_energies())
        args.model = "/tmp/v15_random.pt"
        save_model(model, args.model, metadata={"note": "random weights, V1.5 size"})
    if args.tf32:  # TF32 matmuls, and TF32 dots in the fused kernels of the lazily loaded model
        torch.backends.cuda.matmul.allow_tf32 = True
        os.environ["E2FORMER_ALLOW_TF32"] = "1"
    top, pos_nm = water_topology()
    t0 = time.time()
    system = MLPotential("e2formerv2", modelPath=args.model).createSystem(top)
    integ = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1.0 / u.picosecond, 0.5 * u.femtosecond)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("CUDA"))
    ctx.setPositions(pos_nm)
    setup = time.time() - t0
    integ.step(1)  # warm-up (model load, kernel compilation)
    ctx.getState(getEnergy=True)
    t1 = time.time()
    integ.step(args.steps)
    e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    dt = (time.time() - t1) / args.steps
    row = {"n_atoms": top.getNumAtoms(), "model": os.path.basename(os.path.dirname(args.model)),
           "tf32": args.tf32, "timestep_fs": 0.5, "ms_per_step": dt * 1e3,
           "ns_per_day": 0.5e-6 * 86400 / dt, "potential_kJ_mol": e, "finite": bool(np.isfinite(e)),
           "setup_s": setup, "device": torch.cuda.get_device_name()}
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(rows + [row], indent=1))


if __name__ == "__main__":
    main()
