"""Where the time of one force call of the BUNDLED model goes on a large periodic water box.

Replicates the equilibrated 600-water frame of the long campaign (``--reps``), times the model's
``energy_and_forces`` (CUDA-synchronised, median of ``--repeats``), and writes a torch.profiler table sorted by
self CUDA time.  Usage: python benchmarks/profile_bundled_water.py --reps 4,4,4 --out DIR
"""
import argparse
import json
import os
import time

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pdb", default="benchmarks/results/default_model/long_campaign/water_100ps/last_frame.pdb")
    ap.add_argument("--reps", default="4,4,4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    from openmm_e2former import load_model
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from openmm_md_water import _pdb_box

    reps = tuple(int(x) for x in args.reps.split(","))
    z0, p0, c0 = _pdb_box(args.pdb)
    shifts = np.stack(np.meshgrid(*[np.arange(n) for n in reps], indexing="ij"), -1).reshape(-1, 3)
    pos = np.concatenate([p0 + s @ c0 for s in shifts])
    z = torch.tensor(np.tile(z0, len(shifts)), device="cuda")
    pos = torch.tensor(pos, dtype=torch.float32, device="cuda")
    cell = torch.tensor(c0 * np.array(reps)[:, None], dtype=torch.float32, device="cuda")
    pbc = torch.tensor([True] * 3, device="cuda")
    m = load_model(device="cuda")
    for _ in range(2):
        m.energy_and_forces(z, pos, cell, pbc, validate=False)
    torch.cuda.synchronize()
    ts = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        m.energy_and_forces(z, pos, cell, pbc, validate=False)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    res = {"atoms": int(len(z)), "reps": reps, "buckets": os.environ.get("E2F_V2_BUCKETS"),
           "median_ms": 1e3 * float(np.median(ts)), "min_ms": 1e3 * float(np.min(ts)),
           "peak_GiB": torch.cuda.max_memory_allocated() / 2**30, "device": torch.cuda.get_device_name()}
    print(json.dumps(res), flush=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        m.energy_and_forces(z, pos, cell, pbc, validate=False)
        torch.cuda.synchronize()
    t = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)
    os.makedirs(args.out, exist_ok=True)
    tag = f"{res['atoms']}"
    open(os.path.join(args.out, f"profile_bundled_water_{tag}.txt"), "w").write(json.dumps(res) + "\n\n" + t)
    json.dump(res, open(os.path.join(args.out, f"profile_bundled_water_{tag}.json"), "w"), indent=1)
    print(t[:5000])


if __name__ == "__main__":
    main()
