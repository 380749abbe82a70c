"""Liquid-water NPT MD with the SO3LR teacher or an E2Former student; O-O g(r) and density analysis.

Run (writes DIR/traj.dcd, DIR/top.pdb, DIR/thermo.csv, DIR/summary.json, then DIR/analysis.{json,png}):

    python -m training.water_md --potential teacher --waters 600 --temperature 298 --minutes 8 \\
        --out runs/water_teacher --platform CUDA --device cuda
    python -m training.water_md --potential student --model runs/default/model.pt ... --out runs/water_student
    python -m training.water_md analyse DIR [--exp PATH] [--discard-ps 2]

Protocol
--------
1. A cubic box of ``--waters`` randomly oriented waters on a jittered grid at ``--density`` (0.997 g/cm^3),
   built with ``training.generate.build_water_box`` (amber14 + flexible TIP3P, PME).
2. Classical preparation on the OpenMM platform: energy minimisation, then ``--equil-ps`` of NVT Langevin
   MD with the classical force field (flexible water: ``rigidWater=False``, ``constraints=None``).
3. The classical forces are replaced by ONE ``openmm.PythonForce`` (teacher: ``training.teacher`` around
   SO3LR, nm -> Å, eV -> kJ/mol; student: ``openmm_e2former.force.create_python_force``), flagged periodic
   so that the barostat is allowed.  A ``HarmonicBondForce`` with force constant 0 on the O-H bonds adds no
   energy but tells OpenMM which atoms form a molecule: without it ``MonteCarloBarostat`` scales every atom
   independently (each atom its own "molecule"), stretching every O-H bond at every volume move.
4. NPT: ``MonteCarloBarostat`` (``--pressure`` 1 bar, T, every 25 steps), ``LangevinMiddleIntegrator``
   (T, 1/ps, ``--timestep-fs``), ``CMMotionRemover``.  Stops after ``--minutes`` of wall time or ``--ps`` of
   simulated time, whichever comes first.  A frame (DCD + CSV row) is written every ``--frame-fs`` (50 fs)
   and flushed at once, so a killed run still leaves a usable trajectory and CSV.

Hydrogen-mass repartitioning (``--hmass``, default 4 amu, 1.5 fs default time step): in classical
statistical mechanics the configurational distribution exp(-U/kT) does not depend on the masses (they only
enter the kinetic energy, which factorises out of the partition function).  Static equilibrium properties
(g(r), density: the barostat samples exp(-(U + PV)/kT) in configuration space) are therefore unchanged by
moving mass from O to H, while the fastest motion (O-H stretch) slows by ~sqrt(3) and allows a longer time
step.  Dynamics (diffusion, vibrational spectra) ARE changed: do not use such runs for them.  Each water
keeps its total mass (O gets 18.01528 - 2 hmass amu), so the density is unaffected.  The
justification is also written into summary.json.

Analysis: O-O g(r) with ``mdtraj.compute_rdf`` (minimum-image, up to min(10 Å, half the smallest box
length seen), 0.02 Å bins) after discarding ``--discard-ps`` of NPT; interpolated onto the experimental grid
(Skinner et al. 2013, X-ray, 0.01 Å) for the RMSE over 2.5 Å .. r_max; first-peak position/height
(parabolic refinement); the mlipaudit-style score |r_peak - 2.80 Å| + RMSE (pass mark <= 0.1, for a
500-water box at 295 K); density mean +- standard error by block averaging; simulated time and ns/day.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

AMU_G = 1.66053906660e-24            # g
NM3_CM3 = 1e-21                      # cm^3
KB_KJ = 0.0083144626181532           # kJ/mol/K
H_MASS_NATURAL = 1.007947
O_MASS_NATURAL = 15.99943
WATER_MASS = O_MASS_NATURAL + 2 * H_MASS_NATURAL   # 18.01532 amu (OpenMM element masses)
EXP_PEAK_R = 2.80                    # Å, Skinner 2013 first maximum

HMR_NOTE = ("Hydrogen-mass repartitioning: H mass set to {hmass} amu, O mass to {omass:.4f} amu (each water keeps "
            "{wm:.4f} amu). Configurational equilibrium averages (g(r), density) do not depend on the atomic "
            "masses in classical statistical mechanics (masses only enter the kinetic energy, which factorises "
            "out of the NPT partition function), so they are unchanged; dynamical properties (diffusion, "
            "spectra) are altered and must not be taken from this run.")


def _default_exp() -> Optional[str]:
    """$E2F_WATER_EXP, else shared/data/water_gOO_skinner2013.txt beside or inside the repository, else
    .carry/water_gOO_skinner2013.txt in the repository."""
    env = os.environ.get("E2F_WATER_EXP")
    if env and Path(env).exists():
        return env
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "shared" / "data" / "water_gOO_skinner2013.txt",
                 here / "shared" / "data" / "water_gOO_skinner2013.txt",
                 here / ".carry" / "water_gOO_skinner2013.txt"):
        if cand.exists():
            return str(cand)
    return None


# ----------------------------------------------------------------------------------------------- forces
class TeacherForceComputation:
    """PythonForce callable around ``training.teacher.SO3LRTeacher``: state (nm) -> (kJ/mol, kJ/mol/nm).

    Pickles only its settings (PythonForce pickles the callable); the teacher is built on first use."""

    _PICKLED = ("atomic_numbers", "charge", "device", "dtype", "lr_cutoff", "periodic")

    def __init__(self, atomic_numbers, charge: int = 0, device: str = "cpu", dtype: str = "float32",
                 lr_cutoff: float = 12.0, periodic: bool = True):
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        self.charge = int(charge)
        self.device = str(device)
        self.dtype = str(dtype)
        self.lr_cutoff = float(lr_cutoff)
        self.periodic = bool(periodic)
        self._teacher = None
        self._z = None
        self._cache = []          # [(positions, box, energy, forces)], the last two evaluations
        self.calls = 0
        self.cache_hits = 0
        self.seconds = 0.0

    def __getstate__(self):
        return {k: getattr(self, k) for k in self._PICKLED}

    def __setstate__(self, state):
        self.__init__(**state)

    def teacher(self):
        if self._teacher is None:
            import torch
            from .teacher import SO3LRTeacher
            self._teacher = SO3LRTeacher(self.device, self.dtype, lr_cutoff=self.lr_cutoff)
            self._z = torch.as_tensor(self.atomic_numbers, dtype=torch.long, device=self._teacher.device)
        return self._teacher

    def __call__(self, state):
        import torch
        from openmm_e2former.force import EV_PER_A_TO_KJ_PER_MOL_NM, EV_TO_KJ_PER_MOL
        t0 = time.perf_counter()
        t = self.teacher()
        pos = state.getPositions(asNumpy=True)
        pos = np.asarray(getattr(pos, "_value", pos), dtype=np.float64) * 10.0
        cell = None
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True)
            cell = np.asarray(getattr(box, "_value", box), dtype=np.float64) * 10.0
        # OpenMM asks again for identical coordinates (getState(getEnergy) after a step, then the next step;
        # a rejected barostat move restores the previous ones): the result is deterministic, reuse it.
        for cpos, ccell, ce, cf in self._cache:
            if np.array_equal(cpos, pos) and (cell is None or np.array_equal(ccell, cell)):
                self.cache_hits += 1
                return ce, cf.copy()
        e, f = t.energy_forces_tensors(self._z, torch.from_numpy(pos), None if cell is None else torch.from_numpy(cell),
                                       self.charge)
        forces = (f.to(torch.float64) * EV_PER_A_TO_KJ_PER_MOL_NM).cpu().numpy()
        energy = float(e) * EV_TO_KJ_PER_MOL
        if not (math.isfinite(energy) and np.all(np.isfinite(forces))):
            raise ValueError("SO3LR teacher returned a non-finite energy/forces: the simulation is unstable")
        self._cache = [(pos, cell, energy, forces)] + self._cache[:1]
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return energy, forces.copy()


def make_teacher_force(atomic_numbers, charge=0, device="cpu", dtype="float32", lr_cutoff=12.0):
    import openmm
    comp = TeacherForceComputation(atomic_numbers, charge, device, dtype, lr_cutoff, periodic=True)
    force = openmm.PythonForce(comp)
    force.setUsesPeriodicBoundaryConditions(True)
    force.setName("SO3LR")
    return force, comp


# ----------------------------------------------------------------------------------------------- setup
def repartition_masses(system, topology, hmass: float) -> float:
    """H -> hmass, O -> water mass - 2 hmass (waters only).  Returns the O mass."""
    from openmm import unit
    omass = WATER_MASS - 2.0 * hmass
    if omass <= 1.0:
        raise ValueError(f"--hmass {hmass} leaves no mass on oxygen")
    for atom in topology.atoms():
        if atom.residue.name != "HOH":
            continue
        m = hmass if atom.element.symbol == "H" else omass
        system.setParticleMass(atom.index, m * unit.amu)
    return omass


def ml_system(classical, topology, force, box_nm):
    """Masses of ``classical``, the ML force, zero-k O-H bonds (molecule definition for the barostat),
    CMMotionRemover; no classical forces."""
    import openmm
    s = openmm.System()
    for i in range(classical.getNumParticles()):
        s.addParticle(classical.getParticleMass(i))
    s.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box_nm])
    s.addForce(force)
    bonds = openmm.HarmonicBondForce()
    for a, b in topology.bonds():
        bonds.addBond(a.index, b.index, 0.09572, 0.0)
    bonds.setUsesPeriodicBoundaryConditions(True)
    bonds.setName("molecule-definition (k = 0)")
    bonds.setForceGroup(31)
    s.addForce(bonds)
    s.addForce(openmm.CMMotionRemover())
    return s


def _platform(name: Optional[str], threads: int):
    import openmm
    if name is None:
        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        name = "CUDA" if "CUDA" in names else "CPU"
    plat = openmm.Platform.getPlatformByName(name)
    props = {"Threads": str(threads)} if name == "CPU" else {}
    if name == "CUDA":
        props = {"Precision": "mixed"}
    return plat, props


def density_g_cm3(total_mass_amu: float, volume_nm3: float) -> float:
    return total_mass_amu * AMU_G / (volume_nm3 * NM3_CM3)


# ----------------------------------------------------------------------------------------------- run
def model_sha256(path) -> str:
    """First 16 hex digits of the sha256 of a model file: what resumed runs check they continue with."""
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _classical_prep(built, box_nm, T, dt_fs, seed, plat, props, equil_ps):
    """Minimised and classically equilibrated (NVT) positions and velocities of the water box."""
    import openmm
    from openmm import unit

    integ = openmm.LangevinMiddleIntegrator(T, 1.0 / unit.picosecond, min(dt_fs, 1.0) * unit.femtosecond)
    integ.setRandomNumberSeed(seed % (2**31 - 1))
    built.system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box_nm])
    ctx = openmm.Context(built.system, integ, plat, props)
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box_nm])
    ctx.setPositions(built.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 2000)
    ctx.setVelocitiesToTemperature(T, seed % (2**31 - 1))
    n_eq = int(round(equil_ps * 1000.0 / min(dt_fs, 1.0)))
    t0 = time.time()
    integ.step(n_eq)
    st = ctx.getState(getPositions=True, getVelocities=True)
    print(f"[water_md] classical: minimised + {n_eq} NVT steps ({equil_ps} ps) in {time.time() - t0:.1f} s",
          flush=True)
    return st.getPositions(asNumpy=True), st.getVelocities(asNumpy=True)


def run(args) -> Dict:
    import openmm
    import torch
    from openmm import app, unit
    from .generate import build_water_box, stable_seed

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    deadline = t_start + 60.0 * args.minutes
    seed = args.seed if args.seed is not None else stable_seed("water_md", args.waters, args.temperature)
    T = args.temperature * unit.kelvin
    dt_fs = args.timestep_fs

    # 1. box ---------------------------------------------------------------------------------------
    built = build_water_box(args.waters, args.density, seed)
    topology = built.topology
    box_nm = np.asarray(built.box, dtype=np.float64)
    z = np.asarray(built.z, dtype=np.int64)
    n_atoms = len(z)
    omass = repartition_masses(built.system, topology, args.hmass)
    total_mass = sum(built.system.getParticleMass(i).value_in_unit(unit.amu) for i in range(n_atoms))
    plat, props = _platform(args.platform, args.omm_threads)
    print(f"[water_md] {args.waters} waters ({n_atoms} atoms), L = {box_nm[0, 0] * 10:.2f} Å, "
          f"platform {plat.getName()}, potential {args.potential}, device {args.device}", flush=True)

    stride = max(1, int(round(args.frame_fs / dt_fs)))       # MD steps per frame
    # resuming (--resume): the saved NPT state of an earlier call replaces the classical preparation
    prev = None
    if getattr(args, "resume", False) and (out / "state.xml").exists() and (out / "summary.json").exists():
        prev = json.loads((out / "summary.json").read_text())
        if (prev.get("potential"), prev.get("waters"), prev.get("timestep_fs"), prev.get("frame_every_fs")) \
                != (args.potential, args.waters, dt_fs, stride * dt_fs):
            raise SystemExit(f"--resume: {out} holds a different run (potential, waters, timestep or frame "
                             "interval differ); use another --out")
        seed = prev["seed"]

    # 2. classical minimisation + NVT ----------------------------------------------------------------
    if prev is not None:
        pos0 = vel0 = None
        print(f"[water_md] resuming from {out / 'state.xml'} at {prev.get('simulated_ps', 0.0):.3f} ps", flush=True)
    else:
        pos0, vel0 = _classical_prep(built, box_nm, T, dt_fs, seed, plat, props, args.equil_ps)

    # 3. ML system --------------------------------------------------------------------------------------
    if args.potential == "teacher":
        force, comp = make_teacher_force(z, 0, args.device, args.dtype, args.lr_cutoff)
        pot_desc = {"potential": "teacher", "teacher": "SO3LR (training.teacher.SO3LRTeacher)", "dtype": args.dtype,
                    "r_max_lr": args.lr_cutoff}
    else:
        from openmm_e2former.force import create_python_force
        if not args.model:
            raise SystemExit("--potential student needs --model PATH")
        force = create_python_force(z.tolist(), model_path=args.model, config=args.config, periodic=True,
                                    device=args.device,
                                    precision=None if args.dtype == "float32" else "double")
        comp = None
        pot_desc = {"potential": "student", "model": os.path.abspath(args.model), "dtype": args.dtype,
                    "model_sha256": model_sha256(args.model)}
        if prev is not None and prev.get("model_sha256") not in (None, pot_desc["model_sha256"]):
            raise SystemExit(f"--resume: {out} was run with another model file (sha256 {prev['model_sha256']}); "
                             "use another --out")
    system = ml_system(built.system, topology, force, box_nm)
    baro = openmm.MonteCarloBarostat(args.pressure * unit.bar, T, args.barostat_every)
    segment = 0 if prev is None else int(prev.get("segments", 1))     # a new noise stream per call
    baro.setRandomNumberSeed((seed + 1 + 7919 * segment) % (2**31 - 1))
    system.addForce(baro)
    integ = openmm.LangevinMiddleIntegrator(T, args.friction / unit.picosecond, dt_fs * unit.femtosecond)
    integ.setRandomNumberSeed((seed + 2 + 7919 * segment) % (2**31 - 1))
    ctx = openmm.Context(system, integ, plat, props)
    if prev is None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box_nm])
        ctx.setPositions(pos0)
        ctx.setVelocities(vel0)
    else:
        ctx.setState(openmm.XmlSerializer.deserialize((out / "state.xml").read_text()))
    n_dof = 3 * n_atoms - 3

    max_steps = int(round(args.ps * 1000.0 / dt_fs)) if args.ps else None
    if prev is None:
        with open(out / "top.pdb", "w") as fh:
            topology.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box_nm] * unit.nanometer)
            app.PDBFile.writeFile(topology, pos0, fh)
    summary = {
        "status": "running", "waters": args.waters, "atoms": n_atoms, "temperature_K": args.temperature,
        "pressure_bar": args.pressure, "timestep_fs": dt_fs, "friction_per_ps": args.friction,
        "barostat_every": args.barostat_every, "frame_every_steps": stride, "frame_every_fs": stride * dt_fs,
        "hmass_amu": args.hmass, "omass_amu": omass, "total_mass_amu": total_mass,
        "hmr_justification": HMR_NOTE.format(hmass=args.hmass, omass=omass, wm=WATER_MASS),
        "initial_density_g_cm3": density_g_cm3(total_mass, float(np.prod(np.diag(box_nm)))),
        "classical_prep": {"forcefield": "amber14 + flexible TIP3P (rigidWater=False, constraints=None), PME",
                           "minimise": "LocalEnergyMinimizer tol 10 kJ/mol/nm", "nvt_ps": args.equil_ps,
                           "timestep_fs": min(dt_fs, 1.0)},
        "platform": plat.getName(), "device": args.device, "seed": seed, **pot_desc,
        "minutes_limit": args.minutes, "ps_limit": args.ps,
    }
    if prev is not None:            # the first call's description stays; the counters continue
        summary = dict(prev, status="running", minutes_limit=args.minutes, ps_limit=args.ps, **pot_desc)
    _write_json(out / "summary.json", summary)

    # 4. NPT production ---------------------------------------------------------------------------------
    steps0 = 0 if prev is None else int(prev["steps"])
    frames0 = 0 if prev is None else int(prev["frames"])
    wall0 = 0.0 if prev is None else float(prev.get("md_wall_s", 0.0))
    if prev is None:
        dcd_fh = open(out / "traj.dcd", "wb")
        dcd = app.DCDFile(dcd_fh, topology, dt_fs * unit.femtosecond, 0, stride)
        csv_fh = open(out / "thermo.csv", "w", newline="")
        wr = csv.writer(csv_fh)
        wr.writerow(["step", "time_ps", "potential_kJ_mol", "temperature_K", "volume_nm3", "density_g_cm3",
                     "wall_s"])
    else:
        dcd_fh = open(out / "traj.dcd", "r+b")
        dcd = app.DCDFile(dcd_fh, topology, dt_fs * unit.femtosecond, 0, stride, append=True)
        csv_fh = open(out / "thermo.csv", "a", newline="")
        wr = csv.writer(csv_fh)
    csv_fh.flush()
    steps, frames, last_print = steps0, frames0, 0.0
    t_md = time.time() - wall0
    reason = "minutes"
    first_step_s = None
    while True:
        if time.time() >= deadline:
            reason = "minutes"
            break
        if max_steps is not None and steps >= max_steps:   # --ps counts the whole run, all calls together
            reason = "ps"
            break
        n = stride if max_steps is None else min(stride, max_steps - steps)
        t_chunk = time.time()
        integ.step(n)
        steps += n
        if first_step_s is None:
            first_step_s = time.time() - t_chunk
        st = ctx.getState(getPositions=True, getEnergy=True, enforcePeriodicBox=True)
        box = st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        vol = float(abs(np.linalg.det(box)))
        epot = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        ekin = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        temp = 2.0 * ekin / (n_dof * KB_KJ)
        rho = density_g_cm3(total_mass, vol)
        if not (math.isfinite(epot) and math.isfinite(temp)):
            reason = "non-finite energy"
            break
        dcd.writeModel(st.getPositions(), periodicBoxVectors=st.getPeriodicBoxVectors())
        dcd_fh.flush()
        wr.writerow([steps, round(steps * dt_fs / 1000.0, 6), round(epot, 4), round(temp, 3), round(vol, 6),
                     round(rho, 6), round(time.time() - t_md, 3)])
        csv_fh.flush()
        frames += 1
        now = time.time()
        if now - last_print >= args.print_every_s or frames == 1:
            ps = steps * dt_fs / 1000.0
            nsd = ps / 1000.0 / max(now - t_md, 1e-9) * 86400.0
            print(f"[water_md] {ps:8.3f} ps  step {steps:7d}  Epot {epot:14.2f} kJ/mol  T {temp:6.1f} K  "
                  f"rho {rho:.4f} g/cm3  {steps / max(now - t_md, 1e-9):6.2f} steps/s  {nsd:.3f} ns/day", flush=True)
            last_print = now
    if reason != "non-finite energy":   # the state to continue from (--resume)
        tmp = out / "state.xml.tmp"
        tmp.write_text(openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True,
                                                                   enforcePeriodicBox=True)))
        os.replace(tmp, out / "state.xml")
    wall = time.time() - t_md
    dcd_fh.close()
    csv_fh.close()
    ps = steps * dt_fs / 1000.0
    summary.update(status="done", stop_reason=reason, steps=steps, frames=frames, simulated_ps=ps,
                   md_wall_s=round(wall, 2), total_wall_s=round(time.time() - t_start, 2),
                   steps_per_s=steps / wall if wall > 0 else None,
                   ns_per_day=ps / 1000.0 / wall * 86400.0 if wall > 0 else None,
                   first_chunk_s=first_step_s, segments=segment + 1)
    if comp is not None and comp.calls:
        summary["teacher_calls"] = comp.calls
        summary["teacher_cache_hits"] = comp.cache_hits
        summary["teacher_ms_per_call"] = 1000.0 * comp.seconds / comp.calls
    _write_json(out / "summary.json", summary)
    print(f"[water_md] stopped ({reason}): {steps} steps, {ps:.3f} ps, {frames} frames in {wall:.1f} s "
          f"({summary['ns_per_day'] or 0:.3f} ns/day)", flush=True)
    return summary


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- analysis
def load_exp(path: str):
    a = np.loadtxt(path, comments="#")
    return a[:, 0], a[:, 1]


def block_average(x: np.ndarray, min_blocks: int = 4):
    """Mean and standard error by block averaging (Flyvbjerg-Petersen): the SE estimate is taken as the
    largest one over block sizes 1, 2, 4, ... that still give >= ``min_blocks`` blocks."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), 1
    best, bsize, size = 0.0, 1, 1
    y = x.copy()
    while len(y) >= min_blocks:
        se = float(np.std(y, ddof=1) / math.sqrt(len(y)))
        if se >= best:
            best, bsize = se, size
        m = len(y) // 2
        y = 0.5 * (y[: 2 * m: 2] + y[1: 2 * m: 2])
        size *= 2
    return mean, best, bsize


def first_peak(r: np.ndarray, g: np.ndarray, lo: float = 2.4, hi: float = 3.3):
    m = (r >= lo) & (r <= hi)
    if not m.any():
        return float("nan"), float("nan")
    idx = np.flatnonzero(m)
    k = idx[int(np.argmax(g[idx]))]
    if 0 < k < len(r) - 1:
        y0, y1, y2 = g[k - 1], g[k], g[k + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            d = 0.5 * (y0 - y2) / den
            h = r[k + 1] - r[k]
            return float(r[k] + d * h), float(y1 - 0.25 * (y0 - y2) * d)
    return float(r[k]), float(g[k])


def analyse(run_dir: str, exp: Optional[str] = None, discard_ps: Optional[float] = None, r_max_A: float = 10.0,
            bin_A: float = 0.02, png: bool = True) -> Dict:
    import mdtraj as md
    d = Path(run_dir)
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    rows = list(csv.DictReader(open(d / "thermo.csv")))
    t = np.array([float(r["time_ps"]) for r in rows])
    rho = np.array([float(r["density_g_cm3"]) for r in rows])
    epot = np.array([float(r["potential_kJ_mol"]) for r in rows])
    wall = np.array([float(r["wall_s"]) for r in rows])
    steps = np.array([int(r["step"]) for r in rows])
    temp = np.array([float(r["temperature_K"]) for r in rows])
    if len(t) == 0:
        raise RuntimeError(f"{d}: no frames in thermo.csv")
    total_ps = float(t[-1])
    if discard_ps is None:
        discard_ps = min(2.0, 0.25 * total_ps)   # default: 2 ps, or a quarter of a short run
    # The run writes traj.dcd; a committed copy may be the same frames as a (smaller) XTC.
    traj_file = d / "traj.dcd" if (d / "traj.dcd").exists() else d / "traj.xtc"
    traj = md.load(str(traj_file), top=str(d / "top.pdb"))
    nf = min(traj.n_frames, len(t))
    traj = traj[:nf]
    keep = np.flatnonzero(t[:nf] > discard_ps)
    warn = []
    if len(keep) < 2:
        warn.append(f"fewer than 2 frames after discarding {discard_ps} ps: using the last half of the run")
        keep = np.arange(nf // 2, nf)
    sub = traj[keep]
    lengths = sub.unitcell_lengths  # nm
    half_box_A = float(lengths.min()) * 10.0 / 2.0
    r_hi = min(r_max_A, half_box_A)
    if r_hi < r_max_A:
        warn.append(f"g(r) only up to half the smallest box length, {half_box_A:.2f} Å (< {r_max_A} Å)")
    oxy = sub.topology.select("name O")
    pairs = sub.topology.select_pairs(oxy, oxy)
    n_bins = int(round(r_hi / bin_A))
    r_nm, g = md.compute_rdf(sub, pairs, r_range=(0.0, n_bins * bin_A / 10.0), n_bins=n_bins, periodic=True)
    r = r_nm * 10.0
    res = {"run_dir": str(d), "frames_total": int(nf), "frames_used": int(len(keep)), "discard_ps": discard_ps,
           "simulated_ps": total_ps, "analysed_ps": float(t[keep[-1]] - t[keep[0]]) if len(keep) > 1 else 0.0,
           "run_status": summary.get("status"),
           # from the CSV (also valid for a run that was killed or is still going)
           "ns_per_day": float(t[-1] / 1000.0 / wall[-1] * 86400.0) if wall[-1] > 0 else None,
           "steps_per_s": float(steps[-1] / wall[-1]) if wall[-1] > 0 else None,
           "potential": summary.get("potential"), "waters": summary.get("waters"),
           "temperature_K_target": summary.get("temperature_K"),
           "g_r_max_A": r_hi, "bin_A": bin_A, "warnings": warn}
    pk_r, pk_g = first_peak(r, g)
    res.update(peak1_r_A=pk_r, peak1_g=pk_g)
    rho_mean, rho_se, rho_block = block_average(rho[keep])
    res.update(density_mean_g_cm3=rho_mean, density_se_g_cm3=rho_se, density_block_frames=rho_block,
               density_std_g_cm3=float(np.std(rho[keep], ddof=1)) if len(keep) > 1 else float("nan"),
               temperature_mean_K=float(temp[keep].mean()), potential_mean_kJ_mol=float(epot[keep].mean()),
               density_exp_g_cm3=0.99705)
    if exp is None:
        exp = _default_exp()
    re = ge = None
    if exp and Path(exp).exists():
        re, ge = load_exp(exp)
        lo = 2.5
        m = (re >= lo) & (re <= r_hi - 0.5 * bin_A)
        g_i = np.interp(re[m], r, g)
        rmse = float(np.sqrt(np.mean((g_i - ge[m]) ** 2))) if m.any() else float("nan")
        epk_r, epk_g = first_peak(re, ge)
        res.update(exp_file=str(exp), rmse_range_A=[lo, float(re[m][-1]) if m.any() else lo], rmse_vs_exp=rmse,
                   exp_peak1_r_A=epk_r, exp_peak1_g=epk_g, peak1_shift_A=pk_r - EXP_PEAK_R,
                   score_peak_shift_plus_rmse=abs(pk_r - EXP_PEAK_R) + rmse)
    else:
        warn.append("no experimental g(r) file: RMSE not computed")
    np.savetxt(d / "gOO.txt", np.column_stack([r, g]), header="r_A g_OO", fmt="%.4f")
    _write_json(d / "analysis.json", res)
    if png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        ax[0].plot(r, g, label=f"{res.get('potential') or 'run'} ({res['frames_used']} frames)")
        if re is not None:
            ax[0].plot(re, ge, "k--", lw=1, label="exp. (Skinner 2013)")
        ax[0].set_xlim(0, max(r_max_A, r_hi))
        ax[0].set_xlabel("r (Å)")
        ax[0].set_ylabel("g_OO(r)")
        title = f"peak {pk_r:.2f} Å / {pk_g:.2f}"
        if "rmse_vs_exp" in res:
            title += f", RMSE {res['rmse_vs_exp']:.3f}"
        ax[0].set_title(title)
        ax[0].legend()
        ax[1].plot(t, rho, lw=1)
        ax[1].axvline(discard_ps, color="gray", ls=":")
        ax[1].axhline(0.99705, color="k", ls="--", lw=1)
        ax[1].set_xlabel("t (ps)")
        ax[1].set_ylabel("density (g/cm³)")
        ax[1].set_title(f"{rho_mean:.4f} ± {rho_se:.4f} g/cm³")
        fig.tight_layout()
        fig.savefig(d / "analysis.png", dpi=110)
        plt.close(fig)
    print(json.dumps({k: v for k, v in res.items() if k not in ("run_dir",)}, default=float), flush=True)
    return res


# ----------------------------------------------------------------------------------------------- CLI
def _run_parser():
    ap = argparse.ArgumentParser(prog="python -m training.water_md", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--potential", choices=["teacher", "student"], default="teacher")
    ap.add_argument("--model", help="student model file (save_model / official checkpoint)")
    ap.add_argument("--config", help="config.yaml for an official-format student checkpoint")
    ap.add_argument("--waters", type=int, default=600)
    ap.add_argument("--density", type=float, default=0.997, help="initial density, g/cm^3")
    ap.add_argument("--temperature", type=float, default=298.0)
    ap.add_argument("--pressure", type=float, default=1.0, help="bar")
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-time limit of the NPT part")
    ap.add_argument("--ps", type=float, default=None, help="simulated-time limit of the NPT part")
    ap.add_argument("--out", required=True)
    ap.add_argument("--platform", default=None, help="OpenMM platform (default CUDA if present, else CPU)")
    ap.add_argument("--device", default=None, help="torch device of the potential (default cuda if present)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--timestep-fs", type=float, default=1.5)
    ap.add_argument("--hmass", type=float, default=4.0, help="hydrogen mass (amu); 1.008 = no repartitioning")
    ap.add_argument("--friction", type=float, default=1.0, help="1/ps")
    ap.add_argument("--barostat-every", type=int, default=25)
    ap.add_argument("--frame-fs", type=float, default=50.0)
    ap.add_argument("--equil-ps", type=float, default=2.0, help="classical NVT before the ML NPT run")
    ap.add_argument("--lr-cutoff", type=float, default=12.0, help="teacher r_max_lr (Å)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--omm-threads", type=int, default=1, help="OpenMM CPU-platform threads")
    ap.add_argument("--print-every-s", type=float, default=20.0)
    ap.add_argument("--exp", default=None, help="experimental g_OO file (default: shared/data/...)")
    ap.add_argument("--discard-ps", type=float, default=None)
    ap.add_argument("--no-analyse", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its saved state (state.xml), appending to traj.dcd and "
                         "thermo.csv; --ps counts the whole run. Without a saved state: a fresh run")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("analyse", "analyze"):
        ap = argparse.ArgumentParser(prog="python -m training.water_md analyse")
        ap.add_argument("run_dir")
        ap.add_argument("--exp", default=None)
        ap.add_argument("--discard-ps", type=float, default=None)
        ap.add_argument("--r-max", type=float, default=10.0, help="Å")
        ap.add_argument("--bin", type=float, default=0.02, help="Å")
        a = ap.parse_args(argv[1:])
        analyse(a.run_dir, a.exp, a.discard_ps, a.r_max, a.bin)
        return 0
    if argv and argv[0] == "run":
        argv = argv[1:]
    args = _run_parser().parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    run(args)
    if not args.no_analyse:
        analyse(args.out, args.exp, args.discard_ps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
