"""Bytes that one V1.5-size block's node-level operations read and write, forward + backward, counted on the CPU.

    python benchmarks/node_bytes_cpu.py [N] > benchmarks/results/node_bytes_cpu.txt

Every aten operation under a TorchDispatchMode is logged with the sizes of its tensor inputs and outputs that
have at least N elements (views, reshapes and other metadata-only operations are left out); per part of the block
(attention input norm, q / k / v projections, the attention's output part from a given U, the FFN's norm and the
FFN) the sum per atom, and its largest operations.  This is the traffic of the PyTorch forms that the opt-in
node-level kernels (kernels/cg_triton, pairdot_triton, rmsnorm_triton) replace; it counts bytes, not time.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from openmm_e2former.model import E2FormerV2, load_config  # noqa: E402

FIX = REPO.parent / "shared" / "fixtures" / "official_parity"
VIEWS = {"view", "_unsafe_view", "permute", "split_with_sizes", "slice", "unsqueeze", "expand", "squeeze", "t",
         "select", "split", "alias", "detach", "as_strided", "transpose", "reshape"}


class _Log(TorchDispatchMode):
    def __init__(self, n_min):
        super().__init__()
        self.n_min = n_min
        self.stats = collections.defaultdict(lambda: [0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            b = sum(t.numel() * t.element_size() for t in tree_flatten((args, kwargs))[0] + tree_flatten(out)[0]
                    if isinstance(t, torch.Tensor) and t.numel() >= self.n_min)
            self.stats[name][0] += 1
            self.stats[name][1] += b
        return out


def main(argv):
    N = int(argv[0]) if argv else 2000
    torch.manual_seed(0)
    m = E2FormerV2(load_config(FIX / "v15" / "config.yaml")).float()
    blk = m.blocks[0]
    C = m.blocks[0].norm_attn.weight.shape[1]
    system = torch.randn(1, C)
    U = torch.randn(N, 3, 9, C)
    parts = {
        "attn_input (norm + system row)": lambda x: blk.attn_input(x, system),
        "q / k / v projections": lambda x: torch.cat([t.reshape(N, -1) for t in blk.attn.qkv(x)], 1),
        "attention output part (CG einsum, cats, GEMMs) of U": lambda x: blk.attn.node_part(U + 0 * x[:, :1, None],
                                                                                            torch.float32),
        "FFN pre-norm (parts, cat)": lambda x: torch.cat(blk.norm_ffn.parts(x), dim=1),
        "FFN": lambda x: blk.ffn(x),
    }
    print(f"# V1.5 block (C = {C}), N = {N} atoms, float32, forward + backward, KB per atom (CPU dispatch log)")
    total = 0.0
    for label, f in parts.items():
        x = torch.randn(N, 9, C, requires_grad=True)
        log = _Log(N)
        with log:
            y = f(x)
            torch.autograd.grad(y, [x], torch.randn_like(y))
        kb = sum(v[1] for v in log.stats.values()) / N / 1024
        total += kb
        top = sorted(log.stats.items(), key=lambda kv: -kv[1][1])[:6]
        print(f"{label}: {kb:.0f} KB/atom; " + ", ".join(f"{k} {v[1] / N / 1024:.0f}" for k, v in top))
    print(f"all parts: {total:.0f} KB/atom")


if __name__ == "__main__":
    main(sys.argv[1:])
