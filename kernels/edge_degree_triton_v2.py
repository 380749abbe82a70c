"""Edge-degree embedding, v2 Triton kernels: the default of ``fused_edge_degree`` on CUDA ("auto") since
their first H200 run (benchmarks/results/edge_degree_v2_h200.md), also ``E2FORMER_EDGE_DEGREE_BACKEND=triton_v2``.

Same result as ``edge_degree_triton`` (v1), restructured along the lines of ``attention_triton_v2``
(see benchmarks/results/attention_notes.md, "Edge-degree kernel"):

* The last Linear of each RadialProfile is moved out of the per-edge work (it is linear, and so is the
  aggregation over edges)::

      h[i, m, :] = scale sum_e Y_m(e) u_e (x2_e W2^T + b2) = P[i, m, :] W2^T + A[i, m] b2
      P[i, m, :] = sum_e scale u_e Y_m(e) x2_e   ([N, 9, hid]),   A[i, m] = sum_e scale u_e Y_m(e)

  so the forward kernel writes P and A and one node-level matmul per degree (cuBLAS) gives h.  The
  backward likewise needs only V[i, m, :] = dH[i, m, :] W2 ([N, 9, hid]) and B[i, m] = dH[i, m, :] . b2:
  d/dx2_e = scale u_e sum_m Y_m(e) V[i, m, :] (a rank <= 5 sum of per-node vectors) and
  d/d(Y_m u)_e = scale (x2_e . V[i, m, :] + B[i, m]).  The E x C recompute of the last Linear and the
  E x C x hid dx2 dot of v1 disappear (40 % of the per-edge MACs, and the whole channel loop).
* Every dot has K <= KC (default 32): the RBF Linear in BLOCK_NB chunks, the hid x hid Linear (forward
  recompute and its transposed backward) through a per-program global scratch slot (as in attention v2).
* d/dd through the RBF is computed as sum_f dh0[e, f] G[e, f] with G = phi'(d) W0a^T accumulated next to
  h0 = phi(d) W0a^T from the same weight tile, so the backward has no K = hid dot and no W0a re-read.
* Persistent grid (#SM x progs_per_sm programs looping over target atoms), which bounds the scratch.

Gradients w.r.t. T0, S0, mu, the MLP parameters and double backward use the reference (as v1).
"""
from __future__ import annotations

import os
import threading

import torch
import triton
import triton.language as tl

from .attention_reference import FCParams
from .attention_triton import (_load_edge_tile, _envelope, _layer_norm_silu, _silu_layer_norm_bwd,
                               _block_e, _rbf_chunk, _LAST_COMPILED)
from .attention_triton_v2 import (_bucket, _chunked_dot, _to_scratch, _grid, _launches, _maxnreg, _rbf_window_dd,
                                  _rbf_window_start, _rbf_window_term, _table_cols, _table_pos, rbf_window)
from .edge_degree_reference import EDGE_DEGREE_SCALE
from .edge_degree_triton import _sph9, _N_FIXED, reference_fallback_backward

L_SLICES = ((0, 1), (1, 4), (4, 9))


@triton.jit
def _ed_mlp_v2(l: tl.constexpr, d, i, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, scr,
               gamma, N, nb: tl.constexpr, HID: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_NB: tl.constexpr,
               KC: tl.constexpr, PREC: tl.constexpr, WANT_G: tl.constexpr, cutoff, WIN: tl.constexpr):
    """RadialProfile_l up to x2 (before the last Linear) for one edge tile; with WANT_G (G_FUSED variant) also
    G = d(phi W0a^T)/dd [BLOCK_E, HID].  Returns x2, y0, rstd0, y1, rstd1, G (pre-affine LN outputs y).
    WIN > 0: the first Linear over the WIN RBF centres nearest to each edge's d only (``rbf_window``)."""
    offs_f = tl.arange(0, HID)
    h0 = tl.zeros([BLOCK_E, HID], dtype=tl.float32)
    g0 = tl.zeros([BLOCK_E, HID], dtype=tl.float32)
    if WIN > 0:
        kw = _rbf_window_start(d, cutoff, nb, WIN)
        for w in range(WIN):
            kk, diff, phi = _rbf_window_term(d, mu, kw, w, gamma)
            w0r = tl.load(W0aT + l * (nb * HID) + kk[:, None] * HID + offs_f[None, :])
            h0 += phi[:, None] * w0r
            if WANT_G:
                g0 += (phi * diff * (2.0 * gamma))[:, None] * w0r
    else:
        for k0 in range(0, nb, BLOCK_NB):
            offs_k, mk, diff, phi = _rbf_chunk(d, mu, k0, gamma, nb, BLOCK_NB)
            w0t = tl.load(W0aT + l * (nb * HID) + offs_k[:, None] * HID + offs_f[None, :], mask=mk[:, None],
                          other=0.0)
            h0 = tl.dot(phi, w0t, h0, input_precision=PREC)
            if WANT_G:
                g0 = tl.dot(phi * diff * (2.0 * gamma), w0t, g0, input_precision="ieee")
    h0 += tl.load(pt + (l * N + i) * HID + offs_f)[None, :]
    h0 += tl.load(ps + (l * N + j[:, None]) * HID + offs_f[None, :], mask=mask_e[:, None], other=0.0)
    x1, y0, _n0, rstd0 = _layer_norm_silu(h0, tl.load(ln0w + l * HID + offs_f), tl.load(ln0b + l * HID + offs_f),
                                          HID)
    _to_scratch(scr, x1, BLOCK_E, HID)
    h1 = _chunked_dot(scr, W1T + l * (HID * HID), HID, 0, tl.zeros([BLOCK_E, HID], dtype=tl.float32),
                      BLOCK_E, HID, HID, KC, PREC)
    h1 += tl.load(b1 + l * HID + offs_f)[None, :]
    x2, y1, _n1, rstd1 = _layer_norm_silu(h1, tl.load(ln1w + l * HID + offs_f), tl.load(ln1b + l * HID + offs_f),
                                          HID)
    return x2, y0, rstd0, y1, rstd1, g0


@triton.jit
def _ed_table(l: tl.constexpr, d, i, j, mask_e, tcoef, tslot, tP, tM, th, HID: tl.constexpr):
    """TABLE: x2 of RadialProfile_l (its last hidden layer, columns l HID .. (l + 1) HID of a [rows, 4, 3 HID]
    radial table, see ``attention_reference.table_lookup``) and its d-slope (zero beyond the grid); the attention
    kernels' table helpers, with the target's slot array for the sources too."""
    t, row, live = _table_pos(d, i, j, mask_e, tslot, tslot, tP, tM, th)
    x2, slope_h = _table_cols(tcoef, row, t, mask_e, l * HID, 3 * HID, HID)
    return x2, slope_h * (live / th)[:, None]


@triton.jit
def _target1(it, perm, t_start, PERM: tl.constexpr):
    if PERM:
        return tl.load(perm + t_start + it).to(tl.int64)
    else:
        return it.to(tl.int64)


@triton.jit
def _edge_deg_fwd_kernel_v2(row_ptr, src, vec, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b,
                            P, A, scratch, perm, seg, N, nprog, gamma, cutoff, scale, tcoef, tslot, tP, tM, th,
                            nb: tl.constexpr, HID: tl.constexpr, BLOCK_E: tl.constexpr,
                            BLOCK_NB: tl.constexpr, KC: tl.constexpr, PREC: tl.constexpr, PERM: tl.constexpr,
                            RBF_WIN: tl.constexpr = 0, TABLE: tl.constexpr = False):
    # TABLE: x2 of each RadialProfile read from a radial table (``_ed_table``) instead of the MLP
    pid = tl.program_id(0)
    scr = scratch + pid.to(tl.int64) * (BLOCK_E * HID)
    offs_f = tl.arange(0, HID)
    t_start, count, _n = _bucket(N, N, seg, 1, PERM)   # one target per iteration: blocks = targets
    it = pid
    while it < count:                # persistent loop over target atoms (with PERM: this degree bucket's)
        i = _target1(it, perm, t_start, PERM)
        it += nprog
        offs_e, mask_e, j, rx, ry, rz, d = _load_edge_tile(row_ptr, src, vec, i, BLOCK_E)
        u, _du = _envelope(d, cutoff)
        su = tl.where(mask_e, u, 0.0) * scale
        Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8 = _sph9(rx, ry, rz)
        pb = P + i * (9 * HID) + offs_f
        ab = A + i * 9
        for l in tl.static_range(3):
            if TABLE:
                x2, _xs = _ed_table(l, d, i, j, mask_e, tcoef, tslot, tP, tM, th, HID)
            else:
                x2, _y0, _r0, _y1, _r1, _g = _ed_mlp_v2(l, d, i, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T,
                                                        b1, ln1w, ln1b, scr, gamma, N, nb, HID, BLOCK_E, BLOCK_NB,
                                                        KC, PREC, False, cutoff, RBF_WIN)
            if l == 0:
                tl.store(pb, tl.sum(x2 * su[:, None], 0))
                tl.store(ab, tl.sum(su, 0))
            elif l == 1:
                w1 = su * Y1
                w2 = su * Y2
                w3 = su * Y3
                tl.store(pb + 1 * HID, tl.sum(x2 * w1[:, None], 0))
                tl.store(pb + 2 * HID, tl.sum(x2 * w2[:, None], 0))
                tl.store(pb + 3 * HID, tl.sum(x2 * w3[:, None], 0))
                tl.store(ab + 1, tl.sum(w1, 0))
                tl.store(ab + 2, tl.sum(w2, 0))
                tl.store(ab + 3, tl.sum(w3, 0))
            else:
                w4 = su * Y4
                w5 = su * Y5
                w6 = su * Y6
                w7 = su * Y7
                w8 = su * Y8
                tl.store(pb + 4 * HID, tl.sum(x2 * w4[:, None], 0))
                tl.store(pb + 5 * HID, tl.sum(x2 * w5[:, None], 0))
                tl.store(pb + 6 * HID, tl.sum(x2 * w6[:, None], 0))
                tl.store(pb + 7 * HID, tl.sum(x2 * w7[:, None], 0))
                tl.store(pb + 8 * HID, tl.sum(x2 * w8[:, None], 0))
                tl.store(ab + 4, tl.sum(w4, 0))
                tl.store(ab + 5, tl.sum(w5, 0))
                tl.store(ab + 6, tl.sum(w6, 0))
                tl.store(ab + 7, tl.sum(w7, 0))
                tl.store(ab + 8, tl.sum(w8, 0))


@triton.jit
def _edge_deg_bwd_kernel_v2(row_ptr, src, vec, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, W1,
                            V, B, dvec, scratch, perm, seg, N, nprog, gamma, cutoff, scale, tcoef, tslot, tP, tM,
                            th, nb: tl.constexpr, HID: tl.constexpr, BLOCK_E: tl.constexpr,
                            BLOCK_NB: tl.constexpr, KC: tl.constexpr, PREC: tl.constexpr,
                            G_FUSED: tl.constexpr, PERM: tl.constexpr, RBF_WIN: tl.constexpr = 0,
                            TABLE: tl.constexpr = False):
    # TABLE: x2 and its d-slope from the radial table: dd = sum_f dx2 x2'(d), no MLP backward
    pid = tl.program_id(0)
    scr = scratch + pid.to(tl.int64) * (BLOCK_E * HID)
    offs_f = tl.arange(0, HID)
    t_start, count, _n = _bucket(N, N, seg, 1, PERM)   # one target per iteration: blocks = targets
    it = pid
    while it < count:
        i = _target1(it, perm, t_start, PERM)
        it += nprog
        offs_e, mask_e, j, rx, ry, rz, d = _load_edge_tile(row_ptr, src, vec, i, BLOCK_E)
        u, du_dd = _envelope(d, cutoff)
        su = tl.where(mask_e, u, 0.0) * scale
        Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8 = _sph9(rx, ry, rz)
        vb = V + i * (9 * HID) + offs_f
        bb = B + i * 9
        zero = tl.zeros([BLOCK_E], dtype=tl.float32)
        gu = zero            # sum_m Y_m (x2 . V_m + B_m)  (d loss / d u = scale * gu)
        dd_e = zero          # d loss / d d through phi
        dY1 = zero
        dY2 = zero
        dY3 = zero
        dY4 = zero
        dY5 = zero
        dY6 = zero
        dY7 = zero
        dY8 = zero
        for l in tl.static_range(3):
            if TABLE:
                x2, xs = _ed_table(l, d, i, j, mask_e, tcoef, tslot, tP, tM, th, HID)
            else:
                x2, y0, rstd0, y1, rstd1, g0 = _ed_mlp_v2(l, d, i, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T,
                                                          b1, ln1w, ln1b, scr, gamma, N, nb, HID, BLOCK_E,
                                                          BLOCK_NB, KC, PREC, G_FUSED, cutoff, RBF_WIN)
            if l == 0:
                v0 = tl.load(vb)
                gu += tl.sum(x2 * v0[None, :], 1) + tl.load(bb)
                dx2 = su[:, None] * v0[None, :]
            elif l == 1:
                v1 = tl.load(vb + 1 * HID)
                v2 = tl.load(vb + 2 * HID)
                v3 = tl.load(vb + 3 * HID)
                t1 = tl.sum(x2 * v1[None, :], 1) + tl.load(bb + 1)
                t2 = tl.sum(x2 * v2[None, :], 1) + tl.load(bb + 2)
                t3 = tl.sum(x2 * v3[None, :], 1) + tl.load(bb + 3)
                dY1 += su * t1
                dY2 += su * t2
                dY3 += su * t3
                gu += Y1 * t1 + Y2 * t2 + Y3 * t3
                dx2 = su[:, None] * (Y1[:, None] * v1[None, :] + Y2[:, None] * v2[None, :]
                                     + Y3[:, None] * v3[None, :])
            else:
                v4 = tl.load(vb + 4 * HID)
                v5 = tl.load(vb + 5 * HID)
                v6 = tl.load(vb + 6 * HID)
                v7 = tl.load(vb + 7 * HID)
                v8 = tl.load(vb + 8 * HID)
                t4 = tl.sum(x2 * v4[None, :], 1) + tl.load(bb + 4)
                t5 = tl.sum(x2 * v5[None, :], 1) + tl.load(bb + 5)
                t6 = tl.sum(x2 * v6[None, :], 1) + tl.load(bb + 6)
                t7 = tl.sum(x2 * v7[None, :], 1) + tl.load(bb + 7)
                t8 = tl.sum(x2 * v8[None, :], 1) + tl.load(bb + 8)
                dY4 += su * t4
                dY5 += su * t5
                dY6 += su * t6
                dY7 += su * t7
                dY8 += su * t8
                gu += Y4 * t4 + Y5 * t5 + Y6 * t6 + Y7 * t7 + Y8 * t8
                dx2 = su[:, None] * (Y4[:, None] * v4[None, :] + Y5[:, None] * v5[None, :]
                                     + Y6[:, None] * v6[None, :] + Y7[:, None] * v7[None, :]
                                     + Y8[:, None] * v8[None, :])
            if TABLE:
                dd_e += tl.sum(dx2 * xs, 1)
            else:
                lnw1 = tl.load(ln1w + l * HID + offs_f)
                n1 = y1 * lnw1[None, :] + tl.load(ln1b + l * HID + offs_f)[None, :]
                dh1 = _silu_layer_norm_bwd(dx2, y1, n1, rstd1, lnw1, HID)
                _to_scratch(scr, dh1, BLOCK_E, HID)
                dx1 = _chunked_dot(scr, W1 + l * (HID * HID), HID, 0, tl.zeros([BLOCK_E, HID], dtype=tl.float32),
                                   BLOCK_E, HID, HID, KC, "ieee")
                lnw0 = tl.load(ln0w + l * HID + offs_f)
                n0 = y0 * lnw0[None, :] + tl.load(ln0b + l * HID + offs_f)[None, :]
                dh0 = _silu_layer_norm_bwd(dx1, y0, n0, rstd0, lnw0, HID)
                if G_FUSED:      # G accumulated next to h0 (one W0a pass, but G live through the W1 stage)
                    dd_e += tl.sum(dh0 * g0, 1)
                elif RBF_WIN > 0:   # the same over the edge's RBF window only
                    dd_e += _rbf_window_dd(d, dh0, mu, W0aT + l * (nb * HID), gamma, cutoff, nb, HID, RBF_WIN)
                else:            # dd = sum_k sum_f dh0 * (phi'_k W0a^T_k): linear in G, so chunk by chunk
                    for k0 in range(0, nb, BLOCK_NB):
                        offs_k, mk, diff, phi = _rbf_chunk(d, mu, k0, gamma, nb, BLOCK_NB)
                        w0t = tl.load(W0aT + l * (nb * HID) + offs_k[:, None] * HID + offs_f[None, :],
                                      mask=mk[:, None], other=0.0)
                        gk = tl.dot(phi * diff * (2.0 * gamma), w0t, input_precision="ieee")
                        dd_e += tl.sum(dh0 * gk, 1)

        dd_e += scale * gu * du_dd
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


def _env_int(name: str, default: int) -> int:
    val = os.environ.get(name)
    return int(val) if val else default


def launch_config(hid: int, nb: int, block_e: int) -> dict:
    """Tiles of the v2 kernels (fwd and bwd share them); defaults from sm_90 compile reports, not yet from
    GPU timings.  Overridable with E2F_ED_V2_{KC, BLOCK_NB, NUM_WARPS, PROGS_PER_SM, G_FUSED, MAXNREG}."""
    kc = min(hid, _env_int("E2F_ED_V2_KC", 32))
    bnb = _env_int("E2F_ED_V2_BLOCK_NB", max(16, min(kc, triton.next_power_of_2(nb))))
    nw = _env_int("E2F_ED_V2_NUM_WARPS", 4 if block_e * hid <= 2048 else 8)
    cfg = dict(KC=kc, BLOCK_NB=bnb, num_warps=nw, progs_per_sm=_env_int("E2F_ED_V2_PROGS_PER_SM", 8),
               G_FUSED=bool(_env_int("E2F_ED_V2_G_FUSED", 0)),
               maxnreg=_env_int("E2F_ED_V2_MAXNREG", 0) or None)   # register cap (opt-in: no effect, session 10)
    assert hid % kc == 0 and kc >= 16 and bnb >= 16, cfg
    return cfg


def _last_linear(P, A, p32, H):
    """The MLPs' last Linear at the node level: H[:, m] = P[:, m] W2_l^T + A[:, m] b2_l for the 9 rows m (degree l of
    row m).  One GEMM per row on strided [N, hid] / [N, C] views (row stride 9 * hid / 9 * C), which cuBLAS reads and
    writes in place.  (``torch.matmul`` on the [N, k, hid] slices with ``out=`` ran the l = 0 slice as N batched
    matrix-vector products over a broadcast [N, hid, C] weight: 3.4 ms twice per step at 100k atoms on an H200.)"""
    for l, (lo, hi) in enumerate(L_SLICES):
        w2t = p32[l].W2.t()
        for m in range(lo, hi):
            torch.mm(P[:, m], w2t, out=H[:, m])
        H[:, lo:hi].addcmul_(A[:, lo:hi, None], p32[l].b2)


def _last_linear_bwd(dH, p32, V, Bv):
    """``_last_linear``'s backward to P and A: V[:, m] = dH[:, m] W2_l, Bv[:, m] = dH[:, m] . b2_l."""
    for l, (lo, hi) in enumerate(L_SLICES):
        for m in range(lo, hi):
            torch.mm(dH[:, m], p32[l].W2, out=V[:, m])
        Bv[:, lo:hi] = (dH[:, lo:hi] * p32[l].b2).sum(-1)


def _prep_v2(T0, S0, mu, params, nb):
    f32 = torch.float32
    Tw = T0.shape[1]
    ps_ = [FCParams(*(x.detach().to(f32) for x in p)) for p in params]
    pt = torch.stack([torch.addmm(p.b0, T0.detach().to(f32), p.W0[:, nb:nb + Tw].t()) for p in ps_]).contiguous()
    ps = torch.stack([S0.detach().to(f32) @ p.W0[:, nb + Tw:].t() for p in ps_]).contiguous()
    st = lambda f: torch.stack([f(p) for p in ps_]).contiguous()
    mlp_w = [st(lambda p: p.W0[:, :nb].t()), st(lambda p: p.ln0_w), st(lambda p: p.ln0_b),
             st(lambda p: p.W1.t()), st(lambda p: p.b1), st(lambda p: p.ln1_w), st(lambda p: p.ln1_b)]
    return pt, ps, mu.detach().to(f32).contiguous(), mlp_w, ps_


#: the radial table of the call in progress (edge_degree_triton_v2's ``table``), handed to the autograd Function
#: beside its arguments (as attention_triton_v2._TABLE_ARG)
_TABLE_ARG = threading.local()


def _table_launch_args(table, device):
    """(tcoef, tslot, tP, tM, th, TABLE) for a launch; dummies where there is no table.  The edge-degree table
    has one slot array (targets and sources are the same atoms)."""
    if table is None:
        return (torch.zeros(1, device=device, dtype=torch.float32), torch.zeros(1, device=device, dtype=torch.int32),
                1, 1, 1.0, False)
    coef, slot_t, _slot_s, P, M, h = table
    return (coef.detach().to(device=device, dtype=torch.float32).contiguous(),
            slot_t.to(device=device, dtype=torch.int32).contiguous(), int(P), int(M), float(h), True)


class EdgeDegreeFunctionV2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, row_ptr, src, vec, T0, S0, mu, gamma, cutoff, scale, allow_tf32, max_degree, *flat):
        table = getattr(_TABLE_ARG, "value", None)
        tab_args = _table_launch_args(table, vec.device)
        params = [flat[10 * n:10 * (n + 1)] for n in range(3)]
        N = row_ptr.numel() - 1
        nb = mu.numel()
        hid = params[0][0].shape[0]
        C = params[0][8].shape[0]
        pt, ps, muc, mlp_w, p32 = _prep_v2(T0, S0, mu, params, nb)
        vecc = vec.detach().to(torch.float32).contiguous()
        block_e = _block_e(row_ptr, max_degree)
        prec = "tf32" if allow_tf32 else "ieee"
        win = rbf_window(mu, float(gamma), float(cutoff))
        H = torch.empty((N, 9, C), device=vec.device, dtype=torch.float32)
        launches = []
        if N > 0:
            P = torch.empty((N, 9, hid), device=vec.device, dtype=torch.float32)
            A = torch.empty((N, 9), device=vec.device, dtype=torch.float32)
            rp = row_ptr.contiguous()
            launches = _launches(rp, block_e)
            for be, perm, seg, use_perm in launches:
                cfg = launch_config(hid, nb, be)
                nprog = _grid(N, vec.device, cfg["progs_per_sm"])
                scratch = torch.empty(nprog * be * hid, device=vec.device, dtype=torch.float32)
                _LAST_COMPILED["edge_deg_fwd_v2" + ("" if be == block_e else "_small")] = \
                    _edge_deg_fwd_kernel_v2[(nprog,)](
                        rp, src.contiguous(), vecc, pt, ps, muc, *mlp_w, P, A, scratch, perm, seg, N, nprog,
                        float(gamma), float(cutoff), float(scale), *tab_args[:5],
                        nb=nb, HID=hid, BLOCK_E=be, BLOCK_NB=cfg["BLOCK_NB"], KC=cfg["KC"], PREC=prec,
                        PERM=use_perm, RBF_WIN=win, TABLE=tab_args[5], num_warps=cfg["num_warps"],
                        **_maxnreg(cfg))
            _last_linear(P, A, p32, H)
        ctx.save_for_backward(row_ptr, src, vec, T0, S0, mu, *flat)
        ctx.table = table
        ctx.cfg = (float(gamma), float(cutoff), float(scale), block_e, prec)
        ctx.launches = launches
        ctx.rbf_win = win
        return H

    @staticmethod
    def backward(ctx, dH):
        row_ptr, src, vec, T0, S0, mu, *flat = ctx.saved_tensors
        gamma, cutoff, scale, block_e, prec = ctx.cfg
        nig = ctx.needs_input_grad
        params = [flat[10 * n:10 * (n + 1)] for n in range(3)]
        if ctx.table is not None and (torch.is_grad_enabled() or any(nig[3:6]) or any(nig[_N_FIXED:])):
            raise RuntimeError("a radial table of the edge-degree MLPs is for inference (energies and forces): no "
                               "double backward or parameter gradients through it")
        grads = reference_fallback_backward(nig, dH, row_ptr, src, vec, T0, S0, mu, flat, params, gamma,
                                            cutoff, scale)
        if grads is not None:
            return grads
        tab_args = _table_launch_args(ctx.table, vec.device)
        grads = [None] * (_N_FIXED + len(flat))
        N = row_ptr.numel() - 1
        nb = mu.numel()
        hid = params[0][0].shape[0]
        pt, ps, muc, mlp_w, p32 = _prep_v2(T0, S0, mu, params, nb)
        vecc = vec.detach().to(torch.float32).contiguous()
        dvec = torch.zeros_like(vecc)
        if N > 0:
            dH32 = dH.to(torch.float32)
            V = torch.empty((N, 9, hid), device=vec.device, dtype=torch.float32)
            Bv = torch.empty((N, 9), device=vec.device, dtype=torch.float32)
            _last_linear_bwd(dH32, p32, V, Bv)
            W1 = torch.stack([p.W1 for p in p32]).contiguous()
            rp = row_ptr.contiguous()
            for be, perm, seg, use_perm in ctx.launches:
                cfg = launch_config(hid, nb, be)
                nprog = _grid(N, vec.device, cfg["progs_per_sm"])
                scratch = torch.empty(nprog * be * hid, device=vec.device, dtype=torch.float32)
                _LAST_COMPILED["edge_deg_bwd_v2" + ("" if be == block_e else "_small")] = \
                    _edge_deg_bwd_kernel_v2[(nprog,)](
                        rp, src.contiguous(), vecc, pt, ps, muc, *mlp_w, W1, V, Bv, dvec, scratch, perm, seg,
                        N, nprog, gamma, cutoff, scale, *tab_args[:5],
                        nb=nb, HID=hid, BLOCK_E=be, BLOCK_NB=cfg["BLOCK_NB"], KC=cfg["KC"], PREC=prec,
                        G_FUSED=cfg["G_FUSED"], PERM=use_perm, RBF_WIN=ctx.rbf_win, TABLE=tab_args[5],
                        num_warps=cfg["num_warps"], **_maxnreg(cfg))
        grads[2] = dvec.to(vec.dtype)
        return tuple(grads)


def edge_degree_triton_v2(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff,
                          scale: float = EDGE_DEGREE_SCALE, *, allow_tf32: bool = False,
                          max_degree: int | None = None, table=None):
    """Fused edge-degree embedding (v2 kernels) -> [N, 9, C]; same arguments as ``edge_degree_reference``."""
    flat = [x for p in radial_params for x in FCParams(*p)]
    _TABLE_ARG.value = table
    try:
        return EdgeDegreeFunctionV2.apply(row_ptr, src, vec, T0, S0, mu, gamma, cutoff, scale, allow_tf32,
                                          max_degree, *flat)
    finally:
        _TABLE_ARG.value = None
