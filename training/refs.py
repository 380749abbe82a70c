"""Per-element reference energies by least squares on the labelled set.

SO3LR total energies carry arbitrary per-element offsets, so the student learns
``E_teacher - sum_i e_ref[Z_i]``.  ``e_ref`` minimises the per-atom residual
``sum_frames ((E - n . e_ref) / N)^2`` (``n`` = element counts of the frame, ``N`` = atoms), i.e. every frame
counts equally whatever its size.  Elements that never vary independently (e.g. a data set of water only:
H and O always 2:1) are resolved by the minimum-norm least-squares solution; the fit reports its rank.

    python -m training.refs --data data/labelled --out data/refs.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .shards import list_shards, load_shard, scalar


def fit_reference_energies(shard_paths: Sequence[Path], max_z: int = 100) -> Dict[str, object]:
    rows: List[np.ndarray] = []
    targets: List[np.ndarray] = []
    weights: List[np.ndarray] = []
    kinds: List[str] = []
    teachers = set()
    for p in shard_paths:
        d = load_shard(p)
        m = d["labelled"]
        if not m.any():
            continue
        teachers.add(str(scalar(d["teacher"])))
        counts = np.bincount(d["Z"].astype(int), minlength=max_z)[:max_z].astype(np.float64)
        e = d["energy"][m]
        rows.append(np.repeat(counts[None], len(e), axis=0))
        targets.append(e)
        weights.append(np.full(len(e), 1.0 / counts.sum()))
        kinds += [str(scalar(d["kind"]))] * len(e)
    if not rows:
        raise ValueError("no labelled frames found")
    if len(teachers) > 1:
        raise ValueError(f"labelled data come from several teachers: {sorted(teachers)}")
    A = np.concatenate(rows)
    y = np.concatenate(targets)
    w = np.concatenate(weights)
    present = np.flatnonzero(A.sum(axis=0) > 0)
    Ap = A[:, present]
    sol, _, rank, _ = np.linalg.lstsq(Ap * w[:, None], y * w, rcond=None)
    table = np.zeros(int(present.max()) + 1)
    table[present] = sol
    resid = (y - A[:, : len(table)] @ table) * w          # eV/atom
    kinds_a = np.array(kinds)
    per_kind = {k: float(np.sqrt(np.mean(resid[kinds_a == k] ** 2))) for k in sorted(set(kinds))}
    return {"teacher": teachers.pop(), "elements": {int(z): float(table[z]) for z in present},
            "table": table.tolist(), "rank": int(rank), "n_elements": int(len(present)), "n_frames": int(len(y)),
            "residual_rmse_eV_per_atom": float(np.sqrt(np.mean(resid ** 2))),
            "residual_rmse_eV_per_atom_by_kind": per_kind}


def load_refs(path: Path) -> Dict[str, object]:
    with open(path) as f:
        return json.load(f)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["data/labelled"])
    ap.add_argument("--out", default="data/refs.json")
    args = ap.parse_args(argv)
    res = fit_reference_energies(list_shards(args.data))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "table"}, indent=1))
    if res["rank"] < res["n_elements"]:
        print(f"note: rank {res['rank']} < {res['n_elements']} elements; minimum-norm solution used", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
