"""Periodic image shifts under the TF32 matrix-product setting, on the GPU (session 23).

Until session 23, ``neighbor_list`` formed the image shift ``n @ cell`` as a float32 matrix product. With
``torch.backends.cuda.matmul.allow_tf32`` set, torch may run that product on TF32 tensor cores. The 'tf32' and
'bf16' precision modes both set it. The cell is then rounded to 10 mantissa bits: on an H200, edges across the
boundary of the 112 Å water box below were 0.0275 Å off. The shift is now formed in float64 and rounded once.

For the periodic ~100k-atom water box of item 4c, this script measures the largest shift error against float64
with allow_tf32 on:
- for the shifts ``neighbor_list`` returns now;
- for the former expression, a float32 product of the same integer offsets and cell.

    E2F_FIXTURES=DIR python tests/gpu/check_tf32_shift.py OUT.json
Run at the V1.5 model's neighbour setting (cutoff 6 Å, 33) and at (5 Å, 32); exit status 1 if the current shifts are
not float32-exact (error above 1 ulp of the box length).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    args = ap.parse_args(argv)
    from gpu_end_to_end import water_box
    from openmm_e2former.model.neighbors import neighbor_list

    z, pos, cell = water_box(100_000)
    dev = "cuda"
    pbc = torch.tensor([True] * 3, device=dev)
    p32 = torch.as_tensor(pos, dtype=torch.float32, device=dev)
    c32 = torch.as_tensor(cell, dtype=torch.float32, device=dev)
    p64, c64 = p32.double(), c32.double()
    rows, ok = [], True
    # (6.0, 33): what the V1.5 model asks for (cutoff 6 Å, max_neighbors + 1); cuBLAS picks its kernel by shape, and
    # at (5.0, 32) it happened to pick one without TF32 (session 23)
    for cutoff, K in ((6.0, 33), (5.0, 32)):
        before = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            ce, ne, s64 = neighbor_list(p64, c64, pbc, cutoff, K)     # float64: the exact shifts of these edges
            n = torch.round(s64 @ torch.linalg.inv(c64))                # their integer image offsets
            torch.backends.cuda.matmul.allow_tf32 = True
            ce2, ne2, s_new = neighbor_list(p32, c32, pbc, cutoff, K)
            s_old = n.float() @ c32                                     # the former float32 product, TF32 allowed
            torch.cuda.synchronize()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
        same_edges = bool(torch.equal(ce, ce2) and torch.equal(ne, ne2))
        err_new = float((s_new.double() - s64).abs().max())
        err_old = float((s_old.double() - s64).abs().max())
        box = float(c64.diagonal().max())
        ulp = float(np.spacing(np.float32(box)))
        row = {"atoms": int(len(z)), "cutoff_A": cutoff, "max_neighbors": K, "edges": int(ce.shape[0]), "box_A": box,
               "float32_ulp_of_box_A": ulp, "edges_crossing_boundary": int((n != 0).any(dim=1).sum()),
               "same_edges": same_edges, "max_shift_error_now_A": err_new,
               "max_shift_error_former_float32_matmul_tf32_A": err_old, "device": torch.cuda.get_device_name()}
        rows.append(row)
        print(json.dumps(row))
        ok = ok and same_edges and err_new <= ulp
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
