"""Which tensors one transformer block keeps for its backward pass, per atom, on the GPU (fused-kernel) route.

Runs one block of the V1.5-size model (random weights) on a small periodic water box on the CPU, through the
pieces the GPU path calls: pre-norm, q / k / v, a stand-in for the fused attention kernel (which keeps only its
inputs q, k, v: the "?" row), then the node-level rest of the block.  Every tensor autograd saves is recorded once
per storage (weights and buffers left out) with the model line that saved it first:

    python benchmarks/saved_tensors_probe.py [--recompute-qk] [--side 4]

Session 10 (`results/saved_tensors_probe_s10.txt`): 182 KB/atom per block, 83 KB/atom with
``set_recompute_qk(True)``.  (Without activation checkpointing every block's set is alive at the peak; with "block"
checkpointing one block's set plus the block inputs.)
"""
from __future__ import annotations

import argparse
import collections
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recompute-qk", action="store_true")
    ap.add_argument("--side", type=int, default=4)
    args = ap.parse_args()
    from helpers import water_box

    from openmm_e2former.model import E2FormerConfig, E2FormerV2

    torch.manual_seed(0)
    m = E2FormerV2(E2FormerConfig()).requires_grad_(False)
    m.checkpoint_blocks = False
    m.set_recompute_qk(args.recompute_qk)
    z, pos, cell = water_box(args.side, 3.1, seed=0)
    z, pos, cell = torch.tensor(z), torch.tensor(pos, dtype=torch.float32), torch.tensor(cell, dtype=torch.float32)
    n = len(z)
    g = m.build_graph(pos.requires_grad_(True), cell, torch.tensor([True] * 3), True)
    fixed = {t.untyped_storage().data_ptr() for t in list(m.parameters()) + list(m.buffers())}
    seen, sizes = set(), collections.Counter()

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in fixed and key not in seen:
            seen.add(key)
            st = [f for f in traceback.extract_stack() if "/model/" in f.filename]
            where = f"{Path(st[-1].filename).name}:{st[-1].lineno} {st[-1].line.strip()[:80]}" if st else "?"
            sizes[where] += t.untyped_storage().nbytes()
        return t

    blk = m.blocks[0]
    x = m.edge_degree(z, g).detach().requires_grad_(True)
    system = m.system_embedding(torch.tensor([0]), torch.tensor([1])).detach()
    U0 = torch.randn(n, 3, 9, m.config.channels)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        q, k, v = blk.attn.qkv(blk.attn_input(x, system))
        U = U0 + 0 * (q.sum() + k.sum() + v.sum())     # stand-in for the fused kernel (saves nothing itself)
        blk.node_part(x, U)
    for t in (q, k, v):                                  # ... which keeps its inputs
        pack(t)
    total = sum(sizes.values())
    print(f"{n} atoms, recompute_qk={args.recompute_qk}: {total / n / 1024:.1f} KB/atom saved by one block")
    for where, b in sizes.most_common(12):
        print(f"{b / n / 1024:7.2f} KB/atom  {where}")


if __name__ == "__main__":
    main()
