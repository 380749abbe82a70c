"""Stability of the 20 solvated capped amino acids (ACE-X-NME in water) under MD with an E2Former model.

Each system is built like the training data (``training.generate.build_capped(..., solvate=True)``: amber14 +
flexible TIP3P water, a cubic box), relaxed with the classical force field, then run with the model as its
ONLY force (``openmm_e2former.force.create_python_force``; zero-k bonds mark the molecules) under Langevin
dynamics (300 K, 1/ps) for ``--ps`` picoseconds or ``--minutes`` of wall time, whichever comes first.

"Stable" means: the potential energy stays finite, the kinetic temperature stays below 2x the target, and
every covalent bond of the classical topology (solute and water O-H) stays within 0.7-1.4x its length after
the classical relaxation at every check (every ``--check-fs``).  The first failed check stops the run and is
recorded with its time.

Masses: hydrogen-mass repartitioning (``--hmass`` 4 amu moved from the bonded heavy atom; every molecule
keeps its mass) with a 1.5 fs step by default.  Configurational stability (bonds, blow-ups) is what is
tested; dynamics are not reported.  ``--hmass 0`` keeps the real masses (use ``--timestep-fs 0.5``).

Results: one JSON line per system appended to ``--out`` (a re-run skips systems already there, so calls of
under 10 minutes can continue a long campaign; ``--part i/n`` splits the 20 systems over parallel workers).

    python -m training.stability --model runs/default/model.pt --out stab.jsonl --ps 50 --device cuda \\
        --platform CUDA --part 0/4
    python -m training.stability --summary stab.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def repartition_hydrogens(system, topology, hmass: float) -> int:
    """Set every hydrogen bonded to a heavy atom to ``hmass`` amu, taking the difference from that atom.
    Returns the number of hydrogens changed.  Total mass of every molecule is unchanged."""
    from openmm import unit
    n = 0
    for a, b in topology.bonds():
        for h, x in ((a, b), (b, a)):
            if h.element is not None and h.element.symbol == "H" and x.element is not None and x.element.symbol != "H":
                mh = system.getParticleMass(h.index).value_in_unit(unit.amu)
                mx = system.getParticleMass(x.index).value_in_unit(unit.amu)
                d = hmass - mh
                if mx - d <= 1.0:
                    raise ValueError(f"hydrogen mass {hmass} leaves atom {x.index} ({x.element.symbol}) too light")
                system.setParticleMass(h.index, hmass * unit.amu)
                system.setParticleMass(x.index, (mx - d) * unit.amu)
                n += 1
    return n


def run_one(model: str, letter: str, ps: float, minutes: float, device: str, platform: Optional[str],
            timestep_fs: float = 1.5, hmass: float = 4.0, temperature: float = 300.0, check_fs: float = 150.0,
            seed: int = 0, box_nm: float = 2.0) -> Dict:
    import openmm
    from openmm import unit
    from openmm_e2former.force import create_python_force
    from .generate import build_capped
    from .water_md import _platform, ml_system

    t_start = time.time()
    b = build_capped(letter, None, True, seed, box_nm)
    bonds = []
    for f in b.system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            bonds += [f.getBondParameters(i)[:2] for i in range(f.getNumBonds())]
    bi = np.array(bonds, dtype=int).reshape(-1, 2)
    plat, props = _platform(platform, 1)
    # classical relaxation (as the training data were sampled)
    b.system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b.box])
    ctx0 = openmm.Context(b.system, openmm.VerletIntegrator(0.0005), plat, props)
    ctx0.setPositions(b.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx0, 10.0, 1000)
    pos0 = ctx0.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    del ctx0
    force = create_python_force(list(map(int, b.z)), model, periodic=True, device=device, charge=int(b.charge))
    sysm = ml_system(b.system, b.topology, force, b.box)
    n_h = repartition_hydrogens(sysm, b.topology, hmass) if hmass > 0 else 0
    integ = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, 1 / unit.picosecond,
                                            timestep_fs * unit.femtosecond)
    integ.setRandomNumberSeed(seed + 11)
    ctx = openmm.Context(sysm, integ, plat, props)
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b.box])
    ctx.setPositions(pos0)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 100)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 12)
    p0 = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    d0 = np.linalg.norm(p0[bi[:, 0]] - p0[bi[:, 1]], axis=1)
    n_atoms = sysm.getNumParticles()
    dof = 3 * n_atoms - 3
    chunk = max(1, int(round(check_fs / timestep_fs)))
    steps_total = int(round(ps * 1000.0 / timestep_fs))
    deadline = time.time() + 60.0 * minutes
    done, ok, reason, worst, t_max = 0, True, "", 1.0, 0.0
    t_md = time.time()
    try:
        while done < steps_total and time.time() < deadline:
            integ.step(chunk)
            done += chunk
            st = ctx.getState(getPositions=True, getEnergy=True)
            e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
            temp = 2.0 * ke / (dof * 0.0083144626181532)
            t_max = max(t_max, temp)
            p = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
            ratio = np.linalg.norm(p[bi[:, 0]] - p[bi[:, 1]], axis=1) / d0
            worst = max(worst, float(ratio.max()), 1.0 / max(float(ratio.min()), 1e-9))
            if not np.isfinite(e) or not np.isfinite(ratio).all() or ratio.max() > 1.4 or ratio.min() < 0.7 \
                    or temp > 2.0 * temperature:
                k = int(np.argmax(np.maximum(ratio, 1.0 / np.maximum(ratio, 1e-9))))
                ok = False
                reason = (f"at {done * timestep_fs / 1000:.2f} ps: bond {bi[k, 0]}-{bi[k, 1]} ratio {ratio[k]:.2f}, "
                          f"T {temp:.0f} K, E {e:.1f} kJ/mol")
                break
    except Exception as exc:   # an overlap / NaN error raised by the force is an instability too
        ok, reason = False, f"{type(exc).__name__}: {str(exc)[:160]} at {done * timestep_fs / 1000:.2f} ps"
    wall_md = time.time() - t_md
    sim_ps = done * timestep_fs / 1000.0
    return {"system": f"ACE-{letter}-NME (water)", "letter": letter, "atoms": n_atoms, "charge": int(b.charge),
            "ps": sim_ps, "target_ps": ps, "stable": ok, "completed": ok and done >= steps_total,
            "worst_bond_ratio": worst, "max_temperature_K": t_max, "reason": reason,
            "timestep_fs": timestep_fs, "hmass_amu": hmass, "hydrogens_repartitioned": n_h,
            "temperature_K": temperature, "ns_per_day": sim_ps * 1e-3 / max(wall_md, 1e-9) * 86400.0,
            "wall_s": time.time() - t_start, "device": device}


def summary(path: str) -> Dict:
    """Latest record per amino acid from a results file."""
    recs: Dict[str, Dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["letter"]] = r
    rows = [recs[x] for x in AMINO_ACIDS if x in recs]
    return {"systems": rows, "n": len(rows), "stable": sum(r["stable"] for r in rows),
            "completed": sum(r["completed"] for r in rows),
            "min_ps": min((r["ps"] for r in rows), default=0.0)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model file (default: the bundled one)")
    ap.add_argument("--out", help="results file (JSON lines, appended)")
    ap.add_argument("--letters", default=AMINO_ACIDS)
    ap.add_argument("--part", default=None, help="i/n (0-based): every n-th amino acid starting at the i-th")
    ap.add_argument("--ps", type=float, default=50.0)
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-time limit per system")
    ap.add_argument("--total-minutes", type=float, default=1e9, help="start no new system after this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--platform", default=None)
    ap.add_argument("--timestep-fs", type=float, default=1.5)
    ap.add_argument("--hmass", type=float, default=4.0)
    ap.add_argument("--temperature", type=float, default=300.0)
    ap.add_argument("--box-nm", type=float, default=2.0)
    ap.add_argument("--summary", help="print the summary of a results file and exit")
    args = ap.parse_args(argv)
    if args.summary:
        print(json.dumps(summary(args.summary), indent=1))
        return 0
    if not args.out:
        ap.error("--out is required")
    model = args.model
    if model is None:
        from openmm_e2former import default_model_path
        model = str(default_model_path())
    letters: List[str] = list(args.letters)
    if args.part:
        i, n = (int(x) for x in args.part.split("/"))
        letters = letters[i::n]
    out = Path(args.out)
    seen = set()
    if out.exists():
        seen = {json.loads(l)["letter"] for l in out.read_text().splitlines() if l.strip()}
    t0 = time.time()
    for x in letters:
        if x in seen:
            continue
        if time.time() - t0 > 60.0 * args.total_minutes:
            break
        rec = run_one(model, x, args.ps, args.minutes, args.device, args.platform, args.timestep_fs, args.hmass,
                      args.temperature, box_nm=args.box_nm)
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
