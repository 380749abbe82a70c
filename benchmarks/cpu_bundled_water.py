"""CPU timing of energy + forces with the BUNDLED default model on liquid water: the last frame of the 100 ps
campaign run (600 waters, 1,800 atoms, periodic, 298 K), 1 and 2 threads, min / median of ``--repeats`` calls.

    python benchmarks/cpu_bundled_water.py [--repeats 5] [--label NAME] [--out benchmarks/results/cpu_bundled_water.json]

Appends one row per thread count to the JSON (``--label`` names the code version) and prints it.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import warnings
from pathlib import Path

import torch

from openmm_md_water import _pdb_box   # (benchmarks/ is on sys.path when this script runs)

REPO = Path(__file__).resolve().parents[1]
FRAME = REPO / "benchmarks/results/default_model/long_campaign/water_100ps/last_frame.pdb"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default=None, help="code version (default: git describe)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/cpu_bundled_water.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from openmm_e2former import load_model

    label = args.label or subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                                         capture_output=True, text=True).stdout.strip()
    z, pos, cell = _pdb_box(str(FRAME))
    m = load_model()
    zt = torch.as_tensor(z)
    pt = torch.as_tensor(pos, dtype=torch.float32)
    ct = torch.as_tensor(cell, dtype=torch.float32)
    pbc = torch.tensor([True, True, True])
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        m.energy_and_forces(zt, pt, ct, pbc)                   # warm-up
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            e, _, f = m.energy_and_forces(zt, pt, ct, pbc)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        row = dict(label=label, atoms=len(z), threads=threads, repeats=args.repeats, s_min=ts[0],
                   s_median=ts[len(ts) // 2], energy_eV=float(e), force0_eV_A=f[0].tolist(),
                   cpu=platform.processor() or platform.machine(), torch=torch.__version__)
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(old + rows, indent=1))


if __name__ == "__main__":
    main()
