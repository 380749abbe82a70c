"""The attention's Clebsch-Gordan contraction as one Triton kernel each way (reference: ``cg_reference``).

``cg_contract(U, cg) -> (T0 [N, C], T1 [N, 3, 3C], T2 [N, 5, 2C])`` reads U [N, 3, 9, C] once and writes the three
GEMM-ready tensors of ``Attention.node_part`` once.  The PyTorch form (an einsum, which runs as a permuted copy of
U, one [20, 27] x [27, N C] product and a permuted copy back, then two cats) moves about 3x the bytes forward and
again in the backward.  Per program: a block of BLOCK consecutive (atom, channel) pairs; T = CGM [20, 27] @ U
[27, BLOCK] as one exact-fp32 dot (rows padded to 32), each T row stored where its degree / path belongs.  The
backward is the transpose, dU = CGM^T dT, and each direction is the other's backward, so double backward works.

On by default for CUDA tensors since session 14 (H200: checked against float64, +15-36 % end to end with the other
two node-level kernels); ``E2F_CG_KERNEL=0`` opts out.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._node_jit import to_out
from ._node_switch import env_switch, float32_or_bf16, launch_device
from .cg_reference import cg_matrix


def cg_kernel_enabled() -> bool:
    """``E2F_CG_KERNEL``: "1" runs the contraction with this module's kernels (float32 CUDA tensors, or under the
    Triton interpreter); "0" keeps the einsum.  On by default for CUDA
    tensors since session 14 (checked against float64 and timed on an H200); the interpreter needs an explicit "1"."""
    return env_switch("E2F_CG_KERNEL")


@triton.jit
def _t_offsets(n, c, r, C: tl.constexpr):
    """Offsets of T row r (a [32] vector, 20 valid) of atom n, channel c (BLOCK vectors) in T0, T1, T2, and
    their masks (``cg_reference``: T1[n, i, p C + c] = T[n, 1 + 3 p + i, c], T2[n, i, p C + c] = T[n, 10 + 5 p + i,
    c])."""
    r2 = r[:, None]
    p1 = (r2 - 1) // 3
    i1 = (r2 - 1) - 3 * p1
    p2 = (r2 - 10) // 5
    i2 = (r2 - 10) - 5 * p2
    o0 = n[None, :] * C + c[None, :] + 0 * r2
    o1 = n[None, :] * (9 * C) + i1 * (3 * C) + p1 * C + c[None, :]
    o2 = n[None, :] * (10 * C) + i2 * (2 * C) + p2 * C + c[None, :]
    return o0, o1, o2, r2 == 0, (r2 >= 1) & (r2 < 10), (r2 >= 10) & (r2 < 20)


@triton.jit
def _cg_fwd_kernel(U, CGM, T0, T1, T2, total, C: tl.constexpr, BLOCK: tl.constexpr, OUT_BF16: tl.constexpr):
    # (atom, channel) pairs, channel fastest; int64: U's offsets pass 2^31 from ~310k atoms at C = 256
    col = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = col < total
    n = col // C
    c = col - n * C
    r = tl.arange(0, 32)
    j = tl.arange(0, 32)
    cgm = tl.load(CGM + r[:, None] * 27 + j[None, :], mask=(r[:, None] < 20) & (j[None, :] < 27), other=0.0)
    u = tl.load(U + n[None, :] * (27 * C) + j[:, None] * C + c[None, :], mask=(j[:, None] < 27) & live[None, :],
                other=0.0)
    t = tl.dot(cgm, u, input_precision="ieee")                  # [32, BLOCK]; rows >= 20 are zero
    o0, o1, o2, m0, m1, m2 = _t_offsets(n, c, r, C)
    lv = live[None, :]
    t = to_out(t, OUT_BF16)          # float32, or bf16 for a bf16 GEMM (rounded as torch's cast rounds)
    tl.store(T0 + o0, t, mask=m0 & lv)
    tl.store(T1 + o1, t, mask=m1 & lv)
    tl.store(T2 + o2, t, mask=m2 & lv)


@triton.jit
def _cg_adj_kernel(T0, T1, T2, CGMT, U, total, C: tl.constexpr, BLOCK: tl.constexpr):
    col = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)      # int64 offsets, as in the forward
    live = col < total
    n = col // C
    c = col - n * C
    r = tl.arange(0, 32)
    j = tl.arange(0, 32)
    o0, o1, o2, m0, m1, m2 = _t_offsets(n, c, r, C)
    lv = live[None, :]
    # float32 or bf16 gradients (from bf16 GEMMs), each converted exactly to float32
    t = (tl.load(T0 + o0, mask=m0 & lv, other=0.0).to(tl.float32)
         + tl.load(T1 + o1, mask=m1 & lv, other=0.0).to(tl.float32)
         + tl.load(T2 + o2, mask=m2 & lv, other=0.0).to(tl.float32))    # [32 rows r, BLOCK]
    cgmt = tl.load(CGMT + j[:, None] * 20 + r[None, :], mask=(j[:, None] < 27) & (r[None, :] < 20), other=0.0)
    u = tl.dot(cgmt, t, input_precision="ieee")                 # [32 rows j, BLOCK]
    tl.store(U + n[None, :] * (27 * C) + j[:, None] * C + c[None, :], u, mask=(j[:, None] < 27) & lv)


_BLOCK = 128
_NUM_WARPS = 4


def _launch_fwd(U: torch.Tensor, cgm: torch.Tensor, out_dtype: torch.dtype = torch.float32):
    N, C = U.shape[0], U.shape[3]
    T0 = torch.empty((N, C), device=U.device, dtype=out_dtype)
    T1 = torch.empty((N, 3, 3 * C), device=U.device, dtype=out_dtype)
    T2 = torch.empty((N, 5, 2 * C), device=U.device, dtype=out_dtype)
    total = N * C
    if total:
        with launch_device(U.device):
            _cg_fwd_kernel[(triton.cdiv(total, _BLOCK),)](U, cgm, T0, T1, T2, total, C=C, BLOCK=_BLOCK,
                                                          OUT_BF16=out_dtype == torch.bfloat16,
                                                          num_warps=_NUM_WARPS)
    return T0, T1, T2


def _launch_adj(T0: torch.Tensor, T1: torch.Tensor, T2: torch.Tensor, cgm: torch.Tensor) -> torch.Tensor:
    N, C = T0.shape
    U = torch.empty((N, 3, 9, C), device=T0.device, dtype=torch.float32)
    total = N * C
    if total:
        with launch_device(T0.device):
            _cg_adj_kernel[(triton.cdiv(total, _BLOCK),)](T0, T1, T2, cgm.t().contiguous(), U, total, C=C,
                                                          BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return U


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


class CGContract(torch.autograd.Function):
    """U -> (T0, T1, T2) in ``out_dtype``; its backward is CGAdjoint, and CGAdjoint's is this (the map is
    linear)."""

    @staticmethod
    def forward(ctx, U, cgm, out_dtype):
        ctx.save_for_backward(cgm)
        return _launch_fwd(_f32(U), cgm, out_dtype)

    @staticmethod
    def backward(ctx, d0, d1, d2):
        (cgm,) = ctx.saved_tensors
        return CGAdjoint.apply(d0, d1, d2, cgm), None, None


class CGAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, T0, T1, T2, cgm):
        ctx.save_for_backward(cgm)
        return _launch_adj(float32_or_bf16(T0), float32_or_bf16(T1), float32_or_bf16(T2), cgm)

    @staticmethod
    def backward(ctx, dU):
        (cgm,) = ctx.saved_tensors
        d0, d1, d2 = CGContract.apply(dU, cgm, torch.float32)
        return d0, d1, d2, None


def cg_contract(U: torch.Tensor, cg: torch.Tensor, out_dtype: torch.dtype = torch.float32):
    """(T0 [N, C], T1 [N, 3, 3C], T2 [N, 5, 2C]) of U [N, 3, 9, C] and CG [3, 20, 9] (see
    ``cg_reference.cg_contract_reference``), by the kernels; differentiable in U, any order.  Computed in float32
    and written as ``out_dtype``: float32, or bf16 for a caller whose GEMMs run under bf16 autocast (the kernel
    then rounds as the autocast cast would, so the GEMM's inputs and the gradients are bit-identical, and the
    cast's pass is saved both ways)."""
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"cg_contract: out_dtype must be float32 or bfloat16, got {out_dtype}")
    if U.dim() != 4 or U.shape[1:3] != (3, 9) or tuple(cg.shape) != (3, 20, 9):
        raise ValueError(f"cg_contract: U must be [N, 3, 9, C] and CG [3, 20, 9], got {tuple(U.shape)} and "
                         f"{tuple(cg.shape)}")
    cgm = cg_matrix(cg.detach()).to(device=U.device, dtype=torch.float32).contiguous()
    return CGContract.apply(U, cgm, out_dtype)
