"""One active-learning round: student MD -> pick uncertain frames -> teacher relabel -> new labelled shards.

1. Start structures: the first labelled frame of selected shards (``--systems`` filters by name; default: the
   smallest system of every kind).
2. MD with student A (Langevin BAOAB integrator on the model directly, 0.5 fs, temperature of the shard or
   ``--temperature``), a frame every ``--stride`` steps.  A run stops early when it blows up (max |F| above
   ``--fmax`` eV/Å, or two atoms closer than 0.6 Å); the frames just before that are kept as candidates.
3. Uncertainty: max over atoms of |F_A - F_B| with student B (same architecture, different seed: train it with
   ``--set train.seed=1 out_dir=runs/seed1``).  Without ``--model-b`` the frames are ranked by the force error
   against the teacher instead (costs one teacher call per candidate).
4. The ``--per-system`` most uncertain frames above ``--threshold`` are relabelled by the teacher and written as
   ``al<round>_<system>_T<T>.npz`` into ``--out`` (default: the labelled-data directory, so the next
   ``train`` call picks them up).  A JSON summary (disagreement, teacher force error of the picked frames) is
   appended to ``<out>/active_log.jsonl``.

    python -m training.active --model-a runs/default/model.pt --model-b runs/seed1/model.pt \
        --data data/labelled --out data/labelled --round 1 --steps 2000 --stride 20
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .label import PLACEHOLDER_TEACHER, SO3LRTeacher
from .shards import list_shards, load_shard, save_shard, scalar

EV_PER_AMU_A_TO_A_PER_FS2 = 0.0096485332   # (eV/Å)/amu in Å/fs^2
KB_EV = 8.617333262e-5


def _forces(model, z, pos, cell, pbc, charge):
    _, _, f = model.energy_and_forces(z, pos, cell, pbc, charge, 1, forces=True, validate=False)
    return f.to(device="cpu", dtype=torch.float64)   # the integrator state lives on the host (small systems)


def student_md(model, z, pos0, cell, pbc, charge, temperature: float, steps: int, stride: int, dt: float = 0.5,
               friction: float = 0.01, fmax: float = 20.0, seed: int = 0):
    """BAOAB Langevin MD (Å, fs, amu, eV); returns (frames [K, N, 3] float64, stopped_early)."""
    from ase.data import atomic_masses
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor(atomic_masses[z.numpy()], dtype=torch.float64)[:, None]
    kT = KB_EV * temperature
    sigma = torch.sqrt(kT / m * EV_PER_AMU_A_TO_A_PER_FS2)
    x = pos0.clone().to(torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64) * sigma
    c1 = math.exp(-friction * dt)
    c2 = math.sqrt(1 - c1 * c1)
    f = _forces(model, z, x, cell, pbc, charge)
    frames: List[np.ndarray] = []
    for s in range(1, steps + 1):
        v += 0.5 * dt * f / m * EV_PER_AMU_A_TO_A_PER_FS2
        x += 0.5 * dt * v
        v = c1 * v + c2 * sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
        x += 0.5 * dt * v
        f = _forces(model, z, x, cell, pbc, charge)
        v += 0.5 * dt * f / m * EV_PER_AMU_A_TO_A_PER_FS2
        d = torch.cdist(x, x) + torch.eye(len(x), dtype=torch.float64) * 10 if cell is None else None
        bad = (not torch.isfinite(f).all()) or float(f.norm(dim=1).max()) > fmax or \
            (d is not None and float(d.min()) < 0.6)
        if bad:
            return np.array(frames), True
        if s % stride == 0:
            frames.append(x.numpy().copy())
    return np.array(frames), False


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-a", required=True)
    ap.add_argument("--model-b", help="second student (different seed) for the disagreement measure")
    ap.add_argument("--data", nargs="+", default=["data/labelled"], help="labelled shards (start structures)")
    ap.add_argument("--systems", nargs="*", help="system-name substrings; default: smallest system of each kind")
    ap.add_argument("--out", default="data/labelled")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--stride", type=int, default=20)
    ap.add_argument("--temperature", type=float, help="default: the shard's temperature")
    ap.add_argument("--per-system", type=int, default=20, help="frames picked per system")
    ap.add_argument("--threshold", type=float, default=0.0, help="eV/Å; only frames above are picked")
    ap.add_argument("--fmax", type=float, default=20.0)
    ap.add_argument("--teacher", choices=["so3lr", "mm-placeholder"], default="so3lr")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", default=None, help="i/n (0-based): this worker's share of the chosen shards")
    ap.add_argument("--train-only", nargs=2, metavar=("VAL_FRACTION", "SPLIT_SEED"), default=None,
                    help="skip the systems that training.train holds out for validation with these settings "
                         "(keeps the validation set free of active-learning frames)")
    args = ap.parse_args(argv)
    from openmm_e2former.model import load_model
    model_a = load_model(args.model_a, device=args.device, dtype=torch.float32)
    model_b = load_model(args.model_b, device=args.device, dtype=torch.float32) if args.model_b else None
    if args.teacher == "so3lr":
        from .teacher import so3lr_available
        if so3lr_available():   # the fast evaluator (graph built by torch on the device); same labels
            from .teacher import SO3LRTeacher as FastSO3LRTeacher
            teacher = FastSO3LRTeacher(args.device)
        else:
            teacher = SO3LRTeacher(args.device)
        tname = teacher.name
    else:
        teacher, tname = None, PLACEHOLDER_TEACHER
    shards = [(p, load_shard(p)) for p in list_shards(args.data) if not p.name.startswith("al")]
    shards = [(p, d) for p, d in shards if "labelled" in d and d["labelled"].any()]
    if args.systems:
        chosen = [(p, d) for p, d in shards if any(s in str(scalar(d["system"])) for s in args.systems)]
    else:
        best: Dict[str, tuple] = {}
        for p, d in shards:
            k = str(scalar(d["kind"]))
            if k not in best or len(d["Z"]) < len(best[k][1]["Z"]):
                best[k] = (p, d)
        chosen = list(best.values())
    if args.train_only:
        from .train import Frames
        fr = Frames(args.data)
        _, val = fr.split(float(args.train_only[0]), int(args.train_only[1]))
        held_out = {fr.shards[fr.index[i][0]]["system"] for i in val}
        chosen = [(p, d) for p, d in chosen if str(scalar(d["system"])) not in held_out]
    if args.part:
        i_part, n_part = (int(x) for x in args.part.split("/"))
        chosen = chosen[i_part::n_part]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for j, (p, d) in enumerate(chosen):
        t0 = time.time()
        z = torch.as_tensor(d["Z"].astype(np.int64))
        periodic = bool(d["pbc"].any())
        k0 = int(np.flatnonzero(d["labelled"])[0])
        cell = torch.as_tensor(d["cell"][k0], dtype=torch.float64) if periodic else None
        pbc = torch.as_tensor(d["pbc"]) if periodic else None
        charge = int(scalar(d["charge"]))
        T = args.temperature or float(scalar(d["temperature"])) or 300.0
        frames, blew_up = student_md(model_a, z, torch.as_tensor(d["positions"][k0], dtype=torch.float64), cell,
                                     pbc, charge, T, args.steps, args.stride, fmax=args.fmax,
                                     seed=args.seed + j)
        if not len(frames):
            summary.append({"system": str(scalar(d["system"])), "frames": 0, "blew_up": blew_up})
            continue
        score = np.zeros(len(frames))
        f_a = [ _forces(model_a, z, torch.as_tensor(x), cell, pbc, charge).numpy() for x in frames]
        teacher_cache: Dict[int, tuple] = {}
        for i, x in enumerate(frames):
            if model_b is not None:
                f_b = _forces(model_b, z, torch.as_tensor(x), cell, pbc, charge).numpy()
                score[i] = np.linalg.norm(f_a[i] - f_b, axis=1).max()
            else:
                e, ft = _teacher(teacher, d, z, x, k0, p)
                teacher_cache[i] = (e, ft)
                score[i] = np.linalg.norm(f_a[i] - ft, axis=1).max()
        order = [i for i in np.argsort(-score) if score[i] > args.threshold][: args.per_system]
        if blew_up and (len(frames) - 1) not in order:       # always keep the last frame before a blow-up
            order = order[:-1] + [len(frames) - 1] if order else [len(frames) - 1]
        order = sorted(order)
        n = len(order)
        energy, forces = np.zeros(n), np.zeros((n, len(z), 3), np.float32)
        for r, i in enumerate(order):
            energy[r], forces[r] = teacher_cache[i] if i in teacher_cache else _teacher(teacher, d, z, frames[i], k0, p)
        err = [float(np.abs(f_a[i] - forces[r]).mean()) * 1000 for r, i in enumerate(order)]
        name = f"al{args.round}_{scalar(d['system'])}_T{int(T)}.npz"
        cells = np.repeat(d["cell"][k0][None], n, axis=0)
        save_shard(out / name, dict(Z=d["Z"], pbc=d["pbc"], charge=charge, multiplicity=1,
                                    system=str(scalar(d["system"])), kind=str(scalar(d["kind"])), temperature=T,
                                    source=f"student-md:{Path(args.model_a).name}:round{args.round}",
                                    positions=frames[order].astype(np.float32), cell=cells, energy=energy,
                                    forces=forces, labelled=np.ones(n, bool), teacher=tname))
        rec = {"system": str(scalar(d["system"])), "atoms": int(len(z)), "md_frames": int(len(frames)),
               "blew_up": blew_up, "picked": n, "score_max_eV_per_A": float(score.max()),
               "score_median_eV_per_A": float(np.median(score)),
               "picked_force_mae_vs_teacher_meV_per_A": float(np.mean(err)) if err else None,
               "shard": name, "seconds": round(time.time() - t0, 1)}
        summary.append(rec)
        print(json.dumps(rec), flush=True)
    with open(out / "active_log.jsonl", "a") as fh:
        fh.write(json.dumps({"round": args.round, "model_a": args.model_a, "model_b": args.model_b,
                             "systems": summary}) + "\n")
    return 0


def _teacher(teacher, d, z, x, k0, path):
    if teacher is None:
        raise RuntimeError("the placeholder teacher cannot label new (student-MD) frames; use --teacher so3lr")
    periodic = bool(d["pbc"].any())
    return teacher(z.numpy(), x, d["cell"][k0].astype(np.float64), d["pbc"].astype(bool),
                   int(scalar(d["charge"])), int(scalar(d["multiplicity"])))


if __name__ == "__main__":
    sys.exit(main())
