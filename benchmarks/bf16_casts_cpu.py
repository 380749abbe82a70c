"""Where the bf16 mode casts: every dtype-changing copy of one V1.5-size block's node-level code, forward, counted
on the CPU under the same autocast as the GPU path (``set_precision("bf16")``).

    python benchmarks/bf16_casts_cpu.py [N] > benchmarks/results/bf16_casts_cpu.txt

The 100k bf16 profile on the H200 (``results/profile_100k_bf16_tables_s14_h200.txt``) has 43.5 ms of ``aten::to`` and
21.7 ms of their backward in a 391 ms step.  Here each forward cast of at least N elements (``aten::_to_copy``
with a new dtype) is logged with the model source line that caused it, its shape, and its bytes per atom (read +
written); each one also has a backward cast of the same size when its input needs a gradient.  CPU autocast
covers the same node-level ops here (linear, matmul, bmm) as CUDA autocast, so the list of casts is the GPU
path's, except for the fused kernels' own launch code, which the CPU does not run.
"""
from __future__ import annotations

import collections
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))
from openmm_e2former.model import E2FormerV2, load_config  # noqa: E402

FIX = REPO.parent / "shared" / "fixtures" / "official_parity"


def _site() -> str:
    """The innermost model source line on the stack (``model/...py:line  code``)."""
    for fr in reversed(traceback.extract_stack()):
        if "/model/" in fr.filename and "bf16_casts" not in fr.filename:
            return f"{Path(fr.filename).name}:{fr.lineno}  {fr.line.strip()[:90]}"
    return "?"


class _Casts(TorchDispatchMode):
    def __init__(self, n_min):
        super().__init__()
        self.n_min = n_min
        self.sites = collections.defaultdict(lambda: [0, 0, ""])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket.__name__ in ("_to_copy", "to", "copy_") and isinstance(out, torch.Tensor):
            src = args[0] if func.overloadpacket.__name__ != "copy_" else args[1]
            if (isinstance(src, torch.Tensor) and src.dtype != out.dtype and src.is_floating_point()
                    and src.numel() >= self.n_min):
                s = self.sites[_site()]
                s[0] += 1
                s[1] += src.numel() * src.element_size() + out.numel() * out.element_size()
                s[2] = f"{tuple(src.shape)} {str(src.dtype)[6:]} -> {str(out.dtype)[6:]}"
        return out


def main(argv):
    N = int(argv[0]) if argv else 600
    torch.manual_seed(0)
    m = E2FormerV2(load_config(FIX / "v15" / "config.yaml")).float().set_precision("bf16")
    for p in m.parameters():
        p.requires_grad_(False)
    blk = m.blocks[0]
    C = blk.norm_attn.weight.shape[1]
    x = torch.randn(N, 9, C, requires_grad=True)
    system = torch.randn(1, C)
    U = torch.randn(N, 3, 9, C)
    parts = {
        "attn_input (norm + system row)": lambda x: blk.attn_input(x, system),
        "q / k / v projections": lambda x: blk.attn.qkv(x),
        "attention output part of U": lambda x: blk.attn.node_part(U + 0 * x[:, :1, None], torch.float32),
        "FFN (norm + gated FFN)": lambda x: blk.ffn.parts(blk.norm_ffn.parts(x)),
        "whole node_part (output part, residual, FFN)": lambda x: blk.node_part(x, U),
    }
    print(f"# bf16 casts of one V1.5 block's node-level parts, forward, N = {N} atoms (CPU autocast, bf16)\n")
    total = 0
    for name, fn in parts.items():
        log = _Casts(N)
        with torch.autocast("cpu", dtype=torch.bfloat16), log:
            fn(x)
        part = sum(s[1] for s in log.sites.values()) / N
        total += part
        print(f"## {name}: {part / 1e3:.1f} KB per atom in {sum(s[0] for s in log.sites.values())} casts")
        for site, (n, b, shape) in sorted(log.sites.items(), key=lambda kv: -kv[1][1]):
            print(f"  {b / N / 1e3:7.1f} KB/atom  x{n}  {shape:34s} {site}")
        print()
    print(f"total, forward: {total / 1e3:.1f} KB per atom per block (the backward casts the gradients of those "
          f"that need one, about as much again)")


if __name__ == "__main__":
    main(sys.argv[1:])
