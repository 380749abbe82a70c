"""Label raw shards with teacher energies and forces (resumable).

Teacher ``so3lr`` (default): SO3LR through so3krates-torch's ASE calculator ``SO3LRCalculator`` (weights ship
inside the wheel, nothing is downloaded).  The total charge of every frame is passed as
``atoms.info["charge"]``.  Periodic frames use the default long-range cutoff ``r_max_lr`` = 12 Å; gas-phase
frames use ``--gas-lr-cutoff`` (default 100 Å, i.e. every pair of a cluster/solute interacts).

Pitfall handled here: ASE calculators cache results and do not treat a change of ``atoms.info`` (the charge)
as a system change, so ``calc.reset()`` is called before every frame.

Teacher ``mm-placeholder``: copies the classical OpenMM energies/forces stored by ``generate --store-mm``.
This exists ONLY to exercise the pipeline where so3krates-torch cannot be installed; shards labelled with it
carry ``teacher = "PLACEHOLDER:openmm-amber14"`` and ``train`` refuses to mix teachers.

Resumable: labelled shards are written next to each other in ``--out`` with a per-frame ``labelled`` mask,
saved atomically every ``--save-every`` frames; a restarted run continues where it stopped.  ``--max-minutes``
bounds the wall time of one call.  Throughput is appended to ``<out>/label_log.jsonl``.

Engines for the SO3LR teacher (``--engine``): ``fast`` (default when so3krates-torch imports) is
``training.teacher.SO3LRTeacher``, the same network fed the same inputs, with the neighbour graphs built by
torch on ``--device`` instead of matscipy on the CPU (energies identical, forces within ~4e-6 eV/Å of the
calculator in float32, see tests/test_teacher.py); ``ase`` is the shipped ``SO3LRCalculator``.  Both write
the same teacher name, so a shard may be resumed with either.

Batching (``--batch-frames``, default 8, fast engine only): the frames of a shard share Z, charge and
periodicity, so up to ``--batch-frames`` of them (fewer when that would exceed ``--batch-atoms`` atoms, default
12000) are evaluated in ONE model call as a batch of disjoint graphs (``SO3LRTeacher.call_batch``).  On an
H100 a call costs ~57 ms of mostly kernel launches whatever the frame size (200-1500 atoms), so batching
amortises that fixed cost; the labels are those of one-at-a-time evaluation (identical in float64, within
float32 rounding, <= ~1e-4 eV / ~1.5e-5 eV/Å, in float32; tests/test_teacher.py).  On a CPU there is no launch
cost to amortise and large batches are slower (memory-bound): use ``--batch-frames 1`` there.  The ASE engine
and the placeholder label one frame at a time.  ``--save-every`` is checked after every call, so saves fall
on batch boundaries.

Stress (``--stress``, on by default; ``--no-stress`` to skip): the teacher's configurational stress of every
periodic frame, stress = (1/V) dE/d(strain) in eV/Å^3 (ASE sign convention: P_conf = -trace/3 = -dE/dV), is
stored as ``stress`` [F, 3, 3] float64, NaN for gas-phase frames.  With the fast engine it comes from the
same model call (SO3LR's ``compute_stress``: one 3x3 strain gradient per frame next to the force gradient),
so it costs next to nothing, which is why it is on by default; the ASE engine builds its periodic calculator
with ``compute_stress=True``.  It is the label that carries the cohesion from beyond the student's cutoff
(``training/pressure.py``).  Shards labelled earlier without it stay loadable (no stress labels); labelling
them again with ``--stress`` evaluates their periodic frames once more to add it.  The placeholder teacher
has no stress.

Several workers (e.g. 4 processes on one GPU) label disjoint shard subsets with ``--part i/n`` (shards are
dealt out by size, largest first, so the parts take similar time); each shard is written by one worker only.

    python -m training.label --raw data/raw --out data/labelled [--device cuda] [--max-minutes 9] [--batch-frames 8]
    for i in 0 1 2 3; do python -m training.label --device cuda --part $i/4 --max-minutes 9 & done; wait
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .shards import list_shards, load_shard, save_shard, scalar

SO3LR_TEACHER = "SO3LR (so3krates-torch 0.2.1, bundled so3lr.model)"
PLACEHOLDER_TEACHER = "PLACEHOLDER:openmm-amber14"


class SO3LRTeacher:
    """Energy (eV) and forces (eV/Å) of one frame from SO3LR; with ``stress=True`` the periodic calculator also
    computes the stress (eV/Å^3, (1/V) dE/d(strain), returned as a [3, 3] array)."""

    def __init__(self, device: str = "cpu", dtype: str = "float32", lr_cutoff: float = 12.0,
                 gas_lr_cutoff: float = 100.0, stress: bool = False):
        try:
            from so3krates_torch.calculator.so3 import SO3LRCalculator
        except ImportError as exc:   # pragma: no cover - depends on the environment
            raise RuntimeError(
                "SO3LR teacher unavailable: cannot import so3krates_torch "
                f"({exc}). Install: pip install torch-geometric e3nn ase matscipy h5py && "
                "pip install --no-deps so3krates-torch==0.2.1") from exc
        import torch
        prev = torch.get_default_dtype()
        self.periodic = SO3LRCalculator(r_max_lr=lr_cutoff, default_dtype=dtype, device=device,
                                        compute_stress=bool(stress))
        self.gas = SO3LRCalculator(r_max_lr=gas_lr_cutoff, default_dtype=dtype, device=device)
        torch.set_default_dtype(prev)   # the calculator changes the global default dtype
        self.name = SO3LR_TEACHER
        self.settings = {"device": device, "dtype": dtype, "r_max_lr": lr_cutoff, "gas_r_max_lr": gas_lr_cutoff}

    def __call__(self, z, pos, cell, pbc, charge: int, multiplicity: int, stress: bool = False):
        import torch
        from ase import Atoms
        from ase.stress import voigt_6_to_full_3x3_stress
        if multiplicity != 1:
            raise ValueError("only closed-shell (multiplicity 1) frames are labelled")
        periodic = bool(np.any(pbc))
        atoms = Atoms(numbers=z, positions=pos, cell=cell if periodic else None, pbc=pbc if periodic else False)
        atoms.info["charge"] = int(charge)
        calc = self.periodic if periodic else self.gas
        if stress and periodic and not calc.compute_stress:
            raise ValueError("this ASE teacher was built without stress=True")
        calc.reset()
        prev = torch.get_default_dtype()
        try:
            calc.calculate(atoms, ["energy", "forces"])
        finally:
            torch.set_default_dtype(prev)
        e, f = float(calc.results["energy"]), np.asarray(calc.results["forces"], dtype=np.float32)
        if not stress:
            return e, f
        sigma = (voigt_6_to_full_3x3_stress(np.asarray(calc.results["stress"], dtype=np.float64)) if periodic
                 else np.full((3, 3), np.nan))
        return e, f, sigma


def select_part(paths, part: Optional[str]):
    """Shards of worker ``i`` of ``n`` (``part`` = "i/n"): sorted by atoms x frames (file size as a proxy),
    dealt out round-robin, so every worker gets a similar share; disjoint and together complete."""
    if not part:
        return list(paths)
    i, n = (int(x) for x in part.split("/"))
    if not (0 <= i < n):
        raise ValueError(f"--part {part}: need 0 <= i < n")
    order = sorted(paths, key=lambda p: (-Path(p).stat().st_size, str(p)))
    mine = set(order[i::n])
    return [p for p in paths if p in mine]


def batch_size(teacher, n_atoms: int, batch_frames: int, batch_atoms: int) -> int:
    """Frames per teacher call: ``batch_frames``, capped so a call holds at most ``batch_atoms`` atoms (at least
    one frame); 1 for teachers without ``call_batch`` (the ASE engine, the placeholder)."""
    if teacher is None or not hasattr(teacher, "call_batch"):
        return 1
    return max(1, min(int(batch_frames), int(batch_atoms) // max(int(n_atoms), 1)))


def label_shard(raw_path: Path, out_path: Path, teacher, teacher_name: str, save_every: int,
                deadline: float, batch_frames: int = 1, batch_atoms: int = 12000,
                stress: bool = False) -> Dict[str, float]:
    """Label the frames of one raw shard not yet labelled in ``out_path`` (resumable).

    ``stress``: also store the teacher's stress [F, 3, 3] (float64 eV/Å^3, NaN = no label, always NaN for
    gas-phase shards).  A periodic frame whose stress is missing (a shard labelled before, without stress) is
    then not done: it is evaluated again (energy and forces are rewritten with the same teacher's values).
    The placeholder teacher (``teacher`` None) has no stress.  Without ``stress`` an existing ``stress`` array
    is kept and frames labelled now get NaN."""
    raw = load_shard(raw_path)
    F = raw["positions"].shape[0]
    if out_path.exists():
        lab = load_shard(out_path)
        if str(scalar(lab["teacher"])) != teacher_name:
            raise RuntimeError(f"{out_path}: labelled by {scalar(lab['teacher'])!r}, not {teacher_name!r}")
        if lab["positions"].shape != raw["positions"].shape or not np.array_equal(lab["positions"], raw["positions"]):
            raise RuntimeError(f"{out_path}: positions differ from {raw_path}")
    else:
        lab = dict(raw)
        lab.pop("mm_energy", None)
        lab.pop("mm_forces", None)
        lab.update(energy=np.zeros(F, np.float64), forces=np.zeros_like(raw["positions"], dtype=np.float32),
                   labelled=np.zeros(F, bool), teacher=teacher_name)
    z = raw["Z"].astype(np.int64)
    pbc = raw["pbc"].astype(bool)
    periodic = bool(pbc.all())     # stress labels for fully periodic frames only (a volume is defined)
    stress = bool(stress) and teacher is not None
    if stress and "stress" not in lab:
        lab["stress"] = np.full((F, 3, 3), np.nan)
    def left_mask():   # frames still to label (a periodic frame without its stress counts when stress is on)
        m = ~lab["labelled"]
        if stress and periodic:
            m |= np.isnan(lab["stress"]).any(axis=(1, 2))
        return m

    todo = np.flatnonzero(left_mask())
    done, calls, t0, since_save = 0, 0, time.time(), 0
    charge, mult = int(scalar(raw["charge"])), int(scalar(raw["multiplicity"]))
    nb = batch_size(teacher, len(z), batch_frames, batch_atoms)
    kw = {"stress": True} if stress else {}
    for start in range(0, len(todo), nb):
        if time.time() > deadline:
            break
        ks = todo[start:start + nb]
        ss = None
        if teacher is None:   # placeholder: classical labels from the raw shard
            if "mm_energy" not in raw:
                raise RuntimeError(f"{raw_path}: no mm_energy (generate with --store-mm) for the placeholder teacher")
            es, fs = raw["mm_energy"][ks].astype(np.float64), raw["mm_forces"][ks]
        elif len(ks) > 1:     # several frames, one model call
            out = teacher.call_batch(z, raw["positions"][ks].astype(np.float64), raw["cell"][ks].astype(np.float64),
                                     pbc, charge, mult, **kw)
            es, fs = out[0], out[1]
            ss = out[2] if stress and periodic else None
        else:
            out = teacher(z, raw["positions"][ks[0]].astype(np.float64), raw["cell"][ks[0]].astype(np.float64), pbc,
                          charge, mult, **kw)
            es, fs = np.array([out[0]], np.float64), np.asarray(out[1])[None]
            ss = np.asarray(out[2], np.float64)[None] if stress and periodic else None
        calls += 1
        for k, e, f in zip(ks, es, fs):
            if not (np.isfinite(e) and np.all(np.isfinite(f))):
                raise RuntimeError(f"{raw_path} frame {k}: non-finite teacher label")
        if ss is not None and not np.all(np.isfinite(ss)):
            raise RuntimeError(f"{raw_path} frames {list(ks)}: non-finite teacher stress")
        lab["energy"][ks], lab["forces"][ks], lab["labelled"][ks] = es, fs, True
        if "stress" in lab:
            lab["stress"][ks] = ss if ss is not None else np.nan
        done += len(ks)
        since_save += len(ks)
        if since_save >= save_every:
            save_shard(out_path, lab)
            since_save = 0
    if since_save or not out_path.exists():
        save_shard(out_path, lab)
    dt = time.time() - t0
    return {"shard": raw_path.name, "atoms": int(len(z)), "frames_done": done,
            "frames_left": int(left_mask().sum()), "frames_per_call": int(nb), "calls": calls,
            "seconds": round(dt, 3), "s_per_frame": round(dt / done, 4) if done else None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", nargs="+", default=["data/raw"], help="raw shard directories or files")
    ap.add_argument("--out", default="data/labelled")
    ap.add_argument("--teacher", choices=["so3lr", "mm-placeholder"], default="so3lr")
    ap.add_argument("--engine", choices=["fast", "ase"], default=None,
                    help="SO3LR evaluator: fast = training.teacher (graph on --device; default), ase = SO3LRCalculator")
    ap.add_argument("--part", default=None, help="i/n: label only this worker's share of the shards")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--gas-lr-cutoff", type=float, default=100.0)
    ap.add_argument("--save-every", type=int, default=20,
                    help="save the shard after at least this many new labels (checked after every teacher call)")
    ap.add_argument("--batch-frames", type=int, default=8,
                    help="fast engine: frames of a shard per model call (one disjoint graph); 1 = one at a time")
    ap.add_argument("--batch-atoms", type=int, default=12000,
                    help="fast engine: at most this many atoms per model call (big frames go in smaller batches)")
    ap.add_argument("--stress", action=argparse.BooleanOptionalAction, default=True,
                    help="also store the teacher's stress of periodic frames (shard key 'stress', eV/Å^3, NaN for gas "
                         "phase); periodic frames of existing shards without it are evaluated again (default: on)")
    ap.add_argument("--max-minutes", type=float, default=1e9)
    args = ap.parse_args(argv)
    deadline = time.time() + 60.0 * args.max_minutes
    engine = args.engine
    if args.teacher == "so3lr":
        if engine is None:
            from .teacher import so3lr_available
            engine = "fast" if so3lr_available() else "ase"
        if engine == "fast":
            from .teacher import SO3LRTeacher as FastSO3LRTeacher
            teacher = FastSO3LRTeacher(args.device, args.dtype, gas_lr_cutoff=args.gas_lr_cutoff)
        else:
            teacher = SO3LRTeacher(args.device, args.dtype, gas_lr_cutoff=args.gas_lr_cutoff, stress=args.stress)
        name = teacher.name
    else:
        print("WARNING: placeholder teacher (classical amber14 labels) - for pipeline tests only", file=sys.stderr)
        teacher, name = None, PLACEHOLDER_TEACHER
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    left = 0
    with open(out / "label_log.jsonl", "a") as log:
        for raw_path in select_part(list_shards(args.raw), args.part):
            if time.time() > deadline:
                left += 1
                continue
            res = label_shard(raw_path, out / raw_path.name, teacher, name, args.save_every, deadline,
                              args.batch_frames, args.batch_atoms, stress=args.stress)
            res.update(teacher=name, engine=engine, part=args.part, device=args.device, dtype=args.dtype,
                       stress=bool(args.stress and teacher is not None),
                       batch_frames=args.batch_frames, batch_atoms=args.batch_atoms,
                       time=time.strftime("%Y-%m-%dT%H:%M:%S"))
            if res["frames_done"]:
                log.write(json.dumps(res) + "\n")
                print(json.dumps(res), flush=True)
            left += res["frames_left"] > 0
    print(f"shards with frames left: {left}" + (" (re-run to continue)" if left else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
