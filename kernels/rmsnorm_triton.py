"""The equivariant RMS norm as one Triton kernel each way (reference: ``rmsnorm_reference``).

``rms_norm(x [N, 9, C], weight [3, C], bias [C], eps, extra=None, parts=False)`` reads each atom's features once and
writes the normalised features once: as one [N, 9, C] tensor, or (``parts``) as the degree parts [N, 1, C],
[N, 3, C], [N, 5, C] that ``SO3Linear.parts`` / ``GatedFFN.parts`` take.  The PyTorch form runs about a dozen
passes over [N, 9, C]-sized tensors each way (centring, squares, means, the scaled products, the cat; in the
backward their gradients).  Persistent programs, one atom per step: the 9 x C tile is centred, squared and summed
in registers; the backward recomputes the centred tile, and sums d(weight) / d(bias) per program (only where
they are needed: not for frozen weights), added up afterwards by torch (deterministic, unlike atomics).  Double
backward (training) goes through the reference.

On by default for CUDA tensors since session 14 (H200: checked against float64, +15-36 % end to end with the other
two node-level kernels); ``E2F_RMSNORM_KERNEL=0`` opts out.

``passthrough`` (session 16; on by default since session 17, ``E2F_RMS_RESIDUAL=0`` opts out): the norm also hands
back its input, as an output of its own, for the block's residual sum.  Autograd then gives the norm's backward both
gradients of x, the residual's and the norm's own, and the kernel writes their sum: without it autograd adds them in
a separate pass over [N, 9, C] (read both, write one), twice per block.  H200, V1.5 graphed, alternated in one
process (``benchmarks/results/graphed_rms_res_*_s17_h200.json``): 20k TF32 70.6 -> 69.9 ms per replay, 10k 36.3 ->
36.0 ms; the same energy and forces to 1.0e-6 in float32.

``addend`` (session 17, with ``passthrough``; ``E2F_RMS_ADD``, on by default): the norm of x + a, the sum computed by
the forward kernel and handed back first (written once, for the residual stream), so the residual sum before a norm
is not a pass of its own (an add reads x and a and writes the sum, which the norm then reads again: one read of the
sum saved per norm, seven per V1.5 step).  The backward's dx is the gradient of both x and a.  H200, V1.5 graphed
(``benchmarks/results/graphed_add_*_s17_h200.json``): 20k TF32 68.60 -> 68.32 ms per replay, 10k 35.06 -> 34.92 ms.

Gradients that do not come (``set_materialize_grads(False)``): an unused output's gradient is not made as zeros;
with ``parts`` and only y0's gradient (the final norm, whose l = 0 row alone feeds the energy) the backward kernel
reads no l > 0 gradient at all (``HAS_DY12``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._node_jit import to_out
from ._node_switch import env_switch, float32_or_bf16, launch_device
# persistent programs, 4 per SM (what fits at once: 96 / 128 registers x 128 threads at C = 256)
from .attention_triton_v2 import _grid
from .rmsnorm_reference import rms_norm_reference


def residual_passthrough_enabled() -> bool:
    """``E2F_RMS_RESIDUAL``: "1" (the default since session 17, timed on an H200) lets the blocks take their residual
    stream through the norms' ``passthrough`` where the norm kernel runs (the residual gradient summed in the norm's
    backward kernel); "0" keeps autograd's own sum."""
    return env_switch("E2F_RMS_RESIDUAL", default="1")


def residual_add_enabled() -> bool:
    """``E2F_RMS_ADD``: "1" (the default) lets the blocks hand the residual sum before a norm to the norm kernel
    (``rms_norm(addend=...)``, with the passthrough); "0" keeps the separate add."""
    return env_switch("E2F_RMS_ADD", default="1")


def rmsnorm_kernel_enabled() -> bool:
    """``E2F_RMSNORM_KERNEL``: "1" runs the norm with this module's kernels (float32 CUDA tensors, or under the
    Triton interpreter); "0" keeps PyTorch.  On by default for CUDA
    tensors since session 14 (checked against float64 and timed on an H200); the interpreter needs an explicit "1"."""
    return env_switch("E2F_RMSNORM_KERNEL")


@triton.jit
def _rows(C: tl.constexpr, CP: tl.constexpr):
    """Row / channel index vectors of a 9 x C tile padded to 16 x CP, the tile mask, each row's degree and mean-
    square weight, and the masks of the three degree parts."""
    r = tl.arange(0, 16)
    c = tl.arange(0, CP)
    m2 = (r < 9)[:, None] & (c < C)[None, :]
    deg = tl.where(r == 0, 0, tl.where(r < 4, 1, 2))
    alpha = tl.where(r == 0, 1.0 / 3.0, tl.where(r < 4, 1.0 / 9.0, 1.0 / 15.0))
    p0 = (r == 0)[:, None] & m2
    p1 = ((r >= 1) & (r < 4))[:, None] & m2
    p2 = ((r >= 4) & (r < 9))[:, None] & m2
    return r, c, m2, deg, alpha, p0, p1, p2


@triton.jit
def _centred(X, n64, r, c, m2, p0, C: tl.constexpr):
    x = tl.load(X + n64 * (9 * C) + r[:, None] * C + c[None, :], mask=m2, other=0.0)
    mean0 = tl.sum(tl.sum(tl.where(p0, x, 0.0), axis=1), axis=0) / C
    return tl.where(p0, x - mean0, x)                          # masked lanes stay 0


@triton.jit
def _rms_fwd_kernel(X, W, B, E, Y0, Y1, Y2, SC, N, nprog, s0, s1, s2, eps, A, XS, C: tl.constexpr, CP: tl.constexpr,
                    HAS_E: tl.constexpr, OUT_BF16: tl.constexpr, HAS_ADD: tl.constexpr = False):
    # HAS_ADD: the input is X + A (A [N, 9, C] float32 or bf16, converted exactly, as torch's sum promotes it), the
    # sum written to XS [N, 9, C] float32
    r, c, m2, deg, alpha, p0, p1, p2 = _rows(C, CP)
    w = tl.load(W + deg[:, None] * C + c[None, :], mask=m2, other=0.0)
    b = tl.load(B + c, mask=c < C, other=0.0)
    if HAS_E:
        b += tl.load(E + c, mask=c < C, other=0.0)
    n = tl.program_id(0)
    while n < N:                     # persistent loop over atoms (a while loop: the interpreter cannot iterate
        n64 = n.to(tl.int64)         # range() over runtime scalars)
        n += nprog
        if HAS_ADD:
            off = n64 * (9 * C) + r[:, None] * C + c[None, :]
            xs = tl.load(X + off, mask=m2, other=0.0) + tl.load(A + off, mask=m2, other=0.0).to(tl.float32)
            tl.store(XS + off, xs, mask=m2)
            mean0 = tl.sum(tl.sum(tl.where(p0, xs, 0.0), axis=1), axis=0) / C
            xc = tl.where(p0, xs - mean0, xs)
        else:
            xc = _centred(X, n64, r, c, m2, p0, C)
        nu = tl.sum(tl.sum(xc * xc, axis=1) * alpha, axis=0) / C
        s = 1.0 / tl.sqrt(nu + eps)
        # float32, or bf16 for a bf16 GEMM (rounded as torch's cast rounds)
        y = to_out(xc * s * w + tl.where(p0, b[None, :], 0.0), OUT_BF16)
        cc = c[None, :]
        tl.store(Y0 + n64 * s0 + cc + 0 * r[:, None], y, mask=p0)
        tl.store(Y1 + n64 * s1 + (r[:, None] - 1) * C + cc, y, mask=p1)
        tl.store(Y2 + n64 * s2 + (r[:, None] - 4) * C + cc, y, mask=p2)
        tl.store(SC + n64, s)


@triton.jit
def _rms_bwd_kernel(X, W, SC, DY0, DY1, DY2, t0, t1, t2, DX, PART, RES, N, nprog, C: tl.constexpr,
                    CP: tl.constexpr, NEED_DWB: tl.constexpr, HAS_RES: tl.constexpr = False,
                    HAS_DY12: tl.constexpr = True):
    # HAS_RES: RES [N, 9, C] (float32 or bf16, contiguous) is added to dx (the passthrough's gradient)
    # HAS_DY12: False where only row 0 has a gradient (DY1, DY2 are not read: zero)
    r, c, m2, deg, alpha, p0, p1, p2 = _rows(C, CP)
    w = tl.load(W + deg[:, None] * C + c[None, :], mask=m2, other=0.0)
    acc = tl.zeros((16, CP), dtype=tl.float32)                 # sum over atoms of dy * xc * s, per row
    accb = tl.zeros((CP,), dtype=tl.float32)                   # sum over atoms of dy's row 0
    cc = c[None, :]
    n = tl.program_id(0)
    while n < N:
        n64 = n.to(tl.int64)
        n += nprog
        xc = _centred(X, n64, r, c, m2, p0, C)
        s = tl.load(SC + n64)
        # float32 or bf16 gradients (from bf16 GEMMs), each converted exactly to float32
        dy = tl.load(DY0 + n64 * t0 + cc + 0 * r[:, None], mask=p0, other=0.0).to(tl.float32)
        if HAS_DY12:
            dy += (tl.load(DY1 + n64 * t1 + (r[:, None] - 1) * C + cc, mask=p1, other=0.0).to(tl.float32)
                   + tl.load(DY2 + n64 * t2 + (r[:, None] - 4) * C + cc, mask=p2, other=0.0).to(tl.float32))
        g = dy * w
        xh = xc * s                                              # the normalised tile (no s^3: it underflows)
        dxc = s * (g - (tl.sum(tl.sum(g * xh, axis=1), axis=0) / C) * alpha[:, None] * xh)
        mean0 = tl.sum(tl.sum(tl.where(p0, dxc, 0.0), axis=1), axis=0) / C
        dx = tl.where(p0, dxc - mean0, dxc)
        if HAS_RES:
            dx += tl.load(RES + n64 * (9 * C) + r[:, None] * C + cc, mask=m2, other=0.0).to(tl.float32)
        tl.store(DX + n64 * (9 * C) + r[:, None] * C + cc, dx, mask=m2)
        if NEED_DWB:
            acc += dy * xh
            accb += tl.sum(tl.where(p0, dy, 0.0), axis=0)
    if NEED_DWB:                     # this program's sums -> PART[pid] = [dw0, dw1, dw2, db] (summed on the host side:
        cm = c < C                   # deterministic, unlike atomics)
        base = PART + tl.program_id(0).to(tl.int64) * (4 * C)
        tl.store(base + c, tl.sum(tl.where(p0, acc, 0.0), axis=0), mask=cm)
        tl.store(base + C + c, tl.sum(tl.where(p1, acc, 0.0), axis=0), mask=cm)
        tl.store(base + 2 * C + c, tl.sum(tl.where(p2, acc, 0.0), axis=0), mask=cm)
        tl.store(base + 3 * C + c, accb, mask=cm)


def _launch_fwd(x, weight, bias, extra, eps, outs, strides, addend=None, xsum=None):
    N, C = x.shape[0], x.shape[2]
    sc = torch.empty(N, device=x.device, dtype=torch.float32)
    if N:
        nprog = _grid(N, x.device, 4)
        e = extra if extra is not None else bias
        with launch_device(x.device):
            _rms_fwd_kernel[(nprog,)](x, weight, bias, e, *outs, sc, N, nprog, *strides, float(eps),
                                      x if addend is None else addend, x if xsum is None else xsum, C=C,
                                      CP=triton.next_power_of_2(C), HAS_E=extra is not None,
                                      OUT_BF16=outs[0].dtype == torch.bfloat16, HAS_ADD=addend is not None,
                                      num_warps=4)
    return sc


def _launch_bwd(x, weight, sc, dys, strides, need_dwb: bool, res=None, has_dy12: bool = True):
    N, C = x.shape[0], x.shape[2]
    dx = torch.empty_like(x)
    nprog = _grid(N, x.device, 4) if N else 0
    # (every program writes its row of the sums; not read at all without NEED_DWB; zeros where no program runs, N = 0)
    shape = (max(nprog, 1) if need_dwb else 1, 4, C)
    part = (torch.empty if N else torch.zeros)(shape, device=x.device, dtype=torch.float32)
    if N:
        with launch_device(x.device):
            _rms_bwd_kernel[(nprog,)](x, weight, sc, *dys, *strides, dx, part, dx if res is None else res, N, nprog,
                                      C=C, CP=triton.next_power_of_2(C), NEED_DWB=need_dwb, HAS_RES=res is not None,
                                      HAS_DY12=has_dy12, num_warps=4)
    tot = part.sum(0) if need_dwb else None
    return dx, (tot[:3] if need_dwb else None), (tot[3] if need_dwb else None)


class _RMSNorm(torch.autograd.Function):
    """x [N, 9, C] -> y [N, 9, C] (``parts`` False) or (y0, y1, y2) (``parts`` True); with ``passthrough`` x itself
    first (as this Function's output, so that its gradient comes to this backward); with ``addend`` a the norm of
    x + a, and the sum first (written by the kernel)."""

    @staticmethod
    def forward(ctx, x, weight, bias, extra, eps, parts, out_dtype, passthrough=False, addend=None):
        xc = x.contiguous()
        w, b = weight.detach().contiguous(), bias.detach().contiguous()
        e = None if extra is None else extra.detach().reshape(-1).contiguous()
        N, C = xc.shape[0], xc.shape[2]
        if parts:
            outs = [torch.empty((N, k, C), device=x.device, dtype=out_dtype) for k in (1, 3, 5)]
            strides = (C, 3 * C, 5 * C)
            views = outs
        else:
            y = torch.empty_like(xc, dtype=out_dtype)
            views = [y[:, 0:1], y[:, 1:4], y[:, 4:9]]              # one tensor; each part a view into it
            strides = (9 * C, 9 * C, 9 * C)
        xsum = None
        if addend is not None:
            xsum = torch.empty_like(xc)
            sc = _launch_fwd(xc, w, b, e, eps, views, strides, addend.contiguous(), xsum)
            # the sum (an output) is what the backward normalises again; in a double backward its grad_fn is this
            # node, through which the second-order terms reach x and the addend (the sum's derivative is 1 in each)
            ctx.save_for_backward(xsum, weight, bias, extra, sc)
            ctx.add_dtype = addend.dtype
        else:
            sc = _launch_fwd(xc, w, b, e, eps, views, strides)
            ctx.save_for_backward(x, weight, bias, extra, sc)
            ctx.add_dtype = None
        ctx.eps, ctx.parts, ctx.passthrough = eps, parts, passthrough
        ctx.set_materialize_grads(False)        # (see the module docstring; backward handles the missing ones)
        res = tuple(outs) if parts else (y,)
        if xsum is not None:
            return (xsum,) + res
        if passthrough:      # (an input returned as an output: autograd makes it a view with this Function's grad_fn)
            return (x,) + res
        return res if parts else y

    @staticmethod
    def backward(ctx, *dys):
        x, weight, bias, extra, sc = ctx.saved_tensors
        nig = ctx.needs_input_grad
        g_res = None
        if ctx.passthrough:
            g_res, dys = dys[0], dys[1:]
        if g_res is None and all(d is None for d in dys):
            return (None,) * 9
        N, C = x.shape[0], x.shape[2]
        shapes = [(N, 1, C), (N, 3, C), (N, 5, C)] if ctx.parts else [(N, 9, C)]
        # only y0's gradient (the final norm): the kernel reads no l > 0 gradient
        row0 = ctx.parts and dys[0] is not None and dys[1] is None and dys[2] is None and not torch.is_grad_enabled()
        if not row0:
            dys = [torch.zeros(s, device=x.device, dtype=torch.float32) if d is None else d for d, s in zip(dys, shapes)]
        if torch.is_grad_enabled():       # double backward (a force loss): autograd through the reference
            with torch.enable_grad():
                dy = torch.cat(dys, dim=1) if ctx.parts else dys[0]
                # torch.func.vjp, not autograd.grad: with an addend x is the saved sum, an output of this node, and
                # autograd.grad with it as an input re-entered this node while it ran (it hung); vjp gives the same
                # differentiable products without the engine, and the second-order terms then reach x (and the
                # addend) through this node again
                from torch.func import vjp

                eps, ex = ctx.eps, [] if extra is None else [extra]
                y, pull = vjp(lambda xx, ww, bb, *ee: rms_norm_reference(xx, ww, bb, eps, *ee), x, weight, bias, *ex)
                grads = list(pull(dy.to(y.dtype))) + ([None] if extra is None else [])
            gx = grads[0] if g_res is None else grads[0] + g_res
            out = [gx if nig[0] else None] + [g if need else None for g, need in zip(grads[1:3], nig[1:3])]
            out.append(grads[3] if extra is not None and nig[3] else None)
            da = gx.to(ctx.add_dtype) if ctx.add_dtype is not None and nig[8] else None
            return (*out, None, None, None, None, da)
        xc = x.contiguous()
        if row0:
            d0 = float32_or_bf16(dys[0])
            dyv = [d0, d0, d0]                     # (DY1, DY2 not read)
            strides = (C, 3 * C, 5 * C)
        elif ctx.parts:
            dyv = [float32_or_bf16(d) for d in dys]
            strides = (C, 3 * C, 5 * C)
        else:
            dy = float32_or_bf16(dys[0])
            dyv = [dy[:, 0:1], dy[:, 1:4], dy[:, 4:9]]
            strides = (9 * C, 9 * C, 9 * C)
        need_dwb = bool(nig[1] or nig[2] or (extra is not None and nig[3]))
        res = None if g_res is None else float32_or_bf16(g_res)
        dx, dw, db = _launch_bwd(xc, weight.detach().contiguous(), sc, dyv, strides, need_dwb, res, not row0)
        de = None
        if extra is not None and nig[3]:
            de = db.reshape(extra.shape).to(extra.dtype)
        da = dx.to(ctx.add_dtype) if ctx.add_dtype is not None and nig[8] else None
        return (dx if nig[0] else None, dw.to(weight.dtype) if nig[1] else None,
                db.to(bias.dtype) if nig[2] else None, de, None, None, None, None, da)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
             extra: Optional[torch.Tensor] = None, parts: bool = False, out_dtype: torch.dtype = torch.float32,
             passthrough: bool = False, addend: Optional[torch.Tensor] = None):
    """The equivariant RMS norm of x [N, 9, C] (float32) by the kernels (see ``rmsnorm_reference``); ``extra`` [C]
    (any shape of C elements) is added to the l = 0 row.  Returns y [N, 9, C], or with ``parts`` the contiguous
    degree parts (y0 [N, 1, C], y1 [N, 3, C], y2 [N, 5, C]).  Differentiable in x, weight, bias and extra.
    ``out_dtype``: float32, or bf16 where every consumer is a GEMM under bf16 autocast (computed in float32 and
    rounded as the autocast cast would: the GEMMs' inputs and the gradients are bit-identical, and the cast's
    pass is saved both ways; the backward reads the bf16 gradients directly).  ``passthrough``: x itself (a view of
    it) first, then the above; use it instead of x for the residual sum, whose gradient the backward kernel then
    adds into dx (see the module docstring).  ``addend`` (with ``passthrough``): a [N, 9, C] (float32 or bf16)
    added to x first, by the kernel: the norm of x + a, and the sum (float32, as torch's x + a) first instead of x;
    its gradient is the gradient of both."""
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"rms_norm: out_dtype must be float32 or bfloat16, got {out_dtype}")
    if x.dim() != 3 or x.shape[1] != 9 or tuple(weight.shape) != (3, x.shape[2]) or bias.numel() != x.shape[2]:
        raise ValueError(f"rms_norm: expected x [N, 9, C], weight [3, C], bias [C], got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if extra is not None and extra.numel() != x.shape[2]:
        raise ValueError(f"rms_norm: extra must have C = {x.shape[2]} elements, got shape {tuple(extra.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"rms_norm: the kernels take float32 features, got {x.dtype}")
    if addend is not None:
        if not passthrough:
            raise ValueError("rms_norm: addend needs passthrough=True (the sum is the residual stream)")
        if addend.shape != x.shape or addend.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"rms_norm: addend must be float32 or bf16 of x's shape {tuple(x.shape)}, got "
                             f"{addend.dtype} {tuple(addend.shape)}")
        return _RMSNorm.apply(x, weight, bias, extra, float(eps), bool(parts), out_dtype, True, addend)
    return _RMSNorm.apply(x, weight, bias, extra, float(eps), bool(parts), out_dtype, bool(passthrough), None)
