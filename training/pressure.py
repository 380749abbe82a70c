"""Configurational pressure of the SO3LR teacher and an E2Former student on the same water frames.

Why: the forces-only student 0.2-beta's NPT water (600 molecules, 298 K) drifted to ~0.89 g/cm^3 while the
teacher's settles at ~1.045 g/cm^3 (0.3-beta, fitted to the teacher's stress as well, holds 1.016).  A model that only sees 5 Å (the student) and is fitted to forces cannot learn the isotropic
part of the interactions beyond its cutoff: in a homogeneous liquid the mean force from distant molecules on
one atom is ~0, but their contribution to the pressure (the volume derivative of the energy) is not.  This
script measures that missing pressure directly, frame by frame.

Method: the barostat's own move.  Each molecule's centre of mass is scaled with the box (molecular scaling,
internal geometry unchanged, as ``openmm.MonteCarloBarostat`` does), V -> V (1 +/- delta), and

    P_conf = -(E(V+) - E(V-)) / (V+ - V-)           (central difference, both models in float64 sums)

The kinetic part N_mol k T / V is the same for both models and is added for the total.  The difference
P_teacher - P_student is the pressure the student misses; a mean-field form E_corr = -A / V (the energy of
pair interactions beyond a cutoff in a homogeneous fluid scales as N^2 / V) gives P_corr = -A / V^2, so A is
estimated as (P_teacher - P_student) * V^2 per frame; if A is roughly constant over densities the mean-field
reading holds.

    python -m training.pressure RUN_DIR [--frames 6] [--delta 3e-3] [--model PATH] [--teacher-lr-cutoff 12]
        [--out JSON]

RUN_DIR holds ``traj.dcd`` and ``top.pdb`` of a ``training.water_md`` run (needs mdtraj).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .active import KB_EV                       # eV/K
from .train import EV_PER_A3_TO_KBAR
from .water_md import density_g_cm3

EV_PER_A3_TO_BAR = 1000.0 * EV_PER_A3_TO_KBAR


def molecular_scale(pos: np.ndarray, cell: np.ndarray, molecules: Sequence[np.ndarray], masses: np.ndarray,
                    volume_factor: float):
    """Positions and cell with every molecule's centre of mass scaled by volume_factor^(1/3) (internal
    geometry kept), as a Monte Carlo barostat move does."""
    s = volume_factor ** (1.0 / 3.0)
    out = pos.copy()
    for idx in molecules:
        com = (masses[idx, None] * pos[idx]).sum(0) / masses[idx].sum()
        out[idx] += (s - 1.0) * com
    return out, cell * s


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pressure", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--delta", type=float, default=3e-3, help="relative volume change of each side")
    ap.add_argument("--model", default=None, help="student model (default: the bundled one)")
    ap.add_argument("--temperature", type=float, default=298.0)
    ap.add_argument("--teacher-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--teacher-lr-cutoff", type=float, default=12.0,
                    help="SO3LR r_max_lr (Å); 12 = as labelled; the student's cutoff (5) shows what lies beyond it")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import mdtraj
    import torch

    from openmm_e2former import load_model
    from .teacher import SO3LRTeacher

    run = Path(args.run_dir)
    traj = mdtraj.load(str(run / "traj.dcd"), top=str(run / "top.pdb"))
    pick = np.unique(np.linspace(0, traj.n_frames - 1, args.frames).round().astype(int))
    z = np.array([a.element.atomic_number for a in traj.topology.atoms])
    masses = np.array([a.element.mass for a in traj.topology.atoms])
    molecules = [np.array([a.index for a in r.atoms]) for r in traj.topology.residues]
    student = load_model(args.model, device="cpu", dtype=torch.float64)
    teacher = SO3LRTeacher(device="cpu", dtype=getattr(torch, args.teacher_dtype), lr_cutoff=args.teacher_lr_cutoff)
    frame_ps = 1.0
    if (run / "summary.json").exists():
        frame_ps = json.loads((run / "summary.json").read_text()).get("frame_every_fs", 1000.0) / 1000.0
    zt = torch.as_tensor(z)
    pbc = torch.tensor([True, True, True])

    def e_student(p, c):
        with torch.no_grad():
            return float(student.energy_and_forces(zt, torch.as_tensor(p), torch.as_tensor(c), pbc,
                                                   forces=False)[0])

    def e_teacher(p, c):
        e, _ = teacher.energy_forces_batch_tensors(z, [p], [c])
        return float(e[0])

    rows = []
    for k in pick:
        pos = traj.xyz[k].astype(np.float64) * 10.0
        cell = traj.unitcell_vectors[k].astype(np.float64) * 10.0
        vol = float(abs(np.linalg.det(cell)))
        rho = density_g_cm3(float(masses.sum()), vol / 1000.0)    # Å^3 -> nm^3
        pp, cp = molecular_scale(pos, cell, molecules, masses, 1.0 + args.delta)
        pm, cm = molecular_scale(pos, cell, molecules, masses, 1.0 - args.delta)
        dv = 2.0 * args.delta * vol
        t0 = time.time()
        p_s = -(e_student(pp, cp) - e_student(pm, cm)) / dv * EV_PER_A3_TO_BAR
        t1 = time.time()
        p_t = -(e_teacher(pp, cp) - e_teacher(pm, cm)) / dv * EV_PER_A3_TO_BAR
        t2 = time.time()
        p_kin = len(molecules) * KB_EV * args.temperature / vol * EV_PER_A3_TO_BAR
        row = {"frame": int(k), "time_ps": float(k * frame_ps), "density_g_cm3": rho, "volume_A3": vol,
               "P_conf_student_bar": p_s, "P_conf_teacher_bar": p_t, "P_kin_bar": p_kin,
               "P_student_bar": p_s + p_kin, "P_teacher_bar": p_t + p_kin,
               "dP_teacher_minus_student_bar": p_t - p_s,
               "A_meanfield_eV_A3": (p_t - p_s) / EV_PER_A3_TO_BAR * vol * vol,
               "wall_s_student": t1 - t0, "wall_s_teacher": t2 - t1}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"run_dir": str(run), "delta": args.delta, "temperature_K": args.temperature, "molecules": len(molecules),
           "teacher_dtype": args.teacher_dtype, "teacher_lr_cutoff_A": args.teacher_lr_cutoff, "frames": rows,
           "mean_dP_bar": float(np.mean([r["dP_teacher_minus_student_bar"] for r in rows])),
           "mean_A_eV_A3": float(np.mean([r["A_meanfield_eV_A3"] for r in rows])),
           "std_A_eV_A3": float(np.std([r["A_meanfield_eV_A3"] for r in rows]))}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "frames"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
