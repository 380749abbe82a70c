"""Matrix-product FLOPs of one energy + forces evaluation of the V1.5-size model (issue #4 targets vs hardware).

Counts every mm / bmm / addmm / matmul FLOP (torch.utils.flop_counter.FlopCounterMode) of
``energy_and_forces`` on the CPU route for a periodic water box, fp32, inference (parameters without gradients:
the backward computes input gradients only), and turns the per-atom count into lower bounds on the step time of
a GPU at a given peak rate: no implementation of this model can run a step faster than FLOPs / peak.  The CPU
route's attention (edge MLP per edge, aggregation by padded matmuls) does no more matrix FLOPs than the fused
kernels, which also recompute the edge MLP in their backward, so the bound holds for the GPU path too.

    python benchmarks/flop_count.py [--side 5] [--out benchmarks/results/flop_count_v15.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

#: data-sheet peaks, dense, TFLOP/s (H100 SXM5 / H200: same SM count and clocks for these figures)
PEAKS = {"fp32 (CUDA cores)": 67.0, "TF32 tensor cores": 494.7, "bf16 tensor cores": 989.4}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=5, help="water box side (molecules per edge; 5 -> 375 atoms)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/flop_count_v15.json"))
    args = ap.parse_args()
    from helpers import water_box
    from torch.utils.flop_counter import FlopCounterMode

    from openmm_e2former.model import E2FormerConfig, E2FormerV2

    torch.manual_seed(0)
    m = E2FormerV2(E2FormerConfig()).requires_grad_(False)       # V1.5 size: C 256, 4 layers, 128 heads
    m.checkpoint_blocks = False                                  # count each product once (no recomputation)
    z, pos, cell = water_box(args.side, 3.1, seed=0)
    z, pos = torch.tensor(z), torch.tensor(pos, dtype=torch.float32)
    cell = torch.tensor(cell, dtype=torch.float32)
    with FlopCounterMode(display=False) as fc:
        m.energy_and_forces(z, pos, cell, torch.tensor([True] * 3))
    n = len(z)
    per_atom = fc.get_total_flops() / n
    by_op = {str(op): v / n for op, v in fc.get_flop_counts()["Global"].items()}
    rows = {}
    for atoms, anchor in ((10_000, "official fp32 4.3 / TF32 5.4 steps/s (H100)"), (100_000, "target >= 3 steps/s")):
        tflop = per_atom * atoms / 1e12
        rows[str(atoms)] = dict(tflop_per_step=tflop, anchor=anchor,
                                max_steps_per_s={k: peak / tflop for k, peak in PEAKS.items()})
    res = dict(config="V1.5 (E2FormerConfig defaults)", atoms_counted=n, mflop_per_atom=per_atom / 1e6,
               mflop_per_atom_by_op={k: v / 1e6 for k, v in by_op.items()}, peaks_tflops=PEAKS, bounds=rows)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"{per_atom / 1e6:.1f} MFLOP per atom (matrix products, energy + forces); by op:",
          {k: round(v / 1e6, 1) for k, v in by_op.items()})
    for atoms, r in rows.items():
        print(f"{int(atoms):,} atoms: {r['tflop_per_step']:.2f} TFLOP per step; at most",
              ", ".join(f"{v:.2f} steps/s ({k})" for k, v in r["max_steps_per_s"].items()))


if __name__ == "__main__":
    main()
