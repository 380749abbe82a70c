"""The gated FFN's gates as one Triton kernel each way (reference: ``gate_reference``).

``gate(g [N, 3C], z1 [N, 3, C], z2 [N, 5, C], c_silu, c_sigmoid) -> (y0 [N, 1, C], y1 [N, 3, C], y2 [N, 5, C])``
reads the gate logits and the first linear's degree parts once and writes the second linear's inputs once.  The
PyTorch form is a silu, two sigmoids, their scalings and two broadcast products forward, and about twice as many
passes backward (the products' gradients, the sums over m, the sigmoids' and silu's derivatives, the cat of the
split's backward).  Per program: a tile of BLOCK_N atoms x BLOCK_C channels, the 3 + 8 rows of each atom.  The
backward recomputes the sigmoids from g.  Computed in float32 for float32 and bf16 inputs; the outputs are written
in ``out_dtype`` (bf16 for a bf16 GEMM: rounded as torch's cast, ``_bf16``).  Double backward (training) goes
through the reference.

On by default on CUDA since session 15 (``E2F_GATE_KERNEL=0`` opts out): checked on an H200 against float64
(``tests/gpu/check_gate.py``: 1.2e-7 forward, 3.6e-7 backward at 1.7M atoms) and timed with V1.5 and radial tables:
10k fp32 11.35 -> 11.87, TF32 17.58 -> 19.99, 100k bf16 2.74 -> 2.79 steps/s (``benchmarks/results/session15_h200.md``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._node_jit import TILE_N, TILE_W, TILE_WARPS, atom_tile, tile_grid, to_out
from ._node_switch import env_switch, float32_or_bf16, launch_device
from .gate_reference import gate_reference


def gate_kernel_enabled() -> bool:
    """``E2F_GATE_KERNEL``: "1" (the default) runs the gates with this module's kernels (float32 / bf16 CUDA tensors,
    or under the Triton interpreter when set explicitly); "0" keeps PyTorch."""
    return env_switch("E2F_GATE_KERNEL")


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _gated_rows(G, Z, Y, n2, c2, mask, col: tl.constexpr, c_sig, M: tl.constexpr, C: tl.constexpr,
                OUT_BF16: tl.constexpr):
    """y_m = c_sig s(g) z_m of a degree's parts Z [N, M, C] (M = 2l + 1), its gate logits in G's columns
    col .. col + C."""
    a = c_sig * _sigmoid(tl.load(G + n2 * (3 * C) + col + c2, mask=mask, other=0.0).to(tl.float32))
    for m in tl.static_range(M):
        z = tl.load(Z + n2 * (M * C) + m * C + c2, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + n2 * (M * C) + m * C + c2, to_out(a * z, OUT_BF16), mask=mask)


@triton.jit
def _gated_rows_bwd(G, Z, DY, DG, DZ, n2, c2, mask, col: tl.constexpr, c_sig, M: tl.constexpr, C: tl.constexpr,
                    G_BF16: tl.constexpr, Z_BF16: tl.constexpr):
    """_gated_rows' backward: dz_m = c_sig s dy_m, dg = c_sig s (1 - s) sum_m dy_m z_m."""
    s = _sigmoid(tl.load(G + n2 * (3 * C) + col + c2, mask=mask, other=0.0).to(tl.float32))
    acc = tl.zeros(mask.shape, dtype=tl.float32)
    for m in tl.static_range(M):
        off = n2 * (M * C) + m * C + c2
        dy = tl.load(DY + off, mask=mask, other=0.0).to(tl.float32)
        acc += dy * tl.load(Z + off, mask=mask, other=0.0).to(tl.float32)
        tl.store(DZ + off, to_out(c_sig * s * dy, Z_BF16), mask=mask)
    tl.store(DG + n2 * (3 * C) + col + c2, to_out(c_sig * s * (1.0 - s) * acc, G_BF16), mask=mask)


@triton.jit
def _gate_fwd_kernel(G, Z1, Z2, Y0, Y1, Y2, N, c_silu, c_sig, C: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_C: tl.constexpr, OUT_BF16: tl.constexpr):
    n2, c2, mask = atom_tile(N, C, BLOCK_N, BLOCK_C)
    g0 = tl.load(G + n2 * (3 * C) + c2, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y0 + n2 * C + c2, to_out(c_silu * g0 * _sigmoid(g0), OUT_BF16), mask=mask)
    _gated_rows(G, Z1, Y1, n2, c2, mask, C, c_sig, 3, C, OUT_BF16)
    _gated_rows(G, Z2, Y2, n2, c2, mask, 2 * C, c_sig, 5, C, OUT_BF16)


@triton.jit
def _gate_bwd_kernel(G, Z1, Z2, DY0, DY1, DY2, DG, DZ1, DZ2, N, c_silu, c_sig, C: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, G_BF16: tl.constexpr, Z_BF16: tl.constexpr):
    n2, c2, mask = atom_tile(N, C, BLOCK_N, BLOCK_C)
    # l = 0: d/dg0 of c_silu g0 s(g0) = c_silu s (1 + g0 (1 - s))
    g0 = tl.load(G + n2 * (3 * C) + c2, mask=mask, other=0.0).to(tl.float32)
    s0 = _sigmoid(g0)
    dy = tl.load(DY0 + n2 * C + c2, mask=mask, other=0.0).to(tl.float32)
    tl.store(DG + n2 * (3 * C) + c2, to_out(dy * c_silu * s0 * (1.0 + g0 * (1.0 - s0)), G_BF16), mask=mask)
    _gated_rows_bwd(G, Z1, DY1, DG, DZ1, n2, c2, mask, C, c_sig, 3, C, G_BF16, Z_BF16)
    _gated_rows_bwd(G, Z2, DY2, DG, DZ2, n2, c2, mask, 2 * C, c_sig, 5, C, G_BF16, Z_BF16)


class Gate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, z1, z2, c_silu, c_sig, out_dtype):
        gc, z1c, z2c = float32_or_bf16(g), float32_or_bf16(z1), float32_or_bf16(z2)
        N, C = z1c.shape[0], z1c.shape[2]
        ys = [torch.empty((N, k, C), device=gc.device, dtype=out_dtype) for k in (1, 3, 5)]
        if N:
            with launch_device(gc.device):
                _gate_fwd_kernel[tile_grid(N, C)](gc, z1c, z2c, *ys, N, float(c_silu), float(c_sig), C=C,
                                                  BLOCK_N=TILE_N, BLOCK_C=TILE_W,
                                                  OUT_BF16=out_dtype == torch.bfloat16, num_warps=TILE_WARPS)
        ctx.save_for_backward(g, z1, z2)
        ctx.c = (float(c_silu), float(c_sig))
        return tuple(ys)

    @staticmethod
    def backward(ctx, dy0, dy1, dy2):
        g, z1, z2 = ctx.saved_tensors
        c_silu, c_sig = ctx.c
        nig = ctx.needs_input_grad
        if torch.is_grad_enabled():       # double backward (a force loss): autograd through the reference
            with torch.enable_grad():
                ins = [t if t.requires_grad else t.detach().requires_grad_(True) for t in (g, z1, z2)]
                ys = gate_reference(*ins, c_silu, c_sig)
                dys = [torch.zeros_like(y) if d is None else d.to(y.dtype) for y, d in zip(ys, (dy0, dy1, dy2))]
                grads = torch.autograd.grad(ys, ins, dys, create_graph=True)
            return (*(gr if need else None for gr, need in zip(grads, nig[:3])), None, None, None)
        gc, z1c, z2c = float32_or_bf16(g), float32_or_bf16(z1), float32_or_bf16(z2)
        N, C = z1c.shape[0], z1c.shape[2]
        dys = [torch.zeros((N, k, C), device=gc.device, dtype=torch.float32) if d is None else float32_or_bf16(d)
               for d, k in zip((dy0, dy1, dy2), (1, 3, 5))]
        dg = torch.empty_like(gc)
        dz1, dz2 = torch.empty_like(z1c), torch.empty_like(z2c)
        if N:
            with launch_device(gc.device):
                _gate_bwd_kernel[tile_grid(N, C)](gc, z1c, z2c, *dys, dg, dz1, dz2, N, c_silu, c_sig, C=C,
                                                  BLOCK_N=TILE_N, BLOCK_C=TILE_W, G_BF16=gc.dtype == torch.bfloat16,
                                                  Z_BF16=z1c.dtype == torch.bfloat16, num_warps=TILE_WARPS)
        return (dg if nig[0] else None, dz1 if nig[1] else None, dz2 if nig[2] else None, None, None, None)


def gate(g: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, c_silu: float, c_sigmoid: float,
         out_dtype: Optional[torch.dtype] = None):
    """(y0 [N, 1, C], y1 [N, 3, C], y2 [N, 5, C]) of g [N, 3C], z1 [N, 3, C], z2 [N, 5, C] by the kernels (see
    ``gate_reference``); differentiable in g, z1, z2, any order.  ``out_dtype``: None (the inputs' dtype, as the
    PyTorch form gives), float32, or bf16."""
    if z1.dim() != 3 or z1.shape[1] != 3 or tuple(z2.shape) != (z1.shape[0], 5, z1.shape[2]) \
            or tuple(g.shape) != (z1.shape[0], 3 * z1.shape[2]):
        raise ValueError(f"gate: expected g [N, 3C], z1 [N, 3, C], z2 [N, 5, C], got {tuple(g.shape)}, "
                         f"{tuple(z1.shape)}, {tuple(z2.shape)}")
    if z1.dtype != z2.dtype:
        raise ValueError(f"gate: z1 and z2 must share a dtype, got {z1.dtype} and {z2.dtype}")
    if out_dtype is None:
        out_dtype = torch.promote_types(g.dtype, z1.dtype)
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"gate: out_dtype must be float32 or bfloat16, got {out_dtype}")
    return Gate.apply(g, z1, z2, c_silu, c_sigmoid, out_dtype)
