"""GPU check of session 14's bf16 changes (``E2F_BF16_NODE_OUT``, default 1): in bf16 mode the CG kernel and the FFN's
RMS norm write their GEMM inputs in bf16 themselves instead of float32 that autocast then casts, and the q / k / v
projections share one bf16 cast of their input.  This script checks that nothing changed, then times the two.

    python benchmarks/gpu_bf16_out_check.py OUT.json [--sizes 2000,10000,100000]

- **Check:** the V1.5-size model (random weights, radial tables on, bf16 mode) on FCC carbon, between
  E2F_BF16_NODE_OUT=1 and =0 (the switch is read at every call, so one model serves both):
  - the energy must be bit-identical (the forward computes the same bits);
  - the forces must agree to float32 rounding (1e-6 of max |F|): the shared q / k / v cast sums the same three
    bf16 gradients in float32, in an order that may differ. Whether they are bit-identical is reported too.
- **Timing:** steps/s of each configuration (float32 copies as before; the bf16 node outputs and shared cast;
  those plus bf16 q / k into the attention kernels, ``E2F_V2_BF16_QK``), with torch.cuda.synchronize around a
  few steps.
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
    m.requires_grad_(False)
    torch.backends.cuda.matmul.allow_tf32 = True      # as gpu_end_to_end's bf16 mode
    m.set_precision("bf16")
    m.set_radial_tables(True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        pos = torch.as_tensor(fcc_carbon(n), dtype=torch.float32, device="cuda")
        z = torch.full((n,), 6, dtype=torch.long, device="cuda")
        configs = {"float32 copies (before)": {"E2F_BF16_NODE_OUT": "0", "E2F_V2_BF16_QK": "0"},
                   "bf16 node outputs + shared q/k/v cast": {"E2F_BF16_NODE_OUT": "1", "E2F_V2_BF16_QK": "0"},
                   "+ bf16 q/k into the attention kernels (default)": {"E2F_BF16_NODE_OUT": "1",
                                                                       "E2F_V2_BF16_QK": "1"}}
        res, times = {}, {}
        for _round in range(2):                 # alternated; the second round timed
            for label, env in configs.items():
                os.environ.update(env)
                out = m.energy_and_forces(z, pos)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    out = m.energy_and_forces(z, pos)
                torch.cuda.synchronize()
                times[label] = (time.perf_counter() - t0) / args.steps
                res[label] = (float(out[1]), out[2].detach().clone())
        base_e, base_f = res["float32 copies (before)"]
        for label in configs:
            e, f = res[label]
            diff_f = float((f - base_f).abs().max())
            row = {"n_atoms": n, "mode": "bf16, tables", "config": label, "steps_per_s": 1 / times[label],
                   "energy_bit_identical": e == base_e, "forces_bit_identical": bool(torch.equal(f, base_f)),
                   "max_force_diff_eV_A": diff_f,
                   "forces_within_fp32_rounding": diff_f <= 1e-6 * float(base_f.abs().max())}
            rows.append(row)
            print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    ok = all(r["energy_bit_identical"] and r["forces_within_fp32_rounding"] for r in rows)
    print("PASS" if ok else "FAIL", flush=True)


if __name__ == "__main__":
    main()
