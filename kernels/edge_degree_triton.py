"""Fused Triton kernel for the E2Former-V2 edge-degree embedding (see ``edge_degree_reference``), v1.

Not the CUDA default any more (that is v2, ``edge_degree_triton_v2``); selected by ``backend="triton"`` or
``E2FORMER_EDGE_DEGREE_BACKEND=triton``, and by "auto" only if the v2 module failed to import.

One program per target atom, all its edges in one register tile.  For each degree l the RadialProfile MLP
runs on chip (first Linear: RBF part as a chunked ``tl.dot``, the T0[i] / S0[j] parts precomputed per node,
[3, N, hid]); the last Linear is evaluated in channel chunks of BLOCK_C and immediately contracted with
Y_lm(r) u(d) over the tile's edges, so no E x C (or E x hid) tensor touches HBM.  Backward w.r.t. ``vec``
(forces) recomputes everything in a second kernel and needs no atomics (only the target's own edges get
gradients).  Gradients w.r.t. T0, S0, mu, the MLP parameters, and double backward use the reference.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .attention_reference import FCParams
from .attention_triton import (_load_edge_tile, _envelope, _layer_norm_silu, _silu_layer_norm_bwd,
                               _block_e, _rbf_chunk, _LAST_COMPILED)
from .edge_degree_reference import edge_degree_reference, EDGE_DEGREE_SCALE

S3 = math.sqrt(3.0)
S5 = math.sqrt(5.0)
S15 = math.sqrt(15.0)


@triton.jit
def _sph9(rx, ry, rz):
    s3: tl.constexpr = 1.7320508075688772
    s5: tl.constexpr = 2.23606797749979
    s15: tl.constexpr = 3.872983346207417
    return (s3 * rx, s3 * ry, s3 * rz,
            s15 * rx * rz, s15 * rx * ry, s5 * (ry * ry - 0.5 * (rx * rx + rz * rz)), s15 * ry * rz,
            0.5 * s15 * (rz * rz - rx * rx))


@triton.jit
def _radial_hidden(l: tl.constexpr, d, i, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b,
                   gamma, N, nb: tl.constexpr, HID: tl.constexpr, BLOCK_E: tl.constexpr,
                   BLOCK_NB: tl.constexpr, PREC: tl.constexpr):
    offs_f = tl.arange(0, HID)
    h0 = tl.zeros([BLOCK_E, HID], dtype=tl.float32)
    for k0 in range(0, nb, BLOCK_NB):
        offs_k, mk, diff, phi = _rbf_chunk(d, mu, k0, gamma, nb, BLOCK_NB)
        w0t = tl.load(W0aT + l * (nb * HID) + offs_k[:, None] * HID + offs_f[None, :], mask=mk[:, None],
                      other=0.0)
        h0 += tl.dot(phi, w0t, input_precision=PREC)
    h0 += tl.load(pt + (l * N + i) * HID + offs_f)[None, :]
    h0 += tl.load(ps + (l * N + j[:, None]) * HID + offs_f[None, :], mask=mask_e[:, None], other=0.0)
    x1, y0, n0, rstd0 = _layer_norm_silu(h0, tl.load(ln0w + l * HID + offs_f), tl.load(ln0b + l * HID + offs_f),
                                         HID)
    w1t = tl.load(W1T + l * (HID * HID) + offs_f[:, None] * HID + offs_f[None, :])
    h1 = tl.dot(x1, w1t, input_precision=PREC) + tl.load(b1 + l * HID + offs_f)[None, :]
    x2, y1, n1, rstd1 = _layer_norm_silu(h1, tl.load(ln1w + l * HID + offs_f), tl.load(ln1b + l * HID + offs_f),
                                         HID)
    return x2, y0, n0, rstd0, y1, n1, rstd1


@triton.jit
def _edge_deg_fwd_kernel(row_ptr, src, vec, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, W2T, b2,
                         Hout, gamma, cutoff, scale, N,
                         nb: tl.constexpr, C: tl.constexpr, HID: tl.constexpr, BLOCK_E: tl.constexpr,
                         BLOCK_NB: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    offs_e, mask_e, j, rx, ry, rz, d = _load_edge_tile(row_ptr, src, vec, i, BLOCK_E)
    u, _du = _envelope(d, cutoff)
    su = tl.where(mask_e, u, 0.0) * scale
    Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8 = _sph9(rx, ry, rz)
    offs_f = tl.arange(0, HID)
    for l in tl.static_range(3):
        x2, _a, _b, _c, _d, _e, _f = _radial_hidden(l, d, i, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1,
                                                    ln1w, ln1b, gamma, N, nb, HID, BLOCK_E, BLOCK_NB, PREC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            w2t = tl.load(W2T + l * (HID * C) + offs_f[:, None] * C + offs_c[None, :])
            out = tl.dot(x2, w2t, input_precision=PREC) + tl.load(b2 + l * C + offs_c)[None, :]
            wu = out * su[:, None]
            hb = Hout + i * (9 * C) + offs_c
            if l == 0:
                tl.store(hb, tl.sum(wu, 0))
            elif l == 1:
                tl.store(hb + 1 * C, tl.sum(wu * Y1[:, None], 0))
                tl.store(hb + 2 * C, tl.sum(wu * Y2[:, None], 0))
                tl.store(hb + 3 * C, tl.sum(wu * Y3[:, None], 0))
            else:
                tl.store(hb + 4 * C, tl.sum(wu * Y4[:, None], 0))
                tl.store(hb + 5 * C, tl.sum(wu * Y5[:, None], 0))
                tl.store(hb + 6 * C, tl.sum(wu * Y6[:, None], 0))
                tl.store(hb + 7 * C, tl.sum(wu * Y7[:, None], 0))
                tl.store(hb + 8 * C, tl.sum(wu * Y8[:, None], 0))


@triton.jit
def _edge_deg_bwd_kernel(row_ptr, src, vec, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, W2T, b2,
                         W0a, W1, W2, dH, dvec, gamma, cutoff, scale, N,
                         nb: tl.constexpr, C: tl.constexpr, HID: tl.constexpr, BLOCK_E: tl.constexpr,
                         BLOCK_NB: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    offs_e, mask_e, j, rx, ry, rz, d = _load_edge_tile(row_ptr, src, vec, i, BLOCK_E)
    u, du_dd = _envelope(d, cutoff)
    u = tl.where(mask_e, u, 0.0)
    su = u * scale
    Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8 = _sph9(rx, ry, rz)
    offs_f = tl.arange(0, HID)
    zero = tl.zeros([BLOCK_E], dtype=tl.float32)
    gu = zero            # d loss / d u  (times 1)
    dd_e = zero          # d loss / d d  through phi
    dY1 = zero
    dY2 = zero
    dY3 = zero
    dY4 = zero
    dY5 = zero
    dY6 = zero
    dY7 = zero
    dY8 = zero
    for l in tl.static_range(3):
        x2, y0, n0, rstd0, y1, n1, rstd1 = _radial_hidden(
            l, d, i, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, gamma, N, nb, HID,
            BLOCK_E, BLOCK_NB, PREC)
        dx2 = tl.zeros([BLOCK_E, HID], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            w2t = tl.load(W2T + l * (HID * C) + offs_f[:, None] * C + offs_c[None, :])
            out = tl.dot(x2, w2t, input_precision=PREC) + tl.load(b2 + l * C + offs_c)[None, :]
            gb = dH + i * (9 * C) + offs_c
            if l == 0:
                g0 = tl.load(gb)
                sY = tl.zeros([BLOCK_E, BLOCK_C], dtype=tl.float32) + g0[None, :]
            elif l == 1:
                g1 = tl.load(gb + 1 * C)
                g2 = tl.load(gb + 2 * C)
                g3 = tl.load(gb + 3 * C)
                sY = Y1[:, None] * g1[None, :] + Y2[:, None] * g2[None, :] + Y3[:, None] * g3[None, :]
                dY1 += su * tl.sum(out * g1[None, :], 1)
                dY2 += su * tl.sum(out * g2[None, :], 1)
                dY3 += su * tl.sum(out * g3[None, :], 1)
            else:
                g4 = tl.load(gb + 4 * C)
                g5 = tl.load(gb + 5 * C)
                g6 = tl.load(gb + 6 * C)
                g7 = tl.load(gb + 7 * C)
                g8 = tl.load(gb + 8 * C)
                sY = (Y4[:, None] * g4[None, :] + Y5[:, None] * g5[None, :] + Y6[:, None] * g6[None, :]
                      + Y7[:, None] * g7[None, :] + Y8[:, None] * g8[None, :])
                dY4 += su * tl.sum(out * g4[None, :], 1)
                dY5 += su * tl.sum(out * g5[None, :], 1)
                dY6 += su * tl.sum(out * g6[None, :], 1)
                dY7 += su * tl.sum(out * g7[None, :], 1)
                dY8 += su * tl.sum(out * g8[None, :], 1)
            gu += scale * tl.sum(out * sY, 1)
            dout = tl.where(mask_e[:, None], sY * su[:, None], 0.0)
            w2 = tl.load(W2 + l * (C * HID) + offs_c[:, None] * HID + offs_f[None, :])     # [BLOCK_C, HID]
            dx2 += tl.dot(dout, w2, input_precision="ieee")
        dh1 = _silu_layer_norm_bwd(dx2, y1, n1, rstd1, tl.load(ln1w + l * HID + offs_f), HID)
        w1 = tl.load(W1 + l * (HID * HID) + offs_f[:, None] * HID + offs_f[None, :])
        dx1 = tl.dot(dh1, w1, input_precision="ieee")
        dh0 = _silu_layer_norm_bwd(dx1, y0, n0, rstd0, tl.load(ln0w + l * HID + offs_f), HID)
        for k0 in range(0, nb, BLOCK_NB):
            offs_k, mk, diff, phi = _rbf_chunk(d, mu, k0, gamma, nb, BLOCK_NB)
            w0 = tl.load(W0a + l * (HID * nb) + offs_f[:, None] * nb + offs_k[None, :], mask=mk[None, :],
                         other=0.0)
            dphi = tl.dot(dh0, w0, input_precision="ieee")
            dd_e += tl.sum(dphi * phi * (2.0 * gamma) * diff, 1)

    dd_e += gu * du_dd
    s3: tl.constexpr = 1.7320508075688772
    s5: tl.constexpr = 2.23606797749979
    s15: tl.constexpr = 3.872983346207417
    drx = s3 * dY1 + s15 * (rz * dY4 + ry * dY5) - s5 * rx * dY6 - s15 * rx * dY8
    dry = s3 * dY2 + s15 * rx * dY5 + 2.0 * s5 * ry * dY6 + s15 * rz * dY7
    drz = s3 * dY3 + s15 * rx * dY4 - s5 * rz * dY6 + s15 * ry * dY7 + s15 * rz * dY8
    rdot = drx * rx + dry * ry + drz * rz
    tl.store(dvec + offs_e * 3 + 0, dd_e * rx + (drx - rdot * rx) / d, mask=mask_e)
    tl.store(dvec + offs_e * 3 + 1, dd_e * ry + (dry - rdot * ry) / d, mask=mask_e)
    tl.store(dvec + offs_e * 3 + 2, dd_e * rz + (drz - rdot * rz) / d, mask=mask_e)


def _prep(T0, S0, mu, params, nb):
    f32 = torch.float32
    Tw = T0.shape[1]
    ps_ = [FCParams(*(x.detach().to(f32) for x in p)) for p in params]
    pt = torch.stack([torch.addmm(p.b0, T0.detach().to(f32), p.W0[:, nb:nb + Tw].t()) for p in ps_]).contiguous()
    ps = torch.stack([S0.detach().to(f32) @ p.W0[:, nb + Tw:].t() for p in ps_]).contiguous()
    st = lambda f: torch.stack([f(p) for p in ps_]).contiguous()
    fwd_w = [st(lambda p: p.W0[:, :nb].t()), st(lambda p: p.ln0_w), st(lambda p: p.ln0_b),
             st(lambda p: p.W1.t()), st(lambda p: p.b1), st(lambda p: p.ln1_w), st(lambda p: p.ln1_b),
             st(lambda p: p.W2.t()), st(lambda p: p.b2)]
    bwd_w = [st(lambda p: p.W0[:, :nb]), st(lambda p: p.W1), st(lambda p: p.W2)]
    return pt, ps, mu.detach().to(f32).contiguous(), fwd_w, bwd_w


_N_FIXED = 11   # EdgeDegreeFunction.forward's arguments before the flattened radial-MLP parameters


def reference_fallback_backward(nig, dH, row_ptr, src, vec, T0, S0, mu, flat, params, gamma, cutoff, scale):
    """Shared by the v1 and v2 edge-degree Functions: gradients other than d/d(vec), and double backward,
    come from autograd through the PyTorch reference. Returns the gradient tuple, or None when only d/d(vec)
    is wanted (the fused backward kernel's job)."""
    if torch.is_grad_enabled() or nig[3] or nig[4] or nig[5] or any(nig[_N_FIXED:]):
        grads = [None] * (_N_FIXED + len(flat))
        inputs = {2: vec, 3: T0, 4: S0, 5: mu}
        for n, x in enumerate(flat):
            inputs[_N_FIXED + n] = x
        wanted = [idx for idx in inputs if nig[idx]]
        with torch.enable_grad():
            out = edge_degree_reference(row_ptr, src, vec, T0, S0, [FCParams(*p) for p in params], mu,
                                        gamma, cutoff, scale)
            res = torch.autograd.grad(out, [inputs[k] for k in wanted], dH,
                                      create_graph=torch.is_grad_enabled(), allow_unused=True)
        for idx, gr in zip(wanted, res):
            grads[idx] = gr if gr is not None else torch.zeros_like(inputs[idx])
        return tuple(grads)
    if not nig[2]:
        return tuple([None] * (_N_FIXED + len(flat)))
    return None


class EdgeDegreeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, row_ptr, src, vec, T0, S0, mu, gamma, cutoff, scale, allow_tf32, max_degree, *flat):
        params = [flat[10 * n:10 * (n + 1)] for n in range(3)]
        N = row_ptr.numel() - 1
        nb = mu.numel()
        hid = params[0][0].shape[0]
        C = params[0][8].shape[0]
        pt, ps, muc, fwd_w, _ = _prep(T0, S0, mu, params, nb)
        vecc = vec.detach().to(torch.float32).contiguous()
        block_e = _block_e(row_ptr, max_degree)
        block_nb = min(64, triton.next_power_of_2(nb))
        block_c = min(64, C)
        prec = "tf32" if allow_tf32 else "ieee"
        nw = 4 if block_e * hid <= 2048 else 8
        H = torch.empty((N, 9, C), device=vec.device, dtype=torch.float32)
        if N > 0:
            _LAST_COMPILED["edge_deg_fwd"] = _edge_deg_fwd_kernel[(N,)](
                row_ptr.contiguous(), src.contiguous(), vecc, pt, ps, muc, *fwd_w, H,
                float(gamma), float(cutoff), float(scale), N,
                nb=nb, C=C, HID=hid, BLOCK_E=block_e, BLOCK_NB=block_nb, BLOCK_C=block_c, PREC=prec,
                num_warps=nw)
        ctx.save_for_backward(row_ptr, src, vec, T0, S0, mu, *flat)
        ctx.cfg = (float(gamma), float(cutoff), float(scale), block_e, block_nb, block_c, prec, nw)
        return H

    @staticmethod
    def backward(ctx, dH):
        row_ptr, src, vec, T0, S0, mu, *flat = ctx.saved_tensors
        gamma, cutoff, scale, block_e, block_nb, block_c, prec, nw = ctx.cfg
        nig = ctx.needs_input_grad
        params = [flat[10 * n:10 * (n + 1)] for n in range(3)]
        grads = reference_fallback_backward(nig, dH, row_ptr, src, vec, T0, S0, mu, flat, params, gamma,
                                            cutoff, scale)
        if grads is not None:
            return grads
        grads = [None] * (_N_FIXED + len(flat))
        N = row_ptr.numel() - 1
        nb = mu.numel()
        hid = params[0][0].shape[0]
        C = params[0][8].shape[0]
        pt, ps, muc, fwd_w, bwd_w = _prep(T0, S0, mu, params, nb)
        vecc = vec.detach().to(torch.float32).contiguous()
        dvec = torch.zeros_like(vecc)
        if N > 0:
            _LAST_COMPILED["edge_deg_bwd"] = _edge_deg_bwd_kernel[(N,)](
                row_ptr.contiguous(), src.contiguous(), vecc, pt, ps, muc, *fwd_w, *bwd_w,
                dH.to(torch.float32).contiguous(), dvec, gamma, cutoff, scale, N,
                nb=nb, C=C, HID=hid, BLOCK_E=block_e, BLOCK_NB=block_nb, BLOCK_C=block_c, PREC=prec,
                num_warps=nw)
        grads[2] = dvec.to(vec.dtype)
        return tuple(grads)


def edge_degree_triton(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff,
                       scale: float = EDGE_DEGREE_SCALE, *, allow_tf32: bool = False,
                       max_degree: int | None = None):
    """Fused edge-degree embedding -> [N, 9, C]; same arguments as ``edge_degree_reference``."""
    flat = [x for p in radial_params for x in FCParams(*p)]
    return EdgeDegreeFunction.apply(row_ptr, src, vec, T0, S0, mu, gamma, cutoff, scale, allow_tf32,
                                    max_degree, *flat)
