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

``--engine batched`` (``run_batched``): the systems of a part run TOGETHER in one process, with ONE model call
per MD step over the disjoint union of their graphs (``training.train.predict_batch``) instead of one OpenMM
context per system (the small model per system is launch-bound on a GPU).  Each system is built and relaxed
classically as above (OpenMM, ``--platform``, CPU by default), then all are integrated by a Langevin BAOAB
integrator (the scheme and units of ``training.active.student_md``: Å, fs, amu, eV) whose state (float64)
lives on the model's device; every system has its own random generator, so its trajectory does not depend on
the batch it runs in.  There is no ML energy minimisation before MD (``run_one`` does 100 iterations with the
model), so the reference bond lengths are those of the classical minimum.  The checks are those of
``run_one`` (every ``--check-fs``; non-finite energies/forces are caught at every step); a failing system
stops and its record is written at once while the others continue.  ``--minutes`` is the wall-time limit of
the WHOLE batch (building included); when it is reached (or on SIGTERM / Ctrl-C) every unfinished system gets
a record with the ps reached so far.

    python -m training.stability --engine batched --model runs/default/model.pt --out stab.jsonl --ps 50 \\
        --device cuda --minutes 9 --part 0/2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .active import EV_PER_AMU_A_TO_A_PER_FS2, KB_EV   # (eV/Å)/amu in Å/fs^2; eV/K

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
BOND_RANGE = (0.7, 1.4)
MAX_TEMP_FACTOR = 2.0
_now = time.time   # the clock of the batched engine (tests replace it)


def repartition_hydrogens(system, topology, hmass: float) -> int:
    """Set every hydrogen bonded to a heavy atom to ``hmass`` amu, taking the difference from that atom.
    Returns the number of hydrogens changed.  Total mass of every molecule is unchanged.  (The same function
    as ``e2former-md --hydrogen-mass``.)"""
    from openmm_e2former.cli import repartition_hydrogen_mass
    return repartition_hydrogen_mass(system, topology, hmass)


def _relaxed_solvated(letter: str, seed: int, box_nm: float, platform: Optional[str], threads: int):
    """ACE-X-NME in water (``build_capped``) relaxed with the classical force field (LocalEnergyMinimizer), as
    the training data were sampled: (Built, bond index pairs [B, 2] of its HarmonicBondForce (solute and water
    O-H), relaxed positions [N, 3] in Å)."""
    import openmm
    from openmm import unit
    from .generate import build_capped
    from .water_md import _platform

    b = build_capped(letter, None, True, seed, box_nm)
    bonds = []
    for f in b.system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            bonds += [f.getBondParameters(i)[:2] for i in range(f.getNumBonds())]
    plat, props = _platform(platform, threads)
    b.system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b.box])
    ctx0 = openmm.Context(b.system, openmm.VerletIntegrator(0.0005), plat, props)
    ctx0.setPositions(b.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx0, 10.0, 1000)
    pos0 = ctx0.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    del ctx0
    return b, np.array(bonds, dtype=np.int64).reshape(-1, 2), np.asarray(pos0, dtype=np.float64)


def _model_hash(model: Optional[str]) -> str:
    """``water_md.model_sha256`` of the model file (None: the bundled one)."""
    from .water_md import model_sha256
    if model is None:
        from openmm_e2former import default_model_path
        model = str(default_model_path())
    return model_sha256(model)


def run_one(model: str, letter: str, ps: float, minutes: float, device: str, platform: Optional[str],
            timestep_fs: float = 1.5, hmass: float = 4.0, temperature: float = 300.0, check_fs: float = 150.0,
            seed: int = 0, box_nm: float = 2.0, state_dir: Optional[str] = None) -> Dict:
    """One solvated capped amino acid (see the module docstring); the record of ``main``.

    ``state_dir``: resumable runs.  A run stopped by ``minutes`` (stable, not yet at ``ps``) saves its OpenMM
    System, state and progress (steps, worst bond ratio, highest temperature, reference bond lengths, model
    hash) there as ``ACE-<letter>.system.xml`` / ``.xml`` / ``.json``, and its record says
    ``"resumable": true``; the next call with the same ``state_dir`` continues from it (new Langevin noise seed
    per segment) instead of starting again.  A completed or failed run removes its state files."""
    import openmm
    from openmm import unit
    from openmm_e2former.force import create_python_force
    from .water_md import _platform, ml_system

    t_start = time.time()
    xml_path = json_path = sys_path = prog = mhash = None
    if state_dir:
        mhash = _model_hash(model)
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        xml_path, json_path, sys_path = (Path(state_dir) / f"ACE-{letter}{ext}"
                                         for ext in (".xml", ".json", ".system.xml"))
        if xml_path.exists() and json_path.exists() and sys_path.exists():
            prog = json.loads(json_path.read_text())
            if (prog.get("timestep_fs"), prog.get("hmass_amu"), prog.get("model_sha256")) != \
                    (timestep_fs, hmass, mhash):
                raise ValueError(f"{json_path}: saved with timestep {prog.get('timestep_fs')} fs, hmass "
                                 f"{prog.get('hmass_amu')}, model {prog.get('model_sha256')}; asked {timestep_fs}, "
                                 f"{hmass}, {mhash}")
    plat, props = _platform(platform, 1)
    if prog is None:
        b, bi, pos0_A = _relaxed_solvated(letter, seed, box_nm, platform, 1)
        pos0 = pos0_A / 10.0
        force = create_python_force(list(map(int, b.z)), model, periodic=True, device=device, charge=int(b.charge))
        sysm = ml_system(b.system, b.topology, force, b.box)
        n_h = repartition_hydrogens(sysm, b.topology, hmass) if hmass > 0 else 0
        charge, box = int(b.charge), b.box
    else:
        # the saved System itself: no rebuild or classical relaxation, and immune to later changes of the builder
        sysm = openmm.XmlSerializer.deserialize(sys_path.read_text())
        bi = np.asarray(prog["bonds"], dtype=np.int64).reshape(-1, 2)
        n_h, charge = int(prog["hydrogens_repartitioned"]), int(prog["charge"])
    integ = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, 1 / unit.picosecond,
                                            timestep_fs * unit.femtosecond)
    segment = 0 if prog is None else int(prog["segments"])
    integ.setRandomNumberSeed(seed + 11 + 7919 * segment)
    ctx = openmm.Context(sysm, integ, plat, props)
    if prog is None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
        ctx.setPositions(pos0)
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 100)
        ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 12)
        p0 = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        d0 = np.linalg.norm(p0[bi[:, 0]] - p0[bi[:, 1]], axis=1)
        done, worst, t_max, wall_before = 0, 1.0, 0.0, 0.0
    else:
        ctx.setState(openmm.XmlSerializer.deserialize(xml_path.read_text()))
        d0 = np.asarray(prog["bond_ref_A"], dtype=np.float64)
        done, worst, t_max, wall_before = (int(prog["steps"]), float(prog["worst_bond_ratio"]),
                                           float(prog["max_temperature_K"]), float(prog["md_wall_s"]))
    n_atoms = sysm.getNumParticles()
    dof = 3 * n_atoms - 3
    chunk = max(1, int(round(check_fs / timestep_fs)))
    steps_total = int(math.ceil(ps * 1000.0 / timestep_fs - 1e-9))   # at least ps (50 ps / 1.5 fs: 33,334 steps)
    deadline = time.time() + 60.0 * minutes
    ok, reason = True, ""
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
    wall_md = time.time() - t_md + wall_before
    sim_ps = done * timestep_fs / 1000.0
    completed = ok and done >= steps_total
    resumable = bool(state_dir) and ok and not completed
    if resumable:
        if prog is None:
            sys_path.write_text(openmm.XmlSerializer.serialize(sysm))
        tmp = xml_path.with_suffix(".xml.tmp")
        tmp.write_text(openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True)))
        os.replace(tmp, xml_path)
        json_path.write_text(json.dumps(dict(steps=done, worst_bond_ratio=worst, max_temperature_K=t_max,
                                             md_wall_s=wall_md, segments=segment + 1, timestep_fs=timestep_fs,
                                             hmass_amu=hmass, bond_ref_A=d0.tolist(), bonds=bi.tolist(),
                                             hydrogens_repartitioned=n_h, charge=charge,
                                             model_sha256=mhash)))
    elif state_dir:
        for f in (xml_path, json_path, sys_path):
            if f.exists():
                f.unlink()
    if resumable and not reason:
        reason = f"wall-time limit at {sim_ps:.4f} ps (state saved: resumable)"
    rec = {"system": f"ACE-{letter}-NME (water)", "letter": letter, "atoms": n_atoms, "charge": charge,
           "ps": sim_ps, "target_ps": ps, "stable": ok, "completed": completed,
           "worst_bond_ratio": worst, "max_temperature_K": t_max, "reason": reason,
           "timestep_fs": timestep_fs, "hmass_amu": hmass, "hydrogens_repartitioned": n_h,
           "temperature_K": temperature, "ns_per_day": sim_ps * 1e-3 / max(wall_md, 1e-9) * 86400.0,
           "wall_s": time.time() - t_start, "device": device}
    if state_dir:
        rec.update(resumable=resumable, segments=segment + 1)
    return rec


# ----------------------------------------------------------------------------------------------- batched engine
def _min_image(d: np.ndarray, cell: Optional[np.ndarray]) -> np.ndarray:
    """Minimum-image vectors ``d`` [..., 3] (Å) in the periodic ``cell`` (rows = box vectors; None: as is)."""
    if cell is None:
        return d
    frac = d @ np.linalg.inv(cell)
    return (frac - np.round(frac)) @ cell


def _bond_lengths(x: np.ndarray, bonds: np.ndarray, cell: Optional[np.ndarray]) -> np.ndarray:
    return np.linalg.norm(_min_image(x[bonds[:, 1]] - x[bonds[:, 0]], cell), axis=1)


def _model_forces(model, systems: Sequence[dict], idx: Sequence[int], x, sizes: Sequence[int]):
    """(energies [B] float64, forces [sum N, 3] float64) of systems ``idx`` at flat positions ``x``, on the
    model's device, in ONE model call (``train.batch_energy_forces``)."""
    from .train import batch_energy_forces
    e, forces = batch_energy_forces(model, [systems[i] for i in idx], x.split(list(sizes)))
    return e, torch.cat(forces)


def _forces_guarded(model, systems, idx, x, sizes):
    """``_model_forces`` of the batch; if the batch call raises, each system alone: (e, f, {i: error}) with
    zero forces / NaN energy for the systems that raised (they are stopped by the caller)."""
    try:
        e, f = _model_forces(model, systems, idx, x, sizes)
        return e, f, {}
    except Exception as exc:   # noqa: BLE001 - find the culprit(s), the others continue
        if len(idx) == 1:
            return (torch.full((1,), float("nan"), dtype=torch.float64, device=x.device), torch.zeros_like(x),
                    {idx[0]: f"{type(exc).__name__}: {str(exc)[:160]}"})
    es, fs, errors = [], [], {}
    for i, xi, n in zip(idx, x.split(list(sizes)), sizes):
        try:
            e, f = _model_forces(model, systems, [i], xi, [n])
        except Exception as exc:   # noqa: BLE001
            errors[i] = f"{type(exc).__name__}: {str(exc)[:160]}"
            e, f = torch.full((1,), float("nan"), dtype=torch.float64, device=x.device), torch.zeros_like(xi)
        es.append(e)
        fs.append(f)
    return torch.cat(es), torch.cat(fs), errors


class _Interrupted(Exception):
    """SIGTERM during ``run_batched``."""


def integrate_batched(model, systems: Sequence[dict], steps, timestep_fs: float = 1.5,
                      temperature: float = 300.0, friction_per_fs: float = 0.001, check_every: int = 100,
                      deadline: Optional[float] = None, seeds=0, on_done=None, graphed: bool = False) -> List[Dict]:
    """Langevin BAOAB MD of many systems with ONE model call per step over all still-running systems.

    ``systems``: dicts with ``z`` (ints [N]), ``pos0`` (Å [N, 3]), ``masses`` (amu [N]), ``cell`` (Å [3, 3],
    periodic in all directions; None: gas phase), ``charge``, optionally ``multiplicity`` (1), ``bonds`` (int
    [B, 2], the covalent bonds to check) and ``bond_ref`` (Å [B]: their reference lengths; default: the lengths
    at ``pos0``).  The state (x, v, f; float64) lives on the model's device as flat tensors over the running
    systems; each system has its own ``torch.Generator(seed)`` (``seeds``: one for all or one per system) and
    is updated in ``training.active.student_md``'s order, so its trajectory is the one it gets alone (to the
    float rounding of the forces).  Friction ``friction_per_fs`` (1/fs).

    Checks, as ``run_one``: at every step finite energy and forces; every ``check_every`` steps (and at the
    last step / the wall-time stop) the kinetic temperature (dof 3N - 3) below 2x ``temperature`` and every bond
    within 0.7-1.4x its reference length (minimum-image vectors).  A failing system stops, the others continue.
    Stops at ``steps`` or when ``_now()`` passes ``deadline`` (then the current state is checked once more).

    ``steps``: one number for all systems or one per system (a system that reaches its own is checked and
    finished as completed while the others go on).  A system dict may hold ``vel0`` (Å/fs [N, 3]): the
    starting velocities (a resumed run) instead of a Maxwell-Boltzmann draw.

    ``graphed``: the forces from ``openmm_e2former.graphed.BatchedGraphedEnergyForces`` (one padded call with
    the neighbour list inside, a CUDA graph on CUDA; rebuilt when the set of running systems changes) instead
    of ``train.batch_energy_forces`` (one neighbour search and host syncs per system and step).  Needs gas-phase
    systems or orthorhombic boxes with edges longer than 2 cutoffs.  If a graphed call raises, the step is
    recomputed system by system to find the culprit, as without it.

    Returns one dict per system (``steps`` verified, ``ps``, ``stable``, ``completed``, ``reason``,
    ``worst_bond_ratio``, ``max_temperature_K``, ``end``: completed / failed / time / interrupted, ``wall_md_s``,
    and the state when it finished: ``positions`` Å, ``velocities`` Å/fs, float64 numpy); ``on_done(i, res)``
    is called as soon as system i is finished.  On an exception (Ctrl-C, SIGTERM) every running system is
    finished as ``interrupted`` (with the steps of its last passed check) before it propagates."""
    ns = len(systems)
    seeds_ = [int(s) for s in (seeds if isinstance(seeds, (list, tuple, np.ndarray)) else [seeds] * ns)]
    if len(seeds_) != ns:
        raise ValueError(f"{ns} systems but {len(seeds_)} seeds")
    targets = [int(t) for t in (steps if isinstance(steps, (list, tuple, np.ndarray)) else [steps] * ns)]
    if len(targets) != ns:
        raise ValueError(f"{ns} systems but {len(targets)} step targets")
    dev = model.device
    f64 = torch.float64
    dt = float(timestep_fs)
    c1 = math.exp(-float(friction_per_fs) * dt)
    c2 = math.sqrt(1.0 - c1 * c1)
    kT = KB_EV * temperature
    t_md = _now()
    st = []
    for s, seed in zip(systems, seeds_):
        z = np.asarray(s["z"], dtype=np.int64)
        x0 = np.asarray(s["pos0"], dtype=np.float64).reshape(len(z), 3)
        m = np.asarray(s["masses"], dtype=np.float64).reshape(len(z))
        if (m <= 0).any():
            raise ValueError("every atom needs a positive mass")
        cell = None if s.get("cell") is None else np.asarray(s["cell"], dtype=np.float64).reshape(3, 3)
        bonds = np.asarray(s.get("bonds", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
        ref = s.get("bond_ref")
        ref = _bond_lengths(x0, bonds, cell) if ref is None else np.asarray(ref, dtype=np.float64).reshape(-1)
        g = torch.Generator(device=dev).manual_seed(seed)
        mt = torch.tensor(m, dtype=f64, device=dev)[:, None]
        sigma = torch.sqrt(kT / mt * EV_PER_AMU_A_TO_A_PER_FS2)
        v = torch.randn((len(z), 3), generator=g, dtype=f64, device=dev) * sigma
        if s.get("vel0") is not None:
            v = torch.tensor(np.asarray(s["vel0"], dtype=np.float64).reshape(len(z), 3), dtype=f64, device=dev)
        st.append(dict(n=len(z), m=m, mt=mt, sigma=sigma, g=g, cell=cell, bonds=bonds, ref=ref, v=v,
                       x=torch.tensor(x0, dtype=f64, device=dev), f=torch.zeros((len(z), 3), dtype=f64, device=dev),
                       steps=0, worst=1.0, tmax=0.0, dof=max(3 * len(z) - 3, 1)))
    results: List[Optional[Dict]] = [None] * ns

    def current(i: int, key: str) -> np.ndarray:
        if i in run and key in flat:
            off = sum(st[j]["n"] for j in run[:run.index(i)])
            return flat[key][off:off + st[i]["n"]].cpu().numpy().copy()
        return st[i][key].cpu().numpy().copy()

    def finish(i: int, end: str, reason: str = "", step: Optional[int] = None) -> None:
        a = st[i]
        if step is not None:
            a["steps"] = step
        results[i] = dict(steps=a["steps"], ps=a["steps"] * dt / 1000.0, stable=end != "failed",
                          completed=end == "completed", reason=reason, worst_bond_ratio=a["worst"],
                          max_temperature_K=a["tmax"], end=end, wall_md_s=_now() - t_md,
                          positions=current(i, "x"), velocities=current(i, "v"),
                          # the step the positions / velocities belong to (None: caught inside a step, the state
                          # is half-updated and must not be saved)
                          state_step=None if in_step[0] else step_now[0],
                          graphed_eager_steps=int(engine.get("eager_steps", 0)))
        if on_done is not None:
            on_done(i, results[i])

    run = list(range(ns))
    flat: Dict[str, torch.Tensor] = {}
    in_step, step_now = [False], [0]          # for finish(): is a step half done, which step the state is at

    def packed(idx: List[int]) -> Dict[str, torch.Tensor]:   # flat tensors of the systems idx
        out = {k: torch.cat([st[i][k] for i in idx]) if idx else torch.zeros((0, 3), dtype=f64, device=dev)
               for k in ("x", "v", "f")}
        out["mt"] = torch.cat([st[i]["mt"] for i in idx]) if idx else torch.ones((0, 1), dtype=f64, device=dev)
        out["sigma"] = torch.cat([st[i]["sigma"] for i in idx]) if idx else out["mt"]
        out["owner"] = torch.cat([torch.full((st[i]["n"],), k, dtype=torch.long, device=dev)
                                  for k, i in enumerate(idx)]) if idx else torch.zeros(0, dtype=torch.long)
        return out

    def pack() -> None:   # flat tensors of the running systems (after a system stopped)
        flat.update(packed(run))

    def unpack() -> None:
        for k in ("x", "v", "f"):
            for i, t in zip(run, flat[k].split([st[i]["n"] for i in run])):
                st[i][k] = t

    engine: Dict[str, object] = {}
    if graphed:
        from openmm_e2former.graphed import DENSE_MAX_PAIRS, dense_box
        for k, a in enumerate(st):
            if dense_box(a["cell"], a["cell"] is not None, model.cutoff) is None:
                raise ValueError(f"system {k}: graphed=True needs gas-phase systems or orthorhombic boxes with "
                                 f"every edge longer than 2 x the cutoff ({2 * model.cutoff} Å)")
        pairs = ns * max((a["n"] for a in st), default=0) ** 2
        if pairs > DENSE_MAX_PAIRS:
            raise ValueError(f"graphed=True: {ns} systems padded to {max(a['n'] for a in st)} atoms are {pairs} atom "
                             f"pairs, over DENSE_MAX_PAIRS = {DENSE_MAX_PAIRS}; run fewer systems per batch (--part)")

    def forces(sizes: List[int]):
        if graphed:
            key = tuple(run)
            if engine.get("key") != key:       # (re)built for the running systems
                from openmm_e2former.graphed import BatchedGraphedEnergyForces
                engine["G"] = BatchedGraphedEnergyForces(
                    model, [systems[i]["z"] for i in run], [st[i]["cell"] is not None for i in run],
                    [int(systems[i].get("charge", 0)) for i in run],
                    [int(systems[i].get("multiplicity", 1)) for i in run])
                engine["cells"] = np.stack([st[i]["cell"] if st[i]["cell"] is not None else np.zeros((3, 3))
                                            for i in run])
                engine["key"] = key
                engine["failures"] = 0
            if engine.get("failures", 0) < 3:
                try:
                    e, f = engine["G"](flat["x"].to(model.dtype), engine["cells"])
                    engine["failures"] = 0
                    return e, f.to(f64), {}
                except Exception as exc:   # noqa: BLE001 - this step eagerly, system by system (names a culprit)
                    engine["failures"] = engine.get("failures", 0) + 1
                    warnings.warn(f"graphed batched forces failed ({type(exc).__name__}: {str(exc)[:200]}); this "
                                  "step runs eagerly" + ("; three in a row: eager from now on"
                                                         if engine["failures"] >= 3 else ""), RuntimeWarning)
            engine["eager_steps"] = engine.get("eager_steps", 0) + 1
        return _forces_guarded(model, systems, run, flat["x"], sizes)

    def evaluate(step: int) -> List[int]:
        """forces at flat x; finite checks; returns the systems that failed (already finished)."""
        sizes = [st[i]["n"] for i in run]
        e, f, errors = forces(sizes)
        flat["f"] = f
        bad_atoms = (~torch.isfinite(f).all(dim=1)).to(f64)
        nonfinite = torch.zeros(len(run), dtype=f64, device=dev).index_add_(0, flat["owner"], bad_atoms)
        host = torch.cat([e.reshape(-1), nonfinite]).cpu().numpy()
        failed = []
        for k, i in enumerate(run):
            ek, nk = host[k], host[len(run) + k]
            st[i]["e"] = float(ek)
            if i in errors or not np.isfinite(ek) or nk > 0:
                what = errors.get(i) or f"non-finite {'energy' if not np.isfinite(ek) else 'forces'}"
                finish(i, "failed", f"at {step * dt / 1000:.4f} ps: {what}", step)
                failed.append(i)
        return failed

    def check(step: int) -> List[int]:
        """temperature and bonds of every running system at ``step``; returns the systems that failed."""
        x = flat["x"].cpu().numpy()
        v = flat["v"].cpu().numpy()
        failed, off = [], 0
        for i in run:
            a = st[i]
            n = a["n"]
            xi, vi = x[off:off + n], v[off:off + n]
            off += n
            ke = 0.5 * float((a["m"][:, None] * vi * vi).sum()) / EV_PER_AMU_A_TO_A_PER_FS2
            temp = 2.0 * ke / (a["dof"] * KB_EV)
            a["tmax"] = max(a["tmax"], temp)
            ok_t = np.isfinite(temp) and temp < MAX_TEMP_FACTOR * temperature
            msg = f"T {temp:.0f} K, E {a.get('e', float('nan')):.3f} eV"
            ok_b = True
            if len(a["bonds"]):
                ratio = _bond_lengths(xi, a["bonds"], a["cell"]) / a["ref"]
                fin = np.isfinite(ratio).all()
                if fin:
                    a["worst"] = max(a["worst"], float(ratio.max()), 1.0 / max(float(ratio.min()), 1e-9))
                ok_b = fin and ratio.max() <= BOND_RANGE[1] and ratio.min() >= BOND_RANGE[0]
                dev_r = np.where(np.isfinite(ratio), np.maximum(ratio, 1.0 / np.maximum(ratio, 1e-9)), np.inf)
                k = int(np.argmax(dev_r))
                msg = f"bond {a['bonds'][k, 0]}-{a['bonds'][k, 1]} ratio {ratio[k]:.2f}, " + msg
            if ok_t and ok_b:
                a["steps"] = step
            else:
                what = " and ".join(([] if ok_b else ["bond out of 0.7-1.4x"]) +
                                    ([] if ok_t else ["temperature over 2x target"]))
                finish(i, "failed", f"at {step * dt / 1000:.4f} ps: {what}: {msg}", step)
                failed.append(i)
        return failed

    def drop(failed: Sequence[int]) -> None:
        nonlocal run
        if failed:
            unpack()
            keep = [i for i in run if i not in set(failed)]
            new = packed(keep)            # built first: an interrupt never sees run and flat disagree for long
            run = keep
            flat.update(new)

    step = 0
    try:
        pack()
        if deadline is not None and _now() >= deadline:
            for i in list(run):
                finish(i, "time", "wall-time limit before MD")
            run = []
        if run:
            drop(evaluate(0))
        half = 0.5 * dt * EV_PER_AMU_A_TO_A_PER_FS2
        while run and step < max(targets[i] for i in run):
            if deadline is not None and _now() >= deadline:
                drop(check(step) if step > 0 else [])
                for i in list(run):
                    finish(i, "time", f"wall-time limit at {step * dt / 1000:.4f} ps", step)
                run = []
                break
            step += 1
            in_step[0] = True
            x, v, mt = flat["x"], flat["v"], flat["mt"]
            v += half * flat["f"] / mt
            x += 0.5 * dt * v
            noise = torch.cat([torch.randn((st[i]["n"], 3), generator=st[i]["g"], dtype=f64, device=dev)
                               for i in run])
            v.mul_(c1).add_(c2 * flat["sigma"] * noise)
            x += 0.5 * dt * v
            failed = evaluate(step)
            flat["v"] += half * flat["f"] / mt
            in_step[0], step_now[0] = False, step
            drop(failed)
            reached = [i for i in run if targets[i] <= step]
            if run and (step % check_every == 0 or reached):
                drop(check(step))
                reached = [i for i in run if targets[i] <= step]
                for i in reached:
                    finish(i, "completed", "", step)
                drop(reached)
        for i in list(run):   # reached ``steps`` (also steps == 0)
            finish(i, "completed", "", step)
        run = []
    except BaseException as exc:
        for i in list(run):
            if results[i] is None:
                a = st[i]
                finish(i, "interrupted", f"{type(exc).__name__} at {step * dt / 1000:.4f} ps "
                                         f"(last check passed at {a['steps'] * dt / 1000:.4f} ps)")
        raise
    return [r for r in results]   # type: ignore[return-value]


def _letter_seed(letter: str, seed: int) -> int:
    """Velocity/noise seed of a system: a stable hash of the letter and ``seed`` (independent of the batch)."""
    h = hashlib.sha256(f"stability:{int(seed)}:{letter}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def build_system(letter: str, seed: int = 0, box_nm: float = 2.0, hmass: float = 4.0,
                 platform: Optional[str] = "CPU", keep_builder: bool = False) -> Dict:
    """ACE-X-NME in water as ``run_one`` builds it (``build_capped``, classical LocalEnergyMinimizer), for
    ``integrate_batched``: z, pos0 (Å), masses (amu, after ``repartition_hydrogens``; ``hmass`` 0: real
    masses), cell (Å), charge, bonds (those of the HarmonicBondForce: solute and water O-H),
    hydrogens_repartitioned."""
    from openmm import unit

    b, bonds, pos0 = _relaxed_solvated(letter, seed, box_nm, platform, max(1, min(8, os.cpu_count() or 1)))
    n_h = repartition_hydrogens(b.system, b.topology, hmass) if hmass > 0 else 0
    masses = np.array([b.system.getParticleMass(i).value_in_unit(unit.amu)
                       for i in range(b.system.getNumParticles())])
    return dict(name=f"ACE-{letter}-NME (water)", letter=letter, z=np.asarray(b.z, dtype=np.int64),
                pos0=np.asarray(pos0, dtype=np.float64), masses=masses, cell=np.asarray(b.box) * 10.0,
                charge=int(b.charge), multiplicity=1, bonds=bonds,
                hydrogens_repartitioned=n_h, **({"_builder": b} if keep_builder else {}))


def _load_saved(state_dir: str, letter: str, timestep_fs: float, hmass: float, mhash: str) -> Optional[Dict]:
    """A system saved in ``state_dir`` by either engine (``run_one``'s files) as a ``build_system`` dict plus
    ``vel0`` (Å/fs), ``prog`` (the progress record) and ``system_xml``; None if there is none.  The atomic
    numbers and charge come from the saved System's E2Former force."""
    import pickle
    import re

    import openmm
    from openmm import unit

    base = Path(state_dir) / f"ACE-{letter}"
    paths = [Path(f"{base}{ext}") for ext in (".xml", ".json", ".system.xml")]
    if not all(p.exists() for p in paths):
        return None
    prog = json.loads(paths[1].read_text())
    if (prog.get("timestep_fs"), prog.get("hmass_amu"), prog.get("model_sha256")) != (timestep_fs, hmass, mhash):
        raise ValueError(f"{paths[1]}: saved with timestep {prog.get('timestep_fs')} fs, hmass "
                         f"{prog.get('hmass_amu')}, model {prog.get('model_sha256')}; asked {timestep_fs}, {hmass}, "
                         f"{mhash}")
    sys_xml = paths[2].read_text()
    hit = re.search(r'<Force[^>]*function="([0-9a-f]+)"[^>]*type="PythonForce"', sys_xml)
    if hit is None:
        raise ValueError(f"{paths[2]}: no E2Former PythonForce in the saved System")
    comp = pickle.loads(bytes.fromhex(hit.group(1)))
    masses = np.array([float(x) for x in re.findall(r'<Particle mass="([^"]+)"', sys_xml)])
    state = openmm.XmlSerializer.deserialize(paths[0].read_text())
    pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    vel = state.getVelocities(asNumpy=True).value_in_unit(unit.angstrom / unit.femtosecond)
    cell = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom))
    z = np.asarray(comp.atomic_numbers, dtype=np.int64)
    if not (len(z) == len(masses) == len(pos)):
        raise ValueError(f"{base}: {len(z)} atomic numbers, {len(masses)} masses, {len(pos)} positions")
    return dict(name=f"ACE-{letter}-NME (water)", letter=letter, z=z, pos0=np.asarray(pos, dtype=np.float64),
                vel0=np.asarray(vel, dtype=np.float64), masses=masses, cell=cell, charge=int(comp.charge),
                multiplicity=int(comp.multiplicity), bonds=np.asarray(prog["bonds"], dtype=np.int64).reshape(-1, 2),
                bond_ref=np.asarray(prog["bond_ref_A"], dtype=np.float64),
                hydrogens_repartitioned=int(prog["hydrogens_repartitioned"]), prog=prog, system_xml=sys_xml)


def _save_state(state_dir: str, s: Dict, pos_A: np.ndarray, vel_A_fs: np.ndarray, prog: Dict,
                model_path: Optional[str], device: str) -> None:
    """``s``'s state in ``run_one``'s format: the System (the saved one, or for a new system the ML System
    ``run_one`` would build), an OpenMM State XML with positions, velocities and box, the progress record."""
    import openmm
    from openmm import unit

    Path(state_dir).mkdir(parents=True, exist_ok=True)
    base = Path(state_dir) / f"ACE-{s['letter']}"
    sys_path = Path(f"{base}.system.xml")
    if s.get("system_xml") is None:
        from openmm_e2former.force import create_python_force
        from .water_md import ml_system

        b = s["_builder"]
        force = create_python_force(list(map(int, s["z"])), model_path, periodic=True, device=device,
                                    charge=int(s["charge"]))
        sysm = ml_system(b.system, b.topology, force, b.box)     # masses of b.system: already repartitioned
        s["system_xml"] = openmm.XmlSerializer.serialize(sysm)
    if not sys_path.exists() or sys_path.read_text() != s["system_xml"]:
        sys_path.write_text(s["system_xml"])
    bare = openmm.System()                      # only to turn numbers into an OpenMM State
    for m in s["masses"]:
        bare.addParticle(float(m))
    box = [openmm.Vec3(*row) for row in np.asarray(s["cell"]) / 10.0]
    bare.setDefaultPeriodicBoxVectors(*box)
    ctx = openmm.Context(bare, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*box)
    ctx.setPositions(np.asarray(pos_A) * 0.1 * unit.nanometer)
    ctx.setVelocities(np.asarray(vel_A_fs) * 100.0 * unit.nanometer / unit.picosecond)
    xml = openmm.XmlSerializer.serialize(ctx.getState(getPositions=True, getVelocities=True))
    tmp = Path(f"{base}.xml.tmp")
    tmp.write_text(xml)
    os.replace(tmp, f"{base}.xml")
    Path(f"{base}.json").write_text(json.dumps(prog))


def run_batched(model_path: Optional[str], letters: Sequence[str], ps: float, minutes: float, device: str,
                timestep_fs: float = 1.5, hmass: float = 4.0, temperature: float = 300.0, check_fs: float = 150.0,
                seed: int = 0, box_nm: float = 2.0, friction_per_ps: float = 1.0, out: Optional[str] = None,
                platform: Optional[str] = "CPU", echo: bool = False, model=None, state_dir: Optional[str] = None,
                graphed: bool = False) -> List[Dict]:
    """All ``letters`` in ONE batch (``build_system`` each, then ``integrate_batched``); ``minutes``: wall-time
    limit of the whole call, building included.  Returns run_one's records plus ``engine`` and
    ``batch_systems``; each is appended to ``out`` (and printed with ``echo``) as soon as its system is
    finished, so a killed run keeps the finished systems.  ``model``: an already loaded model (tests).

    ``state_dir``: resumable runs in ``run_one``'s format (``ACE-<letter>.system.xml`` / ``.xml`` / ``.json``),
    so either engine continues what the other saved: a system with saved files starts from them (positions,
    velocities, box, the masses of the saved System, its bonds, reference lengths and counters; a new noise
    seed per segment) and its record counts the steps of every segment; a system stopped by the wall-time
    limit saves its state there, a completed or failed one removes it.  (OpenMM's LangevinMiddle velocities
    are half a step off BAOAB's: a change of integrator between segments, harmless for a stability test.)
    ``graphed``: ``integrate_batched(graphed=True)``."""
    t_start = _now()
    deadline = t_start + 60.0 * minutes
    if model is None:
        import openmm_e2former
        model = openmm_e2former.load_model(model_path, device=device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    letters = list(letters)
    mhash = _model_hash(model_path) if state_dir else None
    systems = []
    for x in letters:
        saved = _load_saved(state_dir, x, timestep_fs, hmass, mhash) if state_dir else None
        if saved is None:
            saved = build_system(x, seed, box_nm, hmass, platform, keep_builder=bool(state_dir))
            saved["prog"] = None
            if saved.get("bond_ref") is None:
                saved["bond_ref"] = _bond_lengths(
                    np.asarray(saved["pos0"], dtype=np.float64).reshape(-1, 3),
                    np.asarray(saved.get("bonds", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2),
                    None if saved.get("cell") is None else np.asarray(saved["cell"], dtype=np.float64))
        systems.append(saved)
    steps_total = int(math.ceil(ps * 1000.0 / timestep_fs - 1e-9))   # at least ps (50 ps / 1.5 fs: 33,334 steps)
    done0 = [int(s["prog"]["steps"]) if s["prog"] else 0 for s in systems]
    check_every = max(1, int(round(check_fs / timestep_fs)))
    records: List[Optional[Dict]] = [None] * len(systems)

    def on_done(i: int, r: Dict) -> None:
        s = systems[i]
        prog = s["prog"] or {}
        steps_abs = done0[i] + int(r["steps"])
        sim_ps = steps_abs * timestep_fs / 1000.0
        wall_md = max(r["wall_md_s"] + float(prog.get("md_wall_s", 0.0)), 1e-9)
        worst = max(r["worst_bond_ratio"], float(prog.get("worst_bond_ratio", 1.0)))
        t_max = max(r["max_temperature_K"], float(prog.get("max_temperature_K", 0.0)))
        completed = r["stable"] and steps_abs >= steps_total
        reason = r["reason"]
        if reason and done0[i]:
            reason = reason.replace(f"at {r['ps']:.4f} ps", f"at {sim_ps:.4f} ps")   # absolute times
        rec = {"system": s["name"], "letter": s["letter"], "atoms": int(len(s["z"])), "charge": s["charge"],
               "ps": sim_ps, "target_ps": ps, "stable": r["stable"], "completed": completed,
               "worst_bond_ratio": worst, "max_temperature_K": t_max,
               "reason": reason, "timestep_fs": timestep_fs, "hmass_amu": hmass,
               "hydrogens_repartitioned": s["hydrogens_repartitioned"], "temperature_K": temperature,
               "ns_per_day": sim_ps * 1e-3 / wall_md * 86400.0, "wall_s": _now() - t_start, "device": device,
               "engine": "batched-graphed" if graphed else "batched", "batch_systems": len(systems)}
        if state_dir:
            segments = int(prog.get("segments", 0)) + 1
            resumable = r["stable"] and not completed
            files = [Path(state_dir) / f"ACE-{s['letter']}{ext}" for ext in (".xml", ".json", ".system.xml")]
            if resumable and r.get("state_step") is None:
                # interrupted inside a step: the state is half-updated; the previous segment's files (if any)
                # stay, and the next call continues from them
                resumable = all(f.exists() for f in files)
                segments -= 1
            elif resumable:
                # the step count of the saved state (>= the last passed check: the steps after it passed the
                # per-step finite checks; the next segment's checks continue from there)
                _save_state(state_dir, s, r["positions"], r["velocities"], dict(
                    steps=done0[i] + int(r["state_step"]), worst_bond_ratio=worst, max_temperature_K=t_max,
                    md_wall_s=wall_md,
                    segments=segments, timestep_fs=timestep_fs, hmass_amu=hmass,
                    bond_ref_A=np.asarray(s["bond_ref"]).tolist(), bonds=np.asarray(s["bonds"]).tolist(),
                    hydrogens_repartitioned=int(s["hydrogens_repartitioned"]), charge=int(s["charge"]),
                    model_sha256=mhash), model_path, device)
                if r["end"] == "time":
                    rec["reason"] = f"wall-time limit at {sim_ps:.4f} ps (state saved: resumable)"
            else:
                for f in files:
                    if f.exists():
                        f.unlink()
            rec.update(resumable=resumable, segments=segments)
        if graphed:
            rec["graphed_eager_steps"] = r.get("graphed_eager_steps", 0)
        records[i] = rec
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if echo:
            print(json.dumps(rec), flush=True)

    def on_term(signum, frame):
        raise _Interrupted(f"signal {signum}")

    main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        seeds = [_letter_seed(x, seed + 7919 * (int(s["prog"]["segments"]) if s["prog"] else 0))
                 for x, s in zip(letters, systems)]
        integrate_batched(model, systems, [steps_total - d for d in done0], timestep_fs, temperature,
                          friction_per_ps / 1000.0, check_every, deadline, seeds, on_done, graphed=graphed)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
    return [r for r in records]   # type: ignore[return-value]


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
    ap.add_argument("--engine", choices=("openmm", "batched"), default="openmm",
                    help="openmm: one OpenMM context per system, one after another (run_one); batched: all "
                         "systems of the part together, one model call per step (run_batched)")
    ap.add_argument("--minutes", type=float, default=8.0,
                    help="wall-time limit per system (openmm) / of the whole batch, building included (batched)")
    ap.add_argument("--total-minutes", type=float, default=1e9, help="start no new system after this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--platform", default=None)
    ap.add_argument("--timestep-fs", type=float, default=1.5)
    ap.add_argument("--hmass", type=float, default=4.0)
    ap.add_argument("--temperature", type=float, default=300.0)
    ap.add_argument("--box-nm", type=float, default=2.0)
    ap.add_argument("--check-fs", type=float, default=150.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summary", help="print the summary of a results file and exit")
    ap.add_argument("--state-dir", default=None,
                    help="save the state of runs stopped by --minutes there and continue them on the next call "
                         "(their records say resumable); a campaign over several calls; both engines read and "
                         "write the same files")
    ap.add_argument("--graphed", action="store_true",
                    help="batched engine: forces from one CUDA-graphed padded call with the neighbour list "
                         "inside (openmm_e2former.graphed.BatchedGraphedEnergyForces)")
    args = ap.parse_args(argv)
    if args.graphed and args.engine != "batched":
        ap.error("--graphed needs --engine batched (the openmm engine's force picks the graphed path itself)")
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
    if out.exists():   # systems with a final record (a resumable one is continued)
        latest = {}
        for line in out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                latest[r["letter"]] = r
        seen = {x for x, r in latest.items() if not r.get("resumable")}
    if args.engine == "batched":
        todo = [x for x in letters if x not in seen]
        if todo:
            run_batched(model, todo, args.ps, args.minutes, args.device, args.timestep_fs, args.hmass,
                        args.temperature, args.check_fs, args.seed, args.box_nm, out=str(out),
                        platform=args.platform or "CPU", echo=True, state_dir=args.state_dir, graphed=args.graphed)
        return 0
    t0 = time.time()
    for x in letters:
        if x in seen:
            continue
        if time.time() - t0 > 60.0 * args.total_minutes:
            break
        rec = run_one(model, x, args.ps, args.minutes, args.device, args.platform, args.timestep_fs, args.hmass,
                      args.temperature, args.check_fs, args.seed, args.box_nm, args.state_dir)
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
