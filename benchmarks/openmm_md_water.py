"""MD through OpenMM (PythonForce path) for a ~100k-atom periodic water box: ms/step and ns/day.

The 648-atom water box of the parity fixtures is replicated 5x5x6 (97,200 atoms), turned into an OpenMM
Topology, and simulated with ``MLPotential('e2formerv2', modelPath=...).createSystem(topology)`` on the
CUDA platform (LangevinMiddleIntegrator, 0.5 fs). The model runs on the GPU inside the PythonForce.

    python benchmarks/openmm_md_water.py --model CKPT [--tf32] [--ml-precision tf32|bf16] [--steps 3] --out results.json

``--model bundled`` runs the bundled default model instead.  ``--from-pdb PDB --reps 4,4,4`` replicates a
periodic water PDB (e.g. the last frame of the long-campaign 600-water run, liquid at 298 K under the bundled
model: 4 x 4 x 4 copies = 115,200 atoms) instead of the fixture box; ``--xtc`` takes its last frame from a
trajectory.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def _pdb_box(pdb: str, xtc: str | None = None):
    """(atomic numbers, positions Å, cell Å) of a periodic water PDB, optionally the last frame of ``xtc``."""
    import openmm.app as app

    f = app.PDBFile(pdb)
    z = np.array([a.element.atomic_number for a in f.topology.atoms()])
    cell = np.array([[v.x, v.y, v.z] for v in f.topology.getPeriodicBoxVectors()]) * 10.0
    pos = np.array([[p.x, p.y, p.z] for p in f.positions]) * 10.0
    if xtc:
        import mdtraj as md

        t = md.load(xtc, top=pdb)[-1]
        pos, cell = t.xyz[0].astype(np.float64) * 10.0, t.unitcell_vectors[0].astype(np.float64) * 10.0
    return z, pos, cell


def water_topology(reps=(5, 5, 6), pdb: str | None = None, xtc: str | None = None):
    import openmm.app as app
    import openmm.unit as u

    if pdb:
        z0, p0, cell0 = _pdb_box(pdb, xtc)
    else:
        fix = Path(os.environ.get("E2F_FIXTURES",
                                  Path(__file__).resolve().parents[2] / "shared/fixtures/official_parity"))
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
    ap.add_argument("--model", help="checkpoint, or 'bundled' for the bundled default model (default: a randomly "
                                    "initialised V1.5-size model, see --config)")
    ap.add_argument("--from-pdb", default=None, help="periodic water PDB to replicate instead of the fixture box")
    ap.add_argument("--xtc", default=None, help="take the positions and box from this trajectory's last frame")
    ap.add_argument("--reps", default="5,5,6", help="copies along a, b, c")
    ap.add_argument("--timestep-fs", type=float, default=0.5)
    ap.add_argument("--platform", default="CUDA")
    ap.add_argument("--config", help="official yaml for the random model (default: the v15 fixture config)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--ml-precision", default=None, choices=["single", "tf32", "bf16"],
                    help="createSystem(precision=...): the plugin's own float32 modes (session 10)")
    ap.add_argument("--compile", action="store_true",
                    help="createSystem(compile=True): the experimental torch.compile of the node-level parts (session 11)")
    ap.add_argument("--radial-tables", action=argparse.BooleanOptionalAction, default=None,
                    help="createSystem(radial_tables=True / False): the radial tables of the edge MLPs; default: the "
                         "potential's automatic choice (on for float32 on CUDA since session 12)")
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
    from openmm_e2former import force as _force

    if args.model == "bundled":
        from openmm_e2former import default_model_path

        args.model = str(default_model_path())
    reps = tuple(int(x) for x in args.reps.split(","))
    top, pos_nm = water_topology(reps, args.from_pdb, args.xtc)
    t0 = time.time()
    extra = {"compile": True} if args.compile else {}
    if args.radial_tables is not None:
        extra["radial_tables"] = args.radial_tables
    system = MLPotential("e2formerv2", modelPath=args.model).createSystem(top, precision=args.ml_precision, **extra)
    integ = openmm.LangevinMiddleIntegrator(300 * u.kelvin, 1.0 / u.picosecond, args.timestep_fs * u.femtosecond)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName(args.platform))
    ctx.setPositions(pos_nm)
    setup = time.time() - t0
    t_warm = time.time()
    integ.step(1)  # warm-up (model load, kernel compilation)
    ctx.getState(getEnergy=True)
    t1 = time.time()
    warmup = t1 - t_warm
    integ.step(args.steps)
    e = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    dt = (time.time() - t1) / args.steps
    row = {"n_atoms": top.getNumAtoms(), "model": args.model, "tf32": args.tf32, "ml_precision": args.ml_precision,
           "reps": list(reps),
           "source": args.xtc or args.from_pdb or "fixture water216_pbc", "timestep_fs": args.timestep_fs,
           "steps": args.steps, "ms_per_step": dt * 1e3, "ns_per_day": args.timestep_fs * 1e-6 * 86400 / dt, "potential_kJ_mol": e, "finite": bool(np.isfinite(e)),
           "setup_s": setup, "warmup_step_s": warmup, "compile": bool(args.compile),
           "radial_tables": args.radial_tables,      # None: the automatic default
           # what the force's model actually uses (the automatic default resolved for this device and precision)
           "radial_tables_used": _force.resolve_radial_tables(args.radial_tables, _force.resolve_device(None),
                                                              _force.resolve_dtype(args.ml_precision)),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           # E2FORMER_CUDA_GRAPHS as set for this run (None: the automatic choice by size)
           "cuda_graphs_env": os.environ.get("E2FORMER_CUDA_GRAPHS"),
           # the process's peak CUDA memory (the model runs in this process through PythonForce; a CUDA graph's
           # private pool is counted in both), GiB
           "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
           "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None}
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(rows + [row], indent=1))


if __name__ == "__main__":
    main()
