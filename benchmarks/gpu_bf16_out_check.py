"""GPU check of session 14's bf16 changes (``E2F_BF16_NODE_OUT``, default 1): in bf16 mode the CG kernel and the FFN's
RMS norm write their GEMM inputs in bf16 themselves instead of float32 that autocast then casts, and the q / k / v
projections share one bf16 cast of their input.  This script checks that nothing changed, then times the two.

    python benchmarks/gpu_bf16_out_check.py OUT.json [--sizes 2000,10000,100000]

- **Check:** the V1.5-size model (random weights, radial tables on, bf16 mode) on FCC carbon, between
  E2F_BF16_NODE_OUT=1 and =0 (the switch is read at every call, so one model serves both):
  - the energy must be bit-identical (the forward computes the same bits);
  - the forces must agree to float32 rounding (1e-6 of max |F|): the shared q / k / v cast sums the same three
    bf16 gradients in float32, in an order that may differ. Whether they are bit-identical is reported too.
- **Timing:** steps/s of each, with torch.cuda.synchronize around a few steps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "benchmarks"))
from gpu_end_to_end import fcc_carbon, v15_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sizes", default="2000,10000,100000")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    m = v15_model()
    m.set_precision("bf16")
    m.set_radial_tables(True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        pos = torch.as_tensor(fcc_carbon(n), dtype=torch.float32, device="cuda")
        z = torch.full((n,), 6, dtype=torch.long, device="cuda")
        res, times = {}, {}
        for flag in ("0", "1", "0", "1"):      # alternated, the second pair timed
            os.environ["E2F_BF16_NODE_OUT"] = flag
            out = m.energy_and_forces(z, pos)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = m.energy_and_forces(z, pos)
            torch.cuda.synchronize()
            times[flag] = (time.perf_counter() - t0) / args.steps
            res[flag] = (float(out[1]), out[2].detach().clone())
        same_e = res["0"][0] == res["1"][0]
        same_f = bool(torch.equal(res["0"][1], res["1"][1]))
        diff_f = float((res["0"][1] - res["1"][1]).abs().max())
        close_f = diff_f <= 1e-6 * float(res["0"][1].abs().max())
        row = {"n_atoms": n, "mode": "bf16, tables", "energy_bit_identical": same_e, "forces_bit_identical": same_f, "forces_within_fp32_rounding": close_f,
               "max_force_diff_eV_A": diff_f, "steps_per_s_float32_out": 1 / times["0"],
               "steps_per_s_bf16_out": 1 / times["1"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    ok = all(r["energy_bit_identical"] and r["forces_within_fp32_rounding"] for r in rows)
    print("PASS" if ok else "FAIL", flush=True)


if __name__ == "__main__":
    main()
