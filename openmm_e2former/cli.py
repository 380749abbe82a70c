"""``e2former-md``: molecular dynamics of a PDB structure with the E2Former-V2 potential.

Pipeline: PDB (or PDBx/mmCIF) in -> optional PDBFixer repair (missing heavy atoms, hydrogens at a pH) ->
optional solvation (Modeller.addSolvent: padding, ion concentration) -> pure ML (``--ml all``) or ML/MM
(``--ml-residues`` / ``--ml-atoms``; amber14 + TIP3P-FB for the rest, mechanical embedding through
``MLPotential.createMixedSystem``) -> energy minimisation -> Langevin MD with a StateDataReporter (CSV),
a DCD trajectory and a progress bar -> a short summary (energies, ns/day).

Examples::

    e2former-md water.pdb --model ckpt.pt --steps 1000
    e2former-md protein.pdb --model ckpt.pt --fix --solvate --padding 1.0 --ml-residues 42-44 --steps 5000
    e2former-md ligand_complex.pdb --model ckpt.pt --ml-residues LIG --platform CUDA --precision mixed

Input errors (missing/unreadable files, residues the force field cannot template, elements the model
does not support, bad selections) print one line ``e2former-md: error: ...`` and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

__all__ = ["main", "build_parser", "CLIError"]

MM_FORCEFIELD = ("amber14-all.xml", "amber14/tip3pfb.xml")


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e2former-md",
        description="Run MD of a PDB structure with the E2Former-V2 ML potential (pure ML or ML/MM).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("pdb", help="input structure (.pdb, or .cif/.pdbx)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="E2Former-V2 checkpoint (default: the bundled model)")
    g.add_argument("--config", default=None, help="config .yaml of an official checkpoint (default: beside it)")
    g.add_argument("--head", default=None, help="model head (e.g. omol25, svp; default: the model's default)")
    g.add_argument("--charge", type=int, default=0, help="total charge of the ML region")
    g.add_argument("--multiplicity", type=int, default=1, help="spin multiplicity 2S+1 of the ML region")
    g.add_argument("--device", default=None, help="torch device for the model (default: cuda if available)")
    g = p.add_argument_group("system preparation")
    g.add_argument("--fix", action="store_true",
                   help="repair the structure with PDBFixer (non-standard residues, missing heavy atoms, hydrogens)")
    g.add_argument("--ph", type=float, default=7.0, help="pH for the hydrogens added by --fix")
    g.add_argument("--solvate", action="store_true", help="add a water box (TIP3P-FB) and ions")
    g.add_argument("--padding", type=float, default=1.0, help="solvent padding (nm)")
    g.add_argument("--ionic-strength", type=float, default=0.15, help="salt concentration (molar)")
    g.add_argument("--no-neutralize", action="store_true", help="do not add counter-ions")
    g = p.add_argument_group("ML region")
    sel = g.add_mutually_exclusive_group()
    sel.add_argument("--ml", choices=["all"], default=None, help="'all': every atom with E2Former-V2 (default)")
    sel.add_argument("--ml-residues", default=None,
                     help="ML/MM: residues for the ML region, comma-separated: residue names (LIG), PDB residue "
                          "numbers or ranges (5, 10-12), optionally with a chain (A:10-12)")
    sel.add_argument("--ml-atoms", default=None, help="ML/MM: 0-based atom indices or ranges (0-21,30)")
    g.add_argument("--nonbonded-cutoff", type=float, default=1.0, help="MM nonbonded cutoff (nm) for ML/MM")
    g = p.add_argument_group("simulation")
    g.add_argument("--platform", default=None, help="OpenMM platform (Reference, CPU, CUDA, OpenCL)")
    g.add_argument("--precision", choices=["single", "mixed", "double"], default=None,
                   help="OpenMM platform precision (CUDA/OpenCL); 'double' also runs the model in float64")
    g.add_argument("--matmul", choices=["fp32", "tf32", "bf16"], default="fp32",
                   help="the model's matrix products (float32 model, CUDA): exact fp32 (default), TF32 tensor "
                        "cores, or TF32 plus bf16 for the node-level products; faster, forces less exact "
                        "(V1.5 size on an H200, 10k-100k atoms: +23-29 %% / +25-34 %% steps/s; force error vs fp32 ~5e-3 / ~5e-2 eV/A)")
    g.add_argument("--compile", action="store_true",
                   help="experimental: torch.compile the model's node-level parts (eager path only: where no CUDA "
                        "graph runs, e.g. with --no-cuda-graphs; the first step compiles for tens of seconds)")
    g.add_argument("--radial-tables", action=argparse.BooleanOptionalAction, default=None,
                   help="read the edge MLPs from per-element-pair cubic tables (error below float32 rounding; no "
                        "edge MLP in the fused GPU attention kernels). Default: on for float32 on a GPU, off for "
                        "double precision and on the CPU")
    g.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay each force call from a CUDA graph (neighbour list included). Default: on for float32 "
                        "systems of up to 150,000 ML atoms on a GPU whose step fits in half the free memory; "
                        "--no-cuda-graphs keeps the eager path (about half the memory)")
    g.add_argument("--temperature", type=float, default=300.0, help="K")
    g.add_argument("--friction", type=float, default=1.0, help="Langevin friction (1/ps)")
    g.add_argument("--timestep", type=float, default=0.5, help="fs")
    g.add_argument("--hydrogen-mass", type=float, default=None, metavar="AMU",
                   help="hydrogen-mass repartitioning: every H bonded to a heavy atom gets this mass (amu), taken "
                        "from that atom (each molecule keeps its mass). The bundled model was validated with "
                        "--hydrogen-mass 4 --timestep 1.5 (100 ps water, 20 x 50 ps solvated amino acids)")
    g.add_argument("--steps", type=int, default=1000, help="MD steps")
    g.add_argument("--pressure", type=float, default=None,
                   help="bar: constant pressure (NPT, Monte Carlo barostat; periodic systems only). Default: NVT")
    g.add_argument("--barostat-interval", type=int, default=25, help="steps between barostat moves (with --pressure)")
    g.add_argument("--minimize-steps", type=int, default=200,
                   help="max. L-BFGS iterations of the energy minimisation (0: until converged, -1: skip)")
    g.add_argument("--report-interval", type=int, default=None,
                   help="steps between reports / DCD frames (default: 100, or steps / 10 for runs under 1000 steps, "
                        "so that a short run still has a trace and plots)")
    g.add_argument("--seed", type=int, default=None, help="random seed (velocities, Langevin noise)")
    g = p.add_argument_group("output")
    g.add_argument("--output", default=None, help="output prefix (default: input file name without extension)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plots", action="store_true",
                   help="do not write PNG plots (energy/temperature trace; water O-O g(r) for periodic runs)")
    g.add_argument("--rdf-reference", default=None,
                   help="reference g_OO(r) file (two columns: r/Å, g) drawn on the water RDF plot")
    return p


# ----------------------------------------------------------------------------------------------------
def _parse_ranges(text: str, what: str) -> List[int]:
    import re

    out: List[int] = []
    for tok in text.replace(" ", "").split(","):
        if not tok:
            continue
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", tok)
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise CLIError(f"invalid {what} {tok!r} (expected integers or ranges like 3-7)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        out.extend(range(a, b + 1))
    return out


def select_atoms(topology, ml: Optional[str], ml_residues: Optional[str], ml_atoms: Optional[str]) -> Optional[List[int]]:
    """ML atom indices, or None for pure ML."""
    n = topology.getNumAtoms()
    if ml_atoms is not None:
        idx = sorted(set(_parse_ranges(ml_atoms, "atom index")))
        bad = [i for i in idx if i < 0 or i >= n]
        if bad:
            raise CLIError(f"--ml-atoms: atom indices {bad[:5]} out of range (the system has {n} atoms)")
        if not idx:
            raise CLIError("--ml-atoms selects no atom")
        return idx
    if ml_residues is not None:
        chosen = set()
        residues = list(topology.residues())
        for tok in ml_residues.replace(" ", "").split(","):
            if not tok:
                continue
            chain = None
            if ":" in tok:
                chain, tok = tok.split(":", 1)
            if tok and (tok[0].isdigit() or tok[0] == "-"):
                numbers = set(_parse_ranges(tok, "residue number"))
                match = [r for r in residues if _resnum(r) in numbers]
            else:
                match = [r for r in residues if r.name.upper() == tok.upper()]
            if chain is not None:
                match = [r for r in match if r.chain.id == chain]
            if not match:
                raise CLIError(f"--ml-residues: {tok!r}{' in chain ' + chain if chain else ''} matches no residue")
            chosen.update(r.index for r in match)
        idx = sorted(a.index for r in residues if r.index in chosen for a in r.atoms())
        if not idx:
            raise CLIError("--ml-residues selects no atom")
        return idx
    return None


def _resnum(residue) -> Optional[int]:
    try:
        return int(residue.id)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------
def load_structure(path: str):
    """(topology, positions) from a PDB/PDBx file, with clear errors."""
    from openmm import app, unit

    if not os.path.exists(path):
        raise CLIError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"input path is a directory, not a structure file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".cif", ".pdbx", ".mmcif"):
        try:
            with open(path, "r", errors="replace") as fh:
                has_atoms = any(line.startswith(("ATOM", "HETATM")) for line in fh)
        except OSError as exc:
            raise CLIError(f"cannot read {path}: {exc}") from None
        if not has_atoms:
            raise CLIError(f"{path} contains no atoms (no ATOM/HETATM records: is it a PDB file?)")
    try:
        if ext in (".cif", ".pdbx", ".mmcif"):
            f = app.PDBxFile(path)
        else:
            f = app.PDBFile(path)
    except Exception as exc:  # OpenMM's readers raise a variety of exceptions on garbage
        raise CLIError(f"could not read {path} as a {'PDBx/mmCIF' if ext in ('.cif', '.pdbx', '.mmcif') else 'PDB'} "
                       f"file: {type(exc).__name__}: {exc}") from None
    top = f.topology
    if top.getNumAtoms() == 0:  # pragma: no cover - OpenMM's reader usually fails first
        raise CLIError(f"{path} contains no atoms (is it a PDB file?)")
    pos = f.getPositions()
    box = top.getPeriodicBoxVectors()
    if box is not None:
        lengths = [(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) ** 0.5 for v in box.value_in_unit(unit.nanometer)]
        if max(lengths) <= 0.1 + 1e-9:  # CRYST1 1 1 1 placeholder of NMR / model files
            top.setPeriodicBoxVectors(None)
    return top, pos


def fix_structure(path: str, ph: float):
    try:
        from pdbfixer import PDBFixer
    except ImportError:
        raise CLIError("--fix needs PDBFixer: pip install pdbfixer") from None
    try:
        fixer = PDBFixer(filename=path)
    except Exception as exc:
        raise CLIError(f"PDBFixer could not read {path}: {type(exc).__name__}: {exc}") from None
    fixer.findMissingResidues()
    fixer.missingResidues = {}  # do not model missing loops; only complete residues that are present
    fixer.findNonstandardResidues()
    fixer.replaceNonstandardResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(ph)
    return fixer.topology, fixer.positions


def _template_error(exc: Exception) -> CLIError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CLIError(f"the amber14 force field cannot build this system: {msg}. Use --fix to add missing atoms "
                    f"and hydrogens, and put residues without amber14 templates (ligands, unusual residues) in "
                    f"the ML region (--ml all, or --ml-residues NAME)")


# ----------------------------------------------------------------------------------------------------
def repartition_hydrogen_mass(system, topology, hmass: float) -> int:
    """Set every hydrogen bonded to a heavy atom to ``hmass`` amu, taking the difference from that atom, so
    each molecule keeps its total mass.  Virtual sites (mass 0) are left alone.  Returns the number of
    hydrogens changed.  ValueError if an atom would fall to 1 amu or less."""
    from openmm import unit

    if not hmass > 0:
        raise ValueError(f"hydrogen mass must be > 0 amu, got {hmass}")
    n = 0
    for a, b in topology.bonds():
        for h, x in ((a, b), (b, a)):
            if (h.element is None or h.element.symbol != "H" or x.element is None or x.element.symbol == "H"
                    or system.isVirtualSite(h.index) or system.isVirtualSite(x.index)):
                continue
            mh = system.getParticleMass(h.index).value_in_unit(unit.amu)
            mx = system.getParticleMass(x.index).value_in_unit(unit.amu)
            if mh == 0 or mx == 0:
                continue
            d = hmass - mh
            if mx - d <= 1.0:
                raise ValueError(f"hydrogen mass {hmass} amu leaves atom {x.index} ({x.element.symbol}, "
                                 f"{mx:.3f} amu) too light ({mx - d:.3f} amu)")
            system.setParticleMass(h.index, hmass * unit.amu)
            system.setParticleMass(x.index, (mx - d) * unit.amu)
            n += 1
    return n


def _minimize(sim, max_iterations: int, progress: bool = True) -> None:
    """``sim.minimizeEnergy`` with a progress bar (L-BFGS iterations and the current energy, on stderr) where
    OpenMM has minimisation reporters (8.1+) and tqdm is installed; a ML minimisation of a solvated system can
    take minutes on the CPU.  ``max_iterations`` 0: until converged (the bar then has no total)."""
    import openmm

    bar = reporter = None
    if progress and hasattr(openmm, "MinimizationReporter"):
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=max_iterations or None, unit="it", desc="minimise", file=sys.stderr, dynamic_ncols=True)

            class _BarReporter(openmm.MinimizationReporter):
                def report(self, iteration, x, grad, args):
                    bar.update(1)
                    bar.set_postfix_str(f"E {args['system energy']:.1f} kJ/mol", refresh=False)
                    return False        # never stop the minimiser

            reporter = _BarReporter()
    try:
        if reporter is not None:
            sim.minimizeEnergy(maxIterations=max_iterations, reporter=reporter)
        else:
            sim.minimizeEnergy(maxIterations=max_iterations)
    finally:
        if bar is not None:
            bar.close()


def _ml_precision(args):
    """createSystem's ``precision`` from --precision / --matmul."""
    if args.precision == "double" and args.matmul != "fp32":
        raise CLIError(f"--matmul {args.matmul} needs a float32 model: drop --precision double")
    return "double" if args.precision == "double" else (None if args.matmul == "fp32" else args.matmul)


def ml_setup(args) -> dict:
    """What the ML force runs with, after the automatic choices: device, precision, radial tables, compile."""
    from . import force as F

    dev = F.resolve_device(args.device)
    precision = _ml_precision(args)
    dtype = F.resolve_dtype(precision)
    return {"device": dev, "precision": "float64" if precision == "double" else F.resolve_mode(precision),
            "radial_tables": F.resolve_radial_tables(args.radial_tables, dev, dtype), "compile": bool(args.compile)}


def build_simulation(args, topology, positions):
    import openmm
    from openmm import app, unit
    from openmmml import MLPotential

    ml_atoms = select_atoms(topology, args.ml, args.ml_residues, args.ml_atoms)
    ml_precision = _ml_precision(args)
    ml_kwargs = dict(charge=args.charge, multiplicity=args.multiplicity, precision=ml_precision)
    if args.head is not None:
        ml_kwargs["head"] = args.head
    if args.compile:
        ml_kwargs["compile"] = True
    if args.radial_tables is not None:
        ml_kwargs["radial_tables"] = args.radial_tables
    if args.cuda_graphs is not None:
        ml_kwargs["cuda_graphs"] = args.cuda_graphs
    if args.device is not None:
        ml_kwargs["device"] = args.device
    potential_kwargs = {}
    if args.model is not None:
        if not os.path.exists(args.model):
            raise CLIError(f"model file not found: {args.model}")
        potential_kwargs["modelPath"] = args.model
    if args.config is not None:
        potential_kwargs["config"] = args.config
    try:
        potential = MLPotential("e2formerv2", **potential_kwargs)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    periodic = topology.getPeriodicBoxVectors() is not None
    if ml_atoms is None:
        system = potential.createSystem(topology, **ml_kwargs)
        mode = "pure ML"
    else:
        ff = app.ForceField(*MM_FORCEFIELD)
        cutoff = args.nonbonded_cutoff
        if periodic:
            vecs = topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer)
            half = 0.5 * min(vecs[0][0], vecs[1][1], vecs[2][2])
            if cutoff > 0.99 * half:
                cutoff = 0.99 * half
                print(f"e2former-md: note: MM cutoff reduced to {cutoff:.3f} nm (half the box)", file=sys.stderr)
        try:
            mm_system = ff.createSystem(
                topology, nonbondedMethod=app.PME if periodic else app.NoCutoff,
                nonbondedCutoff=cutoff * unit.nanometer, constraints=None, rigidWater=False)
        except ValueError as exc:
            raise _template_error(exc) from None
        info = potential.createMixedSystem(topology, mm_system, ml_atoms, returnInfo=True, **ml_kwargs)
        system = info["system"]
        n_caps = system.getNumParticles() - topology.getNumAtoms()
        if n_caps:  # link-atom H caps (virtual sites) for bonds crossing the ML/MM boundary
            old_to_new = info["oldToNew"]
            new_positions = [openmm.Vec3(0, 0, 0)] * info["topology"].getNumAtoms()
            for old, pos in enumerate(positions.value_in_unit(unit.nanometer)):
                new_positions[old_to_new[old]] = openmm.Vec3(*pos)
            topology, positions = info["topology"], new_positions * unit.nanometer
        mode = (f"ML/MM ({len(ml_atoms)} ML atoms, mechanical embedding, amber14"
                + (f", {n_caps} link-atom caps)" if n_caps else ")"))
    hmass = getattr(args, "hydrogen_mass", None)
    if hmass is not None:
        try:
            n_h = repartition_hydrogen_mass(system, topology, hmass)
        except ValueError as exc:
            raise CLIError(f"--hydrogen-mass: {exc}") from None
        mode += f", H mass {hmass:g} amu ({n_h} H)"
    elif args.timestep > 1.0:
        print(f"e2former-md: note: a {args.timestep:g} fs step with hydrogen masses of 1 amu; the bundled model was "
              "validated with --hydrogen-mass 4 --timestep 1.5", file=sys.stderr)
    if args.pressure is not None:
        if not periodic:
            raise CLIError("--pressure needs a periodic system (a PDB with a CRYST1 box, or --solvate)")
        if args.pressure <= 0 or args.barostat_interval <= 0:
            raise CLIError("--pressure and --barostat-interval must be > 0")
        barostat = openmm.MonteCarloBarostat(args.pressure * unit.bar, args.temperature * unit.kelvin,
                                             args.barostat_interval)
        if args.seed is not None:
            barostat.setRandomNumberSeed(args.seed)
        system.addForce(barostat)
        mode += f", NPT {args.pressure:g} bar"
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond,
                                                 args.timestep * unit.femtosecond)
    if args.seed is not None:
        integrator.setRandomNumberSeed(args.seed)
    platform, props = None, {}
    if args.platform is not None:
        try:
            platform = openmm.Platform.getPlatformByName(args.platform)
        except Exception:
            names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
            raise CLIError(f"unknown OpenMM platform {args.platform!r} (available: {', '.join(names)})") from None
        if args.precision is not None and args.platform in ("CUDA", "OpenCL", "HIP"):
            props["Precision"] = args.precision
    sim = app.Simulation(topology, system, integrator, platform, props or None)
    sim.context.setPositions(positions)
    sim.context.computeVirtualSites()
    return sim, mode, ml_atoms, topology


def default_report_interval(steps: int) -> int:
    """Steps between reports when --report-interval is not given: 100, or a tenth of a run under 1000 steps
    (at least 1), so that a short test run still writes a trace, frames and plots."""
    return 100 if steps >= 1000 else max(1, steps // 10)


def run(args) -> dict:
    import numpy as np
    import openmm
    from openmm import app, unit

    if args.steps < 0:
        raise CLIError("--steps must be >= 0")
    if args.report_interval is None:
        args.report_interval = default_report_interval(args.steps)
    if args.report_interval <= 0:
        raise CLIError("--report-interval must be > 0")
    if args.fix:
        if not os.path.exists(args.pdb):
            raise CLIError(f"input file not found: {args.pdb}")
        load_structure(args.pdb)  # same clear errors as without --fix
        topology, positions = fix_structure(args.pdb, args.ph)
    else:
        topology, positions = load_structure(args.pdb)
    if args.solvate:
        modeller = app.Modeller(topology, positions)
        try:
            modeller.addSolvent(app.ForceField(*MM_FORCEFIELD), model="tip3p", padding=args.padding * unit.nanometer,
                                ionicStrength=args.ionic_strength * unit.molar, neutralize=not args.no_neutralize)
        except ValueError as exc:
            raise _template_error(exc) from None
        topology, positions = modeller.topology, modeller.positions

    prefix = args.output or os.path.splitext(os.path.basename(args.pdb))[0] + "_e2former"
    out_dir = os.path.dirname(prefix)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)

    sim, mode, ml_atoms, topology = build_simulation(args, topology, positions)
    ctx = sim.context
    n_atoms = topology.getNumAtoms()
    periodic = topology.getPeriodicBoxVectors() is not None
    print(f"e2former-md: {n_atoms} atoms, {mode}, {'periodic' if periodic else 'non-periodic'}, "
          f"platform {ctx.getPlatform().getName()}", flush=True)
    ml = ml_setup(args)
    print(f"e2former-md: ML force on {ml['device']}, {ml['precision']}, radial tables "
          f"{'on' if ml['radial_tables'] else 'off'}{', torch.compile' if ml['compile'] else ''}", flush=True)

    def epot():
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    summary = {"atoms": n_atoms, "mode": mode, "platform": ctx.getPlatform().getName(), "ml": ml}
    summary["initial_energy"] = epot()
    if args.minimize_steps >= 0:
        t0 = time.perf_counter()
        _minimize(sim, args.minimize_steps, progress=not args.no_progress)
        summary["minimized_energy"] = epot()
        summary["minimize_seconds"] = time.perf_counter() - t0
    with open(prefix + "_minimized.pdb", "w") as fh:
        app.PDBFile.writeFile(topology, ctx.getState(getPositions=True).getPositions(), fh)

    if args.seed is not None:
        ctx.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    else:
        ctx.setVelocitiesToTemperature(args.temperature * unit.kelvin)
    log_path, dcd_path = prefix + ".csv", prefix + ".dcd"
    sim.reporters.append(app.StateDataReporter(log_path, args.report_interval, step=True, time=True,
                                               potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                                               temperature=True, speed=True,
                                               volume=args.pressure is not None, density=args.pressure is not None))
    sim.reporters.append(app.DCDReporter(dcd_path, args.report_interval))

    bar = None
    if not args.no_progress and args.steps > 0:
        try:
            from tqdm import tqdm

            bar = tqdm(total=args.steps, unit="step", desc="MD", file=sys.stderr, dynamic_ncols=True)
        except ImportError:  # pragma: no cover
            bar = None
    chunk = max(1, min(args.report_interval, 100))
    done = 0
    t0 = time.perf_counter()
    while done < args.steps:
        k = min(chunk, args.steps - done)
        sim.step(k)
        done += k
        if bar is not None:
            bar.update(k)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    st = ctx.getState(getEnergy=True, getPositions=True)
    summary["final_potential_energy"] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    summary["final_kinetic_energy"] = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    dof = 3 * sum(1 for i in range(sim.system.getNumParticles()) if sim.system.getParticleMass(i)._value > 0) \
        - sim.system.getNumConstraints() \
        - (3 if any(isinstance(f, openmm.CMMotionRemover) for f in sim.system.getForces()) else 0)
    kb = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    summary["final_temperature"] = 2 * summary["final_kinetic_energy"] / (max(dof, 1) * kb)
    if args.pressure is not None:
        a, b, c = st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        volume = float(abs(np.dot(a, np.cross(b, c))))                                         # nm^3
        mass = sum(sim.system.getParticleMass(i).value_in_unit(unit.dalton)
                   for i in range(sim.system.getNumParticles()))
        summary["final_volume_nm3"] = volume
        summary["final_density_g_cm3"] = mass / 6.02214076e23 / (volume * 1e-21)
    summary["steps"] = args.steps
    summary["md_seconds"] = wall
    ns = args.steps * args.timestep * 1e-6
    summary["ns_per_day"] = ns / wall * 86400 if wall > 0 and args.steps else 0.0
    with open(prefix + "_final.pdb", "w") as fh:
        app.PDBFile.writeFile(topology, st.getPositions(), fh)
    summary["outputs"] = [log_path, dcd_path, prefix + "_minimized.pdb", prefix + "_final.pdb"]
    if not args.no_plots and args.steps >= args.report_interval:
        summary["outputs"] += _plots(args, prefix, log_path, dcd_path, periodic)
    elif args.steps > 0 and args.steps < args.report_interval:
        print(f"e2former-md: note: no reports, DCD frames or plots: --steps {args.steps} is fewer than "
              f"--report-interval {args.report_interval}", file=sys.stderr)

    print("summary:")
    print(f"  initial potential energy   {summary['initial_energy']:.3f} kJ/mol")
    if "minimized_energy" in summary:
        print(f"  minimised potential energy {summary['minimized_energy']:.3f} kJ/mol "
              f"({summary['minimize_seconds']:.1f} s)")
    print(f"  final potential energy     {summary['final_potential_energy']:.3f} kJ/mol")
    print(f"  final kinetic energy       {summary['final_kinetic_energy']:.3f} kJ/mol "
          f"(T = {summary['final_temperature']:.1f} K)")
    if "final_density_g_cm3" in summary:
        print(f"  final box volume           {summary['final_volume_nm3']:.3f} nm^3 "
              f"(density {summary['final_density_g_cm3']:.4f} g/cm^3)")
    print(f"  MD: {args.steps} steps x {args.timestep} fs in {wall:.2f} s = {summary['ns_per_day']:.3f} ns/day")
    print(f"  outputs: {', '.join(summary['outputs'])}")
    return summary


def _plots(args, prefix: str, log_path: str, dcd_path: str, periodic: bool) -> List[str]:
    """Energy/temperature trace and (periodic runs with water) the O-O g(r), as PNG; a missing plotting
    package or a system without water skips a plot with a note instead of failing the run."""
    from . import analysis

    written = []
    try:
        written.append(analysis.plot_energy_trace(log_path, prefix + "_energy.png"))
    except ImportError as exc:
        print(f"e2former-md: note: no energy plot ({exc.name} not installed)", file=sys.stderr)
    if periodic:
        try:
            written.append(analysis.plot_water_rdf(dcd_path, prefix + "_final.pdb", prefix + "_rdf_OO.png",
                                                   args.rdf_reference))
        except ImportError as exc:
            print(f"e2former-md: note: no g(r) plot ({exc.name} not installed)", file=sys.stderr)
        except ValueError as exc:
            print(f"e2former-md: note: no g(r) plot ({exc})", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except CLIError as exc:
        print(f"e2former-md: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        # our plug-in and the model raise ValueError with a clear message for bad input (unsupported
        # element, unknown head, charge/multiplicity out of range, overlapping atoms ...)
        print(f"e2former-md: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "modelPath" in str(exc) or "default" in str(exc).lower() and "model" in str(exc).lower():
            print(f"e2former-md: error: {exc} (use --model PATH)", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
