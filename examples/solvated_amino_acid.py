"""A capped amino acid (ACE-X-NME) in a small water box, simulated with the E2Former-V2 potential.

    python examples/solvated_amino_acid.py [--model path/to/checkpoint.pt] [--residue ALA] [--steps 200]

The dipeptide is built with PDBFixer from a short backbone sketch (missing side-chain atoms and
hydrogens added at pH 7), solvated with Modeller (TIP3P-FB waters, ``--padding`` nm), and then either
run fully with E2Former-V2 (default, ``--mode ml``) or as ML/MM (``--mode mlmm``: the dipeptide with
E2Former-V2, the water with amber14/TIP3P-FB, mechanical embedding).  It minimises, runs Langevin MD and
prints potential energies and ns/day.  Without ``--model`` the bundled default model is used.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import openmm
from openmm import app, unit

# backbone sketch: ACE CH3, C; residue N, CA, C; NME N, C (Å, a rough zig-zag; PDBFixer adds the rest)
_SKETCH = [("ACE", 1, "CH3"), ("ACE", 1, "C"), (None, 2, "N"), (None, 2, "CA"), (None, 2, "C"), ("NME", 3, "N"),
           ("NME", 3, "C")]


def build_dipeptide(residue: str):
    from pdbfixer import PDBFixer

    lines = []
    for i, (res, num, name) in enumerate(_SKETCH):
        resname = res or residue
        x, y = 1.2 * i, (0.0 if i % 2 == 0 else 0.9)
        lines.append("ATOM  %5d %-4s %3s A%4d    %8.3f%8.3f%8.3f  1.00  0.00          %2s"
                     % (i + 1, " " + name if len(name) < 4 else name, resname, num, x, y, 0.0, name[0]))
    with tempfile.NamedTemporaryFile("w", suffix=".pdb", delete=False) as fh:
        fh.write("\n".join(lines) + "\nEND\n")
        path = fh.name
    try:
        fixer = PDBFixer(filename=path)
    finally:
        os.unlink(path)
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    # relax the sketch with amber14 so the ML model starts from a sane geometry
    ff = app.ForceField("amber14-all.xml")
    system = ff.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(fixer.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 1.0, 500)
    return fixer.topology, ctx.getState(getPositions=True).getPositions()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="E2Former-V2 checkpoint (default: the bundled model)")
    ap.add_argument("--residue", default="ALA", help="central amino acid (three-letter code)")
    ap.add_argument("--mode", choices=["ml", "mlmm"], default="ml")
    ap.add_argument("--padding", type=float, default=0.5, help="water padding (nm)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--timestep", type=float, default=0.5, help="fs")
    ap.add_argument("--temperature", type=float, default=300.0)
    ap.add_argument("--platform", default=None)
    ap.add_argument("--device", default=None, help="torch device of the model (default: cuda if available)")
    ap.add_argument("--dcd", default=None, help="write the trajectory here")
    args = ap.parse_args(argv)

    from openmmml import MLPotential

    top, pos = build_dipeptide(args.residue.upper())
    modeller = app.Modeller(top, pos)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3pfb.xml")
    modeller.addSolvent(ff, model="tip3p", padding=args.padding * unit.nanometer)
    top, pos = modeller.topology, modeller.positions
    n_water = sum(1 for r in top.residues() if r.name == "HOH")
    print(f"ACE-{args.residue.upper()}-NME + {n_water} waters: {top.getNumAtoms()} atoms, box "
          f"{top.getPeriodicBoxVectors()[0][0].value_in_unit(unit.nanometer):.2f} nm")

    potential = MLPotential("e2formerv2", **({"modelPath": args.model} if args.model else {}))
    kwargs = {"device": args.device} if args.device else {}
    if args.mode == "ml":
        system = potential.createSystem(top, **kwargs)
    else:
        box = min(v.value_in_unit(unit.nanometer) for v in top.getUnitCellDimensions())
        cutoff = min(0.9, 0.49 * box)
        mm = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer, constraints=None,
                             rigidWater=False)
        peptide = [a.index for a in top.atoms() if a.residue.name != "HOH"]
        system = potential.createMixedSystem(top, mm, peptide, **kwargs)
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, 1 / unit.picosecond,
                                                 args.timestep * unit.femtosecond)
    platform = openmm.Platform.getPlatformByName(args.platform) if args.platform else None
    sim = app.Simulation(top, system, integrator, platform)
    sim.context.setPositions(pos)

    def epot():
        return sim.context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    print(f"platform {sim.context.getPlatform().getName()}, mode {args.mode}")
    print(f"initial potential energy:   {epot():.2f} kJ/mol")
    sim.minimizeEnergy(maxIterations=50)
    print(f"minimised potential energy: {epot():.2f} kJ/mol")
    sim.context.setVelocitiesToTemperature(args.temperature * unit.kelvin)
    if args.dcd:
        sim.reporters.append(app.DCDReporter(args.dcd, max(1, args.steps // 10)))
    report = max(1, args.steps // 5)
    t0 = time.perf_counter()
    done = 0
    while done < args.steps:
        k = min(report, args.steps - done)
        sim.step(k)
        done += k
        st = sim.context.getState(getEnergy=True)
        print(f"step {done:6d}  E_pot {st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole):14.2f}  "
              f"E_kin {st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole):10.2f} kJ/mol")
    wall = time.perf_counter() - t0
    ns_day = args.steps * args.timestep * 1e-6 / wall * 86400 if wall > 0 else 0.0
    print(f"{args.steps} steps in {wall:.2f} s: {ns_day:.4f} ns/day ({wall / max(args.steps, 1) * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
