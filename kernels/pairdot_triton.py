"""The query / key invariants (``SO3ToScalar.scalars``) as one Triton kernel each way (reference:
``pairdot_reference``).

``pairdot(a0 [N, 2h], a1 [N, 3, 2h], a2 [N, 5, 2h], bias [h]) -> s [N, 3h]`` reads each projection once and writes
the invariants once, in the layout the next Linear takes.  The PyTorch form runs a product and a sum per degree
(the [N, 2l+1, h] products go to memory and back) and a cat; its backward runs two products per degree and the
cat of the split's backward.  Per program: BLOCK_N atoms x BLOCK_H channels of the three degrees, in float32
whatever the input dtype (bf16 under autocast: loaded and converted; the result in the PyTorch form's dtype, float32
with the float32 bias).
Backward: da = the other half times ds, in one kernel; d(bias) = sum over atoms of d(s0) a0[:, h:].  Double
backward (training) goes through the reference.

``pairdot_groups(a0 [N, G 2h], a1 [N, 3, G 2h], a2 [N, 5, G 2h], (bias_1 .. bias_G)) -> (s_1 .. s_G)`` (session 17): G
such problems side by side in one projection (group g: columns g 2h .. (g + 1) 2h), e.g. the query's and the key's
from one GEMM per degree; the kernels read and write the groups' columns in place (row width ``LD`` = G 2h), so the
projection has one consumer and its gradient is written once, with no slices.

On by default for CUDA tensors since session 14 (H200: checked against float64, +15-36 % end to end with the other
two node-level kernels); ``E2F_PAIRDOT_KERNEL=0`` opts out.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._node_jit import TILE_N, TILE_W, TILE_WARPS, atom_tile, tile_grid, to_out
from ._node_switch import env_switch, launch_device
from .pairdot_reference import pairdot_reference


def pairdot_kernel_enabled() -> bool:
    """``E2F_PAIRDOT_KERNEL``: "1" runs the invariants with this module's kernels (CUDA tensors, or under the
    Triton interpreter); "0" keeps PyTorch.  On by default for CUDA
    tensors since session 14 (checked against float64 and timed on an H200); the interpreter needs an explicit "1"."""
    return env_switch("E2F_PAIRDOT_KERNEL")


@triton.jit
def _degree_dot(A, n2, j2, mask, M: tl.constexpr, H: tl.constexpr, LD: tl.constexpr):
    """sum_m A[n, m, :h] * A[n, m, h:2h] of a degree's projection A [N, M, LD] (M = 2l + 1; LD >= 2h elements per
    row, A pointing at the group's first column), in float32."""
    acc = tl.zeros(mask.shape, dtype=tl.float32)
    for m in tl.static_range(M):
        off = n2 * (M * LD) + m * LD + j2
        acc += (tl.load(A + off, mask=mask, other=0.0).to(tl.float32)
                * tl.load(A + off + H, mask=mask, other=0.0).to(tl.float32))
    return acc


@triton.jit
def _degree_dot_bwd(A, DA, g, n2, j2, mask, M: tl.constexpr, H: tl.constexpr, GRAD_BF16: tl.constexpr,
                    LD: tl.constexpr):
    """DA = d/dA of _degree_dot for its upstream gradient g: each half times g and the other half (DA laid out as
    A)."""
    for m in tl.static_range(M):
        off = n2 * (M * LD) + m * LD + j2
        x = tl.load(A + off, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(A + off + H, mask=mask, other=0.0).to(tl.float32)
        tl.store(DA + off, to_out(g * y, GRAD_BF16), mask=mask)
        tl.store(DA + off + H, to_out(g * x, GRAD_BF16), mask=mask)


@triton.jit
def _pairdot_fwd_kernel(A0, A1, A2, B, S, N, H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                        OUT_BF16: tl.constexpr, LD: tl.constexpr):
    # LD: the projections' row width (2H; G 2H for pairdot_groups, A0 .. A2 then point at the group's columns)
    n2, j2, mask = atom_tile(N, H, BLOCK_N, BLOCK_H)
    x = tl.load(A0 + n2 * LD + j2, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(A0 + n2 * LD + H + j2, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + j2, mask=j2 < H, other=0.0).to(tl.float32)
    # float32, or bf16 for lin1's bf16 GEMM (rounded as torch's cast rounds: kernels/_node_jit.py)
    tl.store(S + n2 * (3 * H) + j2, to_out((x + b) * y, OUT_BF16), mask=mask)
    tl.store(S + n2 * (3 * H) + H + j2, to_out(_degree_dot(A1, n2, j2, mask, 3, H, LD), OUT_BF16), mask=mask)
    tl.store(S + n2 * (3 * H) + 2 * H + j2, to_out(_degree_dot(A2, n2, j2, mask, 5, H, LD), OUT_BF16), mask=mask)


@triton.jit
def _pairdot_bwd_kernel(A0, A1, A2, B, DS, DA0, DA1, DA2, N, H: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_H: tl.constexpr, GRAD_BF16: tl.constexpr, LD: tl.constexpr):
    # the gradients in the projections' dtype: float32, or bf16 rounded to nearest even by to_out (as torch's
    # cast; Triton's own float32 -> bf16 conversion truncates under the interpreter)
    n2, j2, mask = atom_tile(N, H, BLOCK_N, BLOCK_H)
    g = tl.load(DS + n2 * (3 * H) + j2, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(A0 + n2 * LD + j2, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(A0 + n2 * LD + H + j2, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + j2, mask=j2 < H, other=0.0).to(tl.float32)
    tl.store(DA0 + n2 * LD + j2, to_out(g * y, GRAD_BF16), mask=mask)
    tl.store(DA0 + n2 * LD + H + j2, to_out(g * (x + b), GRAD_BF16), mask=mask)
    g = tl.load(DS + n2 * (3 * H) + H + j2, mask=mask, other=0.0).to(tl.float32)
    _degree_dot_bwd(A1, DA1, g, n2, j2, mask, 3, H, GRAD_BF16, LD)
    g = tl.load(DS + n2 * (3 * H) + 2 * H + j2, mask=mask, other=0.0).to(tl.float32)
    _degree_dot_bwd(A2, DA2, g, n2, j2, mask, 5, H, GRAD_BF16, LD)


def pairdot(a0: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, bias: torch.Tensor,
            out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """s [N, 3h] of a0 [N, 2h], a1 [N, 3, 2h], a2 [N, 5, 2h], bias [h] by the kernels (``pairdot_reference``);
    differentiable in every input, any order.  ``out_dtype``: None (the PyTorch form's dtype), float32, or bf16
    where s feeds only a matrix product under bf16 autocast (computed in float32 and rounded as the cast would
    round it: bit-identical, one cast pass less each way; the backward reads the bf16 gradient directly)."""
    if out_dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"pairdot: out_dtype must be None, float32 or bfloat16, got {out_dtype}")
    N, h2 = a0.shape
    if h2 % 2 or tuple(a1.shape) != (N, 3, h2) or tuple(a2.shape) != (N, 5, h2) or tuple(bias.shape) != (h2 // 2,):
        raise ValueError(f"pairdot: expected a0 [N, 2h], a1 [N, 3, 2h], a2 [N, 5, 2h], bias [h], got "
                         f"{tuple(a0.shape)}, {tuple(a1.shape)}, {tuple(a2.shape)}, {tuple(bias.shape)}")
    if not (a0.dtype == a1.dtype == a2.dtype):
        raise ValueError(f"pairdot: a0, a1, a2 must share a dtype, got {a0.dtype}, {a1.dtype}, {a2.dtype}")
    return PairDotGroups.apply(a0.contiguous(), a1.contiguous(), a2.contiguous(), out_dtype, bias)[0]


class PairDotGroups(torch.autograd.Function):
    """``pairdot`` (G = 1) and ``pairdot_groups``: G pairdot problems side by side in a0 [N, G 2h], a1 [N, 3, G 2h],
    a2 [N, 5, G 2h] (contiguous), biases [h] each -> G outputs [N, 3h] in ``out_dtype``, None: the projections'
    dtype promoted with the bias's (the PyTorch form's: bf16 projections with a float32 bias give float32)."""

    @staticmethod
    def forward(ctx, a0, a1, a2, out_dtype, *biases):
        G = len(biases)
        N, LD = a0.shape
        H = LD // (2 * G)
        if out_dtype is None:
            out_dtype = torch.promote_types(a0.dtype, biases[0].dtype)
        outs = [torch.empty((N, 3 * H), device=a0.device, dtype=out_dtype) for _ in range(G)]
        if N:
            with launch_device(a0.device):
                for g, (b, s) in enumerate(zip(biases, outs)):
                    c = g * 2 * H
                    _pairdot_fwd_kernel[tile_grid(N, H)](a0[:, c:], a1[:, :, c:], a2[:, :, c:], b.detach().contiguous(),
                                                         s, N, H=H, BLOCK_N=TILE_N, BLOCK_H=TILE_W,
                                                         OUT_BF16=out_dtype == torch.bfloat16, LD=LD,
                                                         num_warps=TILE_WARPS)
        ctx.save_for_backward(a0, a1, a2, *biases)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *ds):
        a0, a1, a2, *biases = ctx.saved_tensors
        G = len(biases)
        N, LD = a0.shape
        H = LD // (2 * G)
        if torch.is_grad_enabled():       # double backward (a force loss): autograd through the reference
            with torch.enable_grad():
                ins = [t if t.requires_grad else t.detach().requires_grad_(True) for t in (a0, a1, a2, *biases)]
                refs, gs = [], []
                for g in range(G):
                    c = slice(g * 2 * H, (g + 1) * 2 * H)
                    if ds[g] is not None:
                        refs.append(pairdot_reference(ins[0][:, c], ins[1][:, :, c], ins[2][:, :, c], ins[3 + g]))
                        gs.append(ds[g].to(refs[-1].dtype))
                grads = torch.autograd.grad(refs, ins, gs, create_graph=True, allow_unused=True)
            need = ctx.needs_input_grad[:3] + ctx.needs_input_grad[4:]
            return (*(g if n else None for g, n in zip(grads[:3], need[:3])), None,
                    *(g if n else None for g, n in zip(grads[3:], need[3:])))
        da0, da1, da2 = torch.empty_like(a0), torch.empty_like(a1), torch.empty_like(a2)
        dbias = []
        with launch_device(a0.device):
            for g in range(G):
                c = g * 2 * H
                dsg = torch.zeros((N, 3 * H), device=a0.device, dtype=a0.dtype) if ds[g] is None else ds[g].contiguous()
                if N:
                    _pairdot_bwd_kernel[tile_grid(N, H)](a0[:, c:], a1[:, :, c:], a2[:, :, c:],
                                                         biases[g].detach().contiguous(), dsg, da0[:, c:],
                                                         da1[:, :, c:], da2[:, :, c:], N, H=H, BLOCK_N=TILE_N,
                                                         BLOCK_H=TILE_W, GRAD_BF16=da0.dtype == torch.bfloat16,
                                                         LD=LD, num_warps=TILE_WARPS)
                dbias.append((dsg[:, :H].float() * a0[:, c + H:c + 2 * H].float()).sum(0).to(biases[g].dtype)
                             if ctx.needs_input_grad[4 + g] else None)
        return (da0, da1, da2, None, *dbias)


def pairdot_groups(a0: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, biases) -> tuple:
    """G = len(biases) pairdot problems side by side: group g is ``pairdot(a0[:, g 2h:(g+1) 2h], a1[..., same],
    a2[..., same], biases[g])``, computed by the kernels reading and writing the groups' columns in place (one
    projection tensor per degree for all groups, and one gradient written into it, without slices).  Differentiable
    in every input, any order (double backward through the reference)."""
    biases = tuple(biases)
    G = len(biases)
    N, w = a0.shape
    if G < 1 or w % (2 * G) or tuple(a1.shape) != (N, 3, w) or tuple(a2.shape) != (N, 5, w) or any(
            tuple(b.shape) != (w // (2 * G),) for b in biases):
        raise ValueError(f"pairdot_groups: expected a0 [N, G 2h], a1 [N, 3, G 2h], a2 [N, 5, G 2h] and G biases [h], "
                         f"got {tuple(a0.shape)}, {tuple(a1.shape)}, {tuple(a2.shape)}, "
                         f"{[tuple(b.shape) for b in biases]}")
    if not (a0.dtype == a1.dtype == a2.dtype) or a0.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pairdot_groups: a0, a1, a2 must share a dtype, float32 or bf16, got {a0.dtype}, "
                         f"{a1.dtype}, {a2.dtype}")
    return PairDotGroups.apply(a0.contiguous(), a1.contiguous(), a2.contiguous(), None, *biases)
