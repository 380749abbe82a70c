"""NVE through OpenMM with the bundled model: the CUDA-graph path with its Verlet list against the eager path.

The Verlet list selects each step's edges from candidates within cutoff + 1 Å inside the graph and rebuilds them
when an atom has moved more than 0.5 Å (``openmm_e2former.graphed``).  An edge it missed would show as a jump in
the total energy.  Both runs start from the same positions and velocities (float32: the trajectories diverge
after a while, so compare statistics, not frames): the total energy's drift (slope of a line fit) and its
fluctuation about the line, per run, with the number of candidate builds.

    python benchmarks/verlet_nve_check.py OUT.json --from-pdb PDB [--reps 2,2,2] [--steps 1000] [--every 20]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openmm_md_water import water_topology  # noqa: E402


def run(top, pos_nm, graphs: str, steps: int, every: int, timestep_fs: float, platform: str = "CUDA"):
    import openmm
    import openmm.unit as u
    from openmmml import MLPotential

    from openmm_e2former import default_model_path
    from openmm_e2former.graphed import GraphedEnergyForces

    os.environ["E2FORMER_CUDA_GRAPHS"] = graphs
    seen = {"calls": 0, "builds": 0, "modes": set()}
    original = GraphedEnergyForces.__call__

    def spy(self, *a):
        out = original(self, *a)
        seen["calls"] += 1
        seen["builds"] = self.verlet_builds
        seen["modes"].add(self.mode)
        return out

    GraphedEnergyForces.__call__ = spy
    try:
        system = MLPotential("e2formerv2", modelPath=str(default_model_path())).createSystem(top)
        integ = openmm.VerletIntegrator(timestep_fs * u.femtosecond)
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName(platform))
        ctx.setPositions(pos_nm)
        ctx.setVelocitiesToTemperature(300 * u.kelvin, 17)
        t, e = [], []
        t0 = time.time()
        for k in range(steps // every + 1):
            if k:
                integ.step(every)
            st = ctx.getState(getEnergy=True)
            t.append(k * every * timestep_fs * 1e-3)          # ps
            e.append((st.getPotentialEnergy() + st.getKineticEnergy()).value_in_unit(u.kilojoule_per_mole))
        wall = time.time() - t0
    finally:
        GraphedEnergyForces.__call__ = original
    t, e = np.array(t), np.array(e)
    slope, icept = np.polyfit(t, e, 1)
    n = top.getNumAtoms()
    return {"cuda_graphs": graphs, "n_atoms": n, "steps": steps, "timestep_fs": timestep_fs,
            "graph_calls": seen["calls"], "graph_modes": sorted(seen["modes"]), "verlet_builds": seen["builds"],
            "drift_kJ_mol_ps_per_atom": float(slope / n),
            "fluct_rms_kJ_mol_per_atom": float(np.sqrt(np.mean((e - (slope * t + icept)) ** 2)) / n),
            "max_step_jump_kJ_mol_per_atom": float(np.abs(np.diff(e)).max() / n),
            "e_total_kJ_mol": e.tolist(), "wall_s": wall, "finite": bool(np.isfinite(e).all())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--from-pdb", required=True)
    ap.add_argument("--reps", default="2,2,2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--timestep-fs", type=float, default=0.5)
    ap.add_argument("--platform", default="CUDA", help="OpenMM platform (CUDA; CPU / Reference for a dry run)")
    args = ap.parse_args()
    top, pos = water_topology(tuple(int(x) for x in args.reps.split(",")), args.from_pdb)
    rows = []
    for graphs in ("1", "0"):
        row = run(top, pos, graphs, args.steps, args.every, args.timestep_fs, args.platform)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "e_total_kJ_mol"}), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
