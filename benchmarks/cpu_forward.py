"""CPU timing of energy + forces with the V1.5-size model (random weights of the v15 parity fixture).

Systems: a 99-atom water cluster (33 molecules, non-periodic) and the 648-atom periodic water box
(official tools/samples/water216_nvt.xyz, from the parity fixtures). 1 and 2 threads.
Anchor: the official code needs ~1.45 s for a 100-atom cluster with 1 thread on the 2-core dev CPU.

    python benchmarks/cpu_forward.py [--repeats 5] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FIX = REPO.parent / "shared" / "fixtures" / "official_parity"


def water_cluster(n_mol: int = 33, seed: int = 0):
    """Random compact cluster: each new O 2.7-3.1 Å from a random earlier O, >= 2.6 Å from all."""
    rng = np.random.default_rng(seed)
    geom = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0],
                     [0.9572 * np.cos(np.radians(104.52)), 0.9572 * np.sin(np.radians(104.52)), 0.0]])
    oxy = [np.zeros(3)]
    while len(oxy) < n_mol:
        base = oxy[rng.integers(len(oxy))]
        d = rng.normal(size=3)
        cand = base + d / np.linalg.norm(d) * rng.uniform(2.7, 3.1)
        if min(np.linalg.norm(cand - o) for o in oxy) >= 2.6:
            oxy.append(cand)
    pos, z = [], []
    for o in oxy:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        pos.append(geom @ (q * np.sign(np.diag(r))).T + o)
        z += [8, 1, 1]
    return np.array(z), np.concatenate(pos) + np.array([3.1, -2.2, 5.3])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    from openmm_e2former import load_model

    model = load_model(FIX / "v15" / "checkpoint.pt")
    box = np.load(FIX / "v15" / "water216_pbc.npz")
    zc, pc = water_cluster()
    systems = {
        "water_cluster_99": (zc, pc, None, None),
        "water_box_648_pbc": (box["atomic_numbers"], box["positions"], box["cell"], box["pbc"]),
    }
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, (z, pos, cell, pbc) in systems.items():
            model.predict(z, pos, cell, pbc)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = model.predict(z, pos, cell, pbc)
                times.append(time.perf_counter() - t0)
            row = {"system": name, "n_atoms": int(len(z)), "threads": threads,
                   "median_s": float(np.median(times)), "min_s": float(np.min(times)),
                   "energy_model_eV": out["energy_model"]}
            if name == "water_box_648_pbc":
                row["energy_model_official_eV"] = float(box["energy_model"])
                row["max_force_diff_vs_official_eV_A"] = float(np.abs(out["forces"] - box["forces"]).max())
            results.append(row)
            print(f"{name:20s} N={len(z):4d} threads={threads} median {row['median_s']:.3f} s  min {row['min_s']:.3f} s")
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": __import__("os").cpu_count(), "model": "v15 fixture (V1.5 config, random weights)",
            "anchor_official_100_atoms_1_thread_s": 1.45, "target_s": 0.5,
            "note": "energy + autograd forces through model.predict (includes neighbour list and input checks)"}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cpu_forward.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = ["| system | atoms | threads | median s | min s |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['system']} | {r['n_atoms']} | {r['threads']} | {r['median_s']:.3f} | {r['min_s']:.3f} |"
              for r in results]
    (out_dir / "cpu_forward.md").write_text(
        "# CPU energy + forces, V1.5-size model (random weights)\n\n" + "\n".join(lines)
        + f"\n\nAnchor: official code ~1.45 s for a 100-atom cluster, 1 thread; target <= 0.5 s.\n"
        f"torch {torch.__version__}, {meta['cores']} cores (shared development machine).\n")


if __name__ == "__main__":
    main()
