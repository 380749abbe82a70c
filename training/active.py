"""One active-learning round: student MD -> pick uncertain frames -> teacher relabel -> new labelled shards.

1. Start structures: the first labelled frame of selected shards (``--systems`` filters by name; default: the
   smallest system of every kind).  ``--train-only`` drops the systems held out for validation BEFORE that
   choice (so a kind whose smallest system is held out contributes its smallest training system), and
   ``--part i/n`` then takes every n-th of the chosen shards.
2. MD with student A (Langevin BAOAB integrator on the model directly, 0.5 fs, temperature of the shard or
   ``--temperature``), a frame every ``--stride`` steps.  ``--batch-systems`` K systems run together
   (``student_md_batched``): ONE model call per MD step over the disjoint union of their graphs
   (``training.train.predict_batch``), the integrator state of every system on the host in float64.  The
   seed of a system is a hash of its shard file name and ``--seed`` (independent of ``--part`` and of the
   batching), so the trajectories are those of ``student_md`` run system by system.  A run stops early when
   it blows up (max |F| above ``--fmax`` eV/Å, or two atoms of a non-periodic system closer than 0.6 Å); the
   frames just before that are kept as candidates, and the other systems of its batch continue.
3. Uncertainty: max over atoms of |F_A - F_B| with student B (same architecture, different seed: train it with
   ``--set train.seed=1 out_dir=runs/seed1``).  Without ``--model-b`` the frames are ranked by the force error
   against the teacher instead (one teacher evaluation per candidate; the fast SO3LR teacher evaluates
   several frames of a system per call, ``--teacher-batch-frames`` / ``--teacher-batch-atoms``).
4. The ``--per-system`` most uncertain frames above ``--threshold`` are relabelled by the teacher and written as
   ``al<round>_<system>_T<T>.npz`` into ``--out`` (default: the labelled-data directory, so the next
   ``train`` call picks them up).  One JSON line per system is printed as soon as it is done; the round's
   summary (disagreement, teacher force error of the picked frames) is appended to ``<out>/active_log.jsonl``
   at the end, and also when the run stops early (an exception, Ctrl-C or SIGTERM: ``"complete": false``
   with the systems finished so far).

    python -m training.active --model-a runs/default/model.pt --model-b runs/seed1/model.pt \
        --data data/labelled --out data/labelled --round 1 --steps 2000 --stride 20
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .label import PLACEHOLDER_TEACHER, SO3LRTeacher, batch_size
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


def system_seed(name: str, seed: int) -> int:
    """MD seed of a system: a stable hash (sha256, not Python's salted ``hash``) of its shard file name and
    ``--seed``, so neither ``--part`` nor the batching changes a trajectory."""
    h = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _forces_batch(model, systems: Sequence[dict], xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Forces (float64, host) of several systems at positions ``xs`` (float64 host [N_i, 3]) in ONE model call
    over the disjoint union of their graphs (``train.batch_energy_forces``); each system's forces equal
    ``_forces`` of it alone (up to the float rounding of the bigger matrix products)."""
    from .train import batch_energy_forces
    _, forces = batch_energy_forces(model, systems, xs)
    sizes = [int(x.shape[0]) for x in xs]
    return list(torch.cat(forces).to(device="cpu", dtype=torch.float64).split(sizes))   # one device->host copy


def _blew_up(f: torch.Tensor, x: torch.Tensor, periodic: bool, fmax: float) -> bool:
    """``student_md``'s criteria: non-finite forces, max |F| > fmax, or (non-periodic) two atoms < 0.6 Å apart."""
    d = torch.cdist(x, x) + torch.eye(len(x), dtype=torch.float64) * 10 if not periodic else None
    return (not torch.isfinite(f).all()) or float(f.norm(dim=1).max()) > fmax or \
        (d is not None and float(d.min()) < 0.6)


def student_md_batched(model, systems: Sequence[dict], temperature, steps: int, stride: int, dt: float = 0.5,
                       friction: float = 0.01, fmax: float = 20.0, seeds=0) -> List[tuple]:
    """``student_md`` for many systems at once: per MD step ONE model call over all still-running systems.

    ``systems``: dicts with ``z`` (LongTensor [N]), ``pos0`` (float64 [N, 3]), ``cell`` ([3, 3] or None),
    ``pbc`` (or None), ``charge`` (and optionally ``multiplicity``, default 1).  ``temperature`` and ``seeds``:
    one value for all systems or one per system.  The integrator state of every system lives on the host in
    float64 with its own ``torch.Generator(seed)``, updated in ``student_md``'s order, so a system's
    trajectory is the one ``student_md`` gives it alone (to float rounding of the forces).  A system that blows
    up stops (``stopped_early`` True, its frames so far kept); the others continue.  Returns one
    (frames [K, N, 3] float64, stopped_early) per system, in order."""
    from ase.data import atomic_masses
    ns = len(systems)
    temps = [float(t) for t in (temperature if isinstance(temperature, (list, tuple, np.ndarray)) else
                                [temperature] * ns)]
    seeds_ = [int(s) for s in (seeds if isinstance(seeds, (list, tuple, np.ndarray)) else [seeds] * ns)]
    if len(temps) != ns or len(seeds_) != ns:
        raise ValueError(f"{ns} systems but {len(temps)} temperatures and {len(seeds_)} seeds")
    c1 = math.exp(-friction * dt)
    c2 = math.sqrt(1 - c1 * c1)
    st = []
    for sysd, T, seed in zip(systems, temps, seeds_):
        g = torch.Generator().manual_seed(seed)
        z = torch.as_tensor(sysd["z"]).to(torch.long)
        m = torch.tensor(atomic_masses[z.numpy()], dtype=torch.float64)[:, None]
        sigma = torch.sqrt(KB_EV * T / m * EV_PER_AMU_A_TO_A_PER_FS2)
        x = torch.as_tensor(sysd["pos0"]).clone().to(torch.float64)
        v = torch.randn(x.shape, generator=g, dtype=torch.float64) * sigma
        st.append(dict(sys=dict(sysd, z=z), g=g, m=m, sigma=sigma, x=x, v=v, f=None, frames=[], stopped=False,
                       periodic=sysd.get("cell") is not None))
    run = list(range(ns))
    if run:
        for i, f in zip(run, _forces_batch(model, [st[i]["sys"] for i in run], [st[i]["x"] for i in run])):
            st[i]["f"] = f
    for s in range(1, steps + 1):
        if not run:
            break
        for i in run:
            a = st[i]
            a["v"] += 0.5 * dt * a["f"] / a["m"] * EV_PER_AMU_A_TO_A_PER_FS2
            a["x"] += 0.5 * dt * a["v"]
            a["v"] = c1 * a["v"] + c2 * a["sigma"] * torch.randn(a["x"].shape, generator=a["g"], dtype=torch.float64)
            a["x"] += 0.5 * dt * a["v"]
        forces = _forces_batch(model, [st[i]["sys"] for i in run], [st[i]["x"] for i in run])
        still = []
        for i, f in zip(run, forces):
            a = st[i]
            a["f"] = f
            a["v"] += 0.5 * dt * f / a["m"] * EV_PER_AMU_A_TO_A_PER_FS2
            if _blew_up(f, a["x"], a["periodic"], fmax):
                a["stopped"] = True
                continue
            if s % stride == 0:
                a["frames"].append(a["x"].numpy().copy())
            still.append(i)
        run = still
    return [(np.array(a["frames"], dtype=np.float64).reshape(-1, *a["x"].shape), a["stopped"]) for a in st]


def _model_forces_frames(model, sysd: dict, frames: np.ndarray, max_atoms: int = 4096) -> List[np.ndarray]:
    """Model forces (float64 [N, 3]) of the frames of one system, several frames per model call."""
    n = max(1, int(max_atoms) // max(len(sysd["z"]), 1))
    out: List[np.ndarray] = []
    for s in range(0, len(frames), n):
        xs = [torch.as_tensor(x, dtype=torch.float64) for x in frames[s:s + n]]
        out += [f.numpy() for f in _forces_batch(model, [sysd] * len(xs), xs)]
    return out


def _teacher_frames(teacher, d, z, frames: np.ndarray, k0: int, batch_frames: int, batch_atoms: int):
    """Teacher (energy, forces, stress) of the frames of one system: ``call_batch`` several at a time when the
    teacher has it (the fast SO3LR evaluator), else one call per frame.  stress: [3, 3] eV/Å^3 for periodic
    frames (the ``label --stress`` convention), NaN for gas phase."""
    if teacher is None:
        return [_teacher(teacher, d, z, x, k0, None) for x in frames]   # raises
    nb = batch_size(teacher, len(z), batch_frames, batch_atoms)
    out = []
    for s in range(0, len(frames), nb):
        xs = np.asarray(frames[s:s + nb], dtype=np.float64)
        if len(xs) > 1:
            cells = np.repeat(d["cell"][k0][None].astype(np.float64), len(xs), axis=0)
            res = teacher.call_batch(z.numpy(), xs, cells, d["pbc"].astype(bool), int(scalar(d["charge"])),
                                     int(scalar(d["multiplicity"])), **_stress_kw(teacher.call_batch))
            ss = res[2] if len(res) > 2 else np.full((len(xs), 3, 3), np.nan)
            out += [(float(e), np.asarray(f), np.asarray(st, dtype=np.float64)) for e, f, st in zip(res[0], res[1], ss)]
        else:
            out += [_teacher(teacher, d, z, x, k0, None) for x in xs]
    return out


class _Stop(Exception):
    """SIGTERM, turned into an exception so that the round's summary is still written."""


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
    ap.add_argument("--seed", type=int, default=0,
                    help="MD seeds: a hash of this and each shard's file name (independent of --part)")
    ap.add_argument("--batch-systems", type=int, default=16,
                    help="systems simulated together, one model call per MD step over all of them")
    ap.add_argument("--teacher-batch-frames", type=int, default=8,
                    help="frames of a system per teacher call (fast SO3LR teacher only)")
    ap.add_argument("--teacher-batch-atoms", type=int, default=12000, help="cap on the atoms of a teacher call")
    ap.add_argument("--part", default=None, help="i/n (0-based): this worker's share of the chosen shards")
    ap.add_argument("--train-only", nargs=2, metavar=("VAL_FRACTION", "SPLIT_SEED"), default=None,
                    help="skip the systems that training.train holds out for validation with these settings "
                         "(keeps the validation set free of active-learning frames); applied before the "
                         "default smallest-system-per-kind choice")
    args = ap.parse_args(argv)
    if args.batch_systems < 1:
        ap.error("--batch-systems must be >= 1")
    from openmm_e2former.model import load_model
    model_a = load_model(args.model_a, device=args.device, dtype=torch.float32)
    model_b = load_model(args.model_b, device=args.device, dtype=torch.float32) if args.model_b else None
    if args.teacher == "so3lr":
        from .teacher import so3lr_available
        if so3lr_available():   # the fast evaluator (graph built by torch on the device); same labels
            from .teacher import SO3LRTeacher as FastSO3LRTeacher
            teacher = FastSO3LRTeacher(args.device)
        else:
            teacher = SO3LRTeacher(args.device, stress=True)
        tname = teacher.name
    else:
        teacher, tname = None, PLACEHOLDER_TEACHER
    shards = [(p, load_shard(p)) for p in list_shards(args.data) if not p.name.startswith("al")]
    shards = [(p, d) for p, d in shards if "labelled" in d and d["labelled"].any()]
    if args.train_only:   # before the choice below: a kind whose smallest system is held out keeps another one
        from .train import Frames
        fr = Frames(args.data)
        _, val = fr.split(float(args.train_only[0]), int(args.train_only[1]))
        held_out = {fr.shards[fr.index[i][0]]["system"] for i in val}
        shards = [(p, d) for p, d in shards if str(scalar(d["system"])) not in held_out]
    if args.systems:
        chosen = [(p, d) for p, d in shards if any(s in str(scalar(d["system"])) for s in args.systems)]
    else:
        best: Dict[str, tuple] = {}
        for p, d in shards:
            k = str(scalar(d["kind"]))
            if k not in best or len(d["Z"]) < len(best[k][1]["Z"]):
                best[k] = (p, d)
        chosen = list(best.values())
    if args.part:
        i_part, n_part = (int(x) for x in args.part.split("/"))
        chosen = chosen[i_part::n_part]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for p, d in chosen:
        periodic = bool(d["pbc"].any())
        k0 = int(np.flatnonzero(d["labelled"])[0])
        sysd = dict(z=torch.as_tensor(d["Z"].astype(np.int64)),
                    pos0=torch.as_tensor(d["positions"][k0], dtype=torch.float64),
                    cell=torch.as_tensor(d["cell"][k0], dtype=torch.float64) if periodic else None,
                    pbc=torch.as_tensor(d["pbc"]) if periodic else None, charge=int(scalar(d["charge"])))
        jobs.append(dict(p=p, d=d, k0=k0, sys=sysd, T=args.temperature or float(scalar(d["temperature"])) or 300.0,
                         seed=system_seed(p.name, args.seed)))
    summary: List[dict] = []
    complete, error = False, None

    def on_term(signum, frame):
        raise _Stop(f"signal {signum}")

    try:
        old_term = signal.signal(signal.SIGTERM, on_term)
    except ValueError:   # not the main thread
        old_term = None
    try:
        for b0 in range(0, len(jobs), args.batch_systems):
            group = jobs[b0:b0 + args.batch_systems]
            t0 = time.time()
            results = student_md_batched(model_a, [j["sys"] for j in group], [j["T"] for j in group], args.steps,
                                         args.stride, fmax=args.fmax, seeds=[j["seed"] for j in group])
            md_s = round(time.time() - t0, 1)
            for job, (frames, blew_up) in zip(group, results):
                rec = _score_and_write(args, job, frames, blew_up, model_a, model_b, teacher, tname, out)
                rec.update(md_batch=len(group), md_batch_seconds=md_s)
                summary.append(rec)
                print(json.dumps(rec), flush=True)
        complete = True
    except (Exception, KeyboardInterrupt) as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        line = {"round": args.round, "model_a": args.model_a, "model_b": args.model_b, "part": args.part,
                "seed": args.seed, "complete": complete, "systems": summary}
        if error:
            line["error"] = error
        with open(out / "active_log.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
    return 0


def _score_and_write(args, job, frames, blew_up, model_a, model_b, teacher, tname, out) -> dict:
    """Score one system's MD frames (model B, or the teacher), relabel the picked ones, write the shard."""
    t0 = time.time()
    d, k0, sysd, T = job["d"], job["k0"], job["sys"], job["T"]
    z, charge = sysd["z"], sysd["charge"]
    if not len(frames):
        return {"system": str(scalar(d["system"])), "atoms": int(len(z)), "frames": 0, "blew_up": blew_up,
                "seed": job["seed"]}
    f_a = _model_forces_frames(model_a, sysd, frames)
    teacher_cache: Dict[int, tuple] = {}
    if model_b is not None:
        f_b = _model_forces_frames(model_b, sysd, frames)
        score = np.array([np.linalg.norm(f_a[i] - f_b[i], axis=1).max() for i in range(len(frames))])
    else:
        labels = _teacher_frames(teacher, d, z, frames, k0, args.teacher_batch_frames, args.teacher_batch_atoms)
        teacher_cache = dict(enumerate(labels))
        score = np.array([np.linalg.norm(f_a[i] - labels[i][1], axis=1).max() for i in range(len(frames))])
    order = [i for i in np.argsort(-score) if score[i] > args.threshold][: args.per_system]
    if blew_up and (len(frames) - 1) not in order:       # always keep the last frame before a blow-up
        order = order[:-1] + [len(frames) - 1] if order else [len(frames) - 1]
    order = sorted(int(i) for i in order)
    n = len(order)
    missing = [i for i in order if i not in teacher_cache]
    if missing:
        teacher_cache.update(zip(missing, _teacher_frames(teacher, d, z, frames[missing], k0,
                                                          args.teacher_batch_frames, args.teacher_batch_atoms)))
    energy, forces = np.zeros(n), np.zeros((n, len(z), 3), np.float32)
    stress = np.full((n, 3, 3), np.nan)
    for r, i in enumerate(order):
        energy[r], forces[r], stress[r] = teacher_cache[i]
    err = [float(np.abs(f_a[i] - forces[r]).mean()) * 1000 for r, i in enumerate(order)]
    name = f"al{args.round}_{scalar(d['system'])}_T{int(T)}.npz"
    cells = np.repeat(d["cell"][k0][None], n, axis=0)
    save_shard(out / name, dict(Z=d["Z"], pbc=d["pbc"], charge=charge, multiplicity=1,
                                system=str(scalar(d["system"])), kind=str(scalar(d["kind"])), temperature=T,
                                source=f"student-md:{Path(args.model_a).name}:round{args.round}",
                                positions=frames[order].astype(np.float32), cell=cells, energy=energy,
                                forces=forces, stress=stress, labelled=np.ones(n, bool), teacher=tname))
    return {"system": str(scalar(d["system"])), "atoms": int(len(z)), "md_frames": int(len(frames)),
            "blew_up": blew_up, "seed": job["seed"], "picked": n, "score_max_eV_per_A": float(score.max()),
            "score_median_eV_per_A": float(np.median(score)),
            "picked_force_mae_vs_teacher_meV_per_A": float(np.mean(err)) if err else None,
            "shard": name, "seconds": round(time.time() - t0, 1)}


def _teacher(teacher, d, z, x, k0, path):
    if teacher is None:
        raise RuntimeError("the placeholder teacher cannot label new (student-MD) frames; use --teacher so3lr")
    res = teacher(z.numpy(), x, d["cell"][k0].astype(np.float64), d["pbc"].astype(bool),
                  int(scalar(d["charge"])), int(scalar(d["multiplicity"])), **_stress_kw(teacher))
    st = res[2] if len(res) > 2 else np.full((3, 3), np.nan)
    return res[0], res[1], np.asarray(st, dtype=np.float64)


def _stress_kw(fn) -> dict:
    """``{"stress": True}`` when the teacher call takes a ``stress`` argument (the SO3LR teachers), else {} (a
    teacher without stress: the frames get NaN stress, i.e. no stress label)."""
    import inspect
    try:
        return {"stress": True} if "stress" in inspect.signature(fn).parameters else {}
    except (TypeError, ValueError):   # pragma: no cover
        return {}


if __name__ == "__main__":
    sys.exit(main())
