"""Fused Triton kernels for the E2Former-V2 attention edge part, version 2 (register-blocked).

Same operation, inputs, outputs and autograd semantics as ``attention_triton`` (v1); see
``attention_reference`` for the maths.  The default on CUDA (``fused_attention`` backend "auto" or
"triton_v2"); v1 stays selectable as "triton".  Both softmax modes (official / smooth) via the constexpr
``SMOOTH``.

Why v2
------
v1 keeps every [BLOCK_E, HID] / [BLOCK_E, H] edge tile and the full [HID, HID] / [HID, H] weight operands
live at once; at the V1.5 size (H = 128, HID = 128) that spills 500-750 registers and needs ~150 KB of
shared memory for layout conversions (1 CTA / SM).  v2 never holds a [rows, H], [rows, C] or [HID, HID]
tile in registers:

* Rows: ``BLOCK_T`` targets x ``BLOCK_E`` edge slots per program (row r = t * BLOCK_E + e).  Per-target
  reductions (softmax max / sum, aggregation) are segment reductions over a [BLOCK_T, BLOCK_E, HB] view.
* Edge MLP: layer 1 is chunked over the RBF axis (as v1), or, where the centres are at least 4x the window
  (V1.5: 256), summed over each edge's 32 nearest centres only (``rbf_window``; the rest are below e^-30).  The activations x1 (and x2) [rows, HID] are
  staged in a small per-program global scratch slot (L1/L2 resident, written and read by the same CTA, with
  barriers); layer 2 and 3 are K-chunked dots ``sum_k x[:, k:k+KC] @ W[k:k+KC, :]`` so the weight operand
  in registers is only [KC, HID] or [KC, HB].  Only one [rows, HID] accumulator is live.
* Heads: a loop over head blocks of ``HB`` heads.  Per block: g, w (the block's columns of the last
  Linear), <q, k>, logits, exact per-target softmax (all heads are independent, so nothing is carried
  between blocks).  The aggregation U = sum_e alpha r (x) V (each program owns its targets' rows: no atomics
  in the forward) is, by default, streamed: alpha of every head goes to scratch and each target's edges are
  walked one at a time into [9, C] register accumulators (``_stream_aggregate``; E2F_V2_FWD_AGG=stream).  The
  tiled form (E2F_V2_FWD_AGG=tile) aggregates the block's channels c = h + r * H (r < C / H) one value row m
  at a time with segment sums over the edge axis; it was 2.5x slower at the bundled model's sizes (H200).
* The grid is persistent (``min(#target blocks, #SM * PROGRAMS_PER_SM)`` programs looping over target
  blocks), which bounds the scratch to #programs x rows x HID floats (x3 in the backward).
* Backward: same blocking.  Per head block: aggregation backward (dv by fp32 atomics; E2F_V2_BWD_AGG=tile, the
  default, or split / stream: see ``_attn_bwd_kernel_v2``), softmax backward,
  dq (stored), dk (atomics), and dx2 += dg @ W2g[hb] + dw @ W2w[hb] accumulated in one [rows, HID] tile.
  Then LayerNorm/SiLU backward with the pre-LN activations re-read from scratch, dx1 by a K-chunked dot
  through scratch, and the RBF part down to d(vec).

``tl.dot`` uses ``input_precision="ieee"`` unless ``allow_tf32=True`` (edge-MLP forward dots only);
``fused_attention`` always passes ieee for v2 (faster than TF32 for v2 on an H100, see ``kernels/__init__``).
``E2F_V2_DOT_PREC`` (opt-in, untimed) sets every edge-MLP dot, forward and backward (``dot_precision``).
Gradients w.r.t. t, s, mu and the fc parameters, and double backward, use the PyTorch reference exactly as
v1 does.
"""
from __future__ import annotations

import math
import threading
import os

import torch
import triton
import triton.language as tl

from ._node_switch import env_switch
from .attention_reference import (FCParams, FUSED_N_FIXED, check_softmax, needs_reference_backward,
                                  reference_backward)
from .attention_triton import (_envelope, _rbf_chunk, _softmax_denom, _softmax_shift,  # noqa: F401  (shared)
                               triton_supported, _prep)


# ----------------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _rows(row_ptr, src, vec, i0, N, perm, t_start, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
          PERM: tl.constexpr):
    """The block's edge rows.  Targets: i0 .. i0 + BLOCK_T - 1 (< N), or with PERM the entries
    t_start + i0 + t of ``perm`` for i0 + t < N (N is then the bucket's target count; degree buckets)."""
    R: tl.constexpr = BLOCK_T * BLOCK_E
    offs_r = tl.arange(0, R)
    offs_t = tl.arange(0, BLOCK_T)
    e_loc = offs_r % BLOCK_E
    t_loc = offs_r // BLOCK_E
    # per-target CSR bounds by scalar loads (a vector gather of row_ptr here made the 3.6 compiler fail in
    # TritonGPURemoveLayoutConversions: "mask type matches ptr type")
    start = tl.zeros([R], dtype=tl.int64)
    end = tl.zeros([R], dtype=tl.int64)
    tgt = tl.zeros([R], dtype=tl.int64)
    tgt_t = tl.zeros([BLOCK_T], dtype=tl.int64)
    for tt in tl.static_range(BLOCK_T):
        ok = i0 + tt < N
        if PERM:
            it = tl.load(perm + tl.where(ok, t_start + i0 + tt, 0)).to(tl.int64)
            it = tl.where(ok, it, 0)
        else:
            it = tl.where(ok, i0 + tt, 0)
        s_t = tl.load(row_ptr + it).to(tl.int64)
        e_t = tl.where(ok, tl.load(row_ptr + it + 1).to(tl.int64), s_t)
        start = tl.where(t_loc == tt, s_t, start)
        end = tl.where(t_loc == tt, e_t, end)
        tgt = tl.where(t_loc == tt, it, tgt)
        tgt_t = tl.where(offs_t == tt, it, tgt_t)
    tmask = i0 + offs_t < N
    offs_e = start + e_loc
    mask_e = offs_e < end           # end = start for targets past N
    j, rx, ry, rz, d = _load_edges(src, vec, offs_e, mask_e)
    return offs_r, e_loc, tgt, offs_e, mask_e, j, rx, ry, rz, d, tgt_t, tmask


@triton.jit
def _load_edges(src, vec, e, mask):
    """Source atoms, unit vectors and lengths of the edges e (masked slots: source 0, unit vector x, d = 1)."""
    j = tl.load(src + e, mask=mask, other=0).to(tl.int64)
    vx = tl.load(vec + e * 3 + 0, mask=mask, other=1.0)
    vy = tl.load(vec + e * 3 + 1, mask=mask, other=0.0)
    vz = tl.load(vec + e * 3 + 2, mask=mask, other=0.0)
    d = tl.sqrt(vx * vx + vy * vy + vz * vz)
    return j, vx / d, vy / d, vz / d, d


@triton.jit
def _bucket(N, n_blocks, seg, BLOCK_T: tl.constexpr, PERM: tl.constexpr):
    """(first entry of perm, number of targets, number of target blocks) of this launch."""
    if PERM:
        t_start = tl.load(seg).to(tl.int64)
        count = tl.load(seg + 1).to(tl.int64)
        return t_start, count, (count + BLOCK_T - 1) // BLOCK_T
    else:
        return N * 0, N, n_blocks


@triton.jit
def _seg_sum(x, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, HB: tl.constexpr):
    return tl.sum(tl.reshape(x, [BLOCK_T, BLOCK_E, HB]), 1)


@triton.jit
def _seg_max(x, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, HB: tl.constexpr):
    return tl.max(tl.reshape(x, [BLOCK_T, BLOCK_E, HB]), 1)


@triton.jit
def _seg_min(x, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, HB: tl.constexpr):
    return tl.min(tl.reshape(x, [BLOCK_T, BLOCK_E, HB]), 1)


@triton.jit
def _seg_bcast(y, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, HB: tl.constexpr):
    return tl.reshape(tl.broadcast_to(y[:, None, :], [BLOCK_T, BLOCK_E, HB]), [BLOCK_T * BLOCK_E, HB])


@triton.jit
def _ln_stats(h, HID: tl.constexpr):
    mean = tl.sum(h, 1) / HID
    xc = h - mean[:, None]
    var = tl.sum(xc * xc, 1) / HID
    rstd = 1.0 / tl.sqrt(var + 1e-5)
    return xc * rstd[:, None], rstd


@triton.jit
def _silu_ln_bwd(dx, h, lnw, lnb, HID: tl.constexpr):
    """d/dh of silu(LN(h)) given the upstream dx (recomputes the LN from the pre-LN h)."""
    y, rstd = _ln_stats(h, HID)
    n = y * lnw[None, :] + lnb[None, :]
    sg = tl.sigmoid(n)
    dn = dx * sg * (1.0 + n * (1.0 - sg))
    dy = dn * lnw[None, :]
    c1 = tl.sum(dy, 1) / HID
    c2 = tl.sum(dy * y, 1) / HID
    return rstd[:, None] * (dy - c1[:, None] - y * c2[:, None])


@triton.jit
def _rbf_window_start(d, cutoff, nb: tl.constexpr, WIN: tl.constexpr):
    """First centre of each row's RBF window (``rbf_window``): WIN centres around the nearest one, mu_k = k R /
    (nb - 1), clamped to [0, nb - WIN] (d beyond the cutoff, or a padded row, only clamps)."""
    x = tl.minimum(tl.maximum(d * ((nb - 1) / cutoff) + 0.5, 0.0), nb * 1.0)
    kc = x.to(tl.int32)
    return tl.minimum(tl.maximum(kc - (WIN // 2 - 1), 0), nb - WIN)


@triton.jit
def _rbf_window_term(d, mu, kw, w, gamma):
    """Centre kw + w of each row's RBF window: (its index, d - mu_k, phi_k(d))."""
    kk = kw + w
    diff = d - tl.load(mu + kk)
    return kk, diff, tl.exp(gamma * diff * diff)


@triton.jit
def _stage_window(d, mu, kw, gamma, scr_p, scr_d, R: tl.constexpr, WIN: tl.constexpr, DIFF: tl.constexpr):
    """Every row's RBF window (centres kw .. kw + WIN - 1) as [R, WIN] tiles staged in scratch, row-major: the basis
    values phi_k(d) in scr_p and, with DIFF, the offsets d - mu_k in scr_d (session 21; ``_layer1`` and
    ``_rbf_window_dd`` read them back term by term).  The same expressions as ``_rbf_window_term``, so the values are
    bit-for-bit its values.  The slots must be free until the caller's next barrier."""
    offs_r = tl.arange(0, R)
    offs_w = tl.arange(0, WIN)
    diff2 = d[:, None] - tl.load(mu + (kw[:, None] + offs_w[None, :]))
    tl.debug_barrier()      # earlier readers of these slots are done
    tl.store(scr_p + offs_r[:, None] * WIN + offs_w[None, :], tl.exp(gamma * diff2 * diff2))
    if DIFF:
        tl.store(scr_d + offs_r[:, None] * WIN + offs_w[None, :], diff2)
    tl.debug_barrier()      # visible to the whole CTA


@triton.jit
def _rbf_window_dd(d, dh0, mu, W0aT, gamma, cutoff, nb: tl.constexpr, HID: tl.constexpr, WIN: tl.constexpr,
                   R: tl.constexpr = 1, scr_p=0, scr_d=0, STAGE: tl.constexpr = False):
    """d/dd of dh0 . (W0a phi(d)) [R] over each row's RBF window: sum_k (dh0 . W0a[:, k]) dphi_k/dd.

    STAGE (``E2F_V2_BWD_DD_SCR``, on by default since session 22), where WIN <= HID and WIN is a power of two: every
    row's basis values and offsets d - mu_k are computed once as [R, WIN] tiles and staged in the scratch slots
    scr_p / scr_d (R HID floats each, free until the caller's next barrier), as ``_layer1`` does in the forward,
    instead of again in every term by every thread holding the row; the same expressions, so dd is bit-for-bit the
    per-term result."""
    offs_f = tl.arange(0, HID)
    kw = _rbf_window_start(d, cutoff, nb, WIN)
    dd = tl.zeros_like(d)
    if STAGE and WIN <= HID and (WIN & (WIN - 1)) == 0:
        _stage_window(d, mu, kw, gamma, scr_p, scr_d, R, WIN, True)
        offs_r = tl.arange(0, R)
        for w in range(WIN):
            phi = tl.load(scr_p + offs_r * WIN + w)
            diff = tl.load(scr_d + offs_r * WIN + w)
            dd += (tl.sum(dh0 * tl.load(W0aT + (kw + w)[:, None] * HID + offs_f[None, :]), 1) * phi * (2.0 * gamma)
                   * diff)
    else:
        for w in range(WIN):
            kk, diff, phi = _rbf_window_term(d, mu, kw, w, gamma)
            dd += tl.sum(dh0 * tl.load(W0aT + kk[:, None] * HID + offs_f[None, :]), 1) * phi * (2.0 * gamma) * diff
    return dd


@triton.jit
def _layer1(d, tgt, j, mask_e, pt, ps, mu, W0aT, gamma, cutoff, nb: tl.constexpr, HID: tl.constexpr,
            R: tl.constexpr, BLOCK_NB: tl.constexpr, PREC: tl.constexpr, WIN: tl.constexpr = 0, scr=0,
            PHI: tl.constexpr = False):
    """pre-LN h0 = W0 [phi(d); t; s] + b0  ->  [R, HID].  WIN = 0: every centre, as chunked dots over the RBF
    axis; WIN > 0: only the WIN centres nearest to each row's d (``rbf_window``: the others are below
    exp(-30) of the largest basis value), as WIN rank-1 updates with the row's gathered weight row.

    With PHI, a scratch slot ``scr`` (R HID floats, free until the caller's next barrier), WIN <= HID and WIN a power
    of two (``E2F_V2_PHI_SCR``; on by default for the tuned launches, ``launch_config``), the
    window's basis values are computed once as an [R, WIN] tile and staged there (session 21): in the [R, HID]
    layout each thread holds several rows, and every thread of a row computed that row's exp again in every term,
    ~40 % of this loop's instructions (Nsight Compute, App. A forward: the loop issued 23 % of the kernel's).  The
    values are the same expressions in the same precision, so h0 is bit-for-bit the per-term result."""
    offs_f = tl.arange(0, HID)
    h0 = tl.load(pt + tgt[:, None] * HID + offs_f[None, :]).to(tl.float32)    # (bf16 under autocast)
    h0 += tl.load(ps + j[:, None] * HID + offs_f[None, :], mask=mask_e[:, None], other=0.0).to(tl.float32)
    if WIN > 0:
        k0 = _rbf_window_start(d, cutoff, nb, WIN)
        if PHI and WIN <= HID and (WIN & (WIN - 1)) == 0:
            _stage_window(d, mu, k0, gamma, scr, scr, R, WIN, False)
            offs_r = tl.arange(0, R)
            for w in range(WIN):
                phi = tl.load(scr + offs_r * WIN + w)
                h0 += phi[:, None] * tl.load(W0aT + (k0 + w)[:, None] * HID + offs_f[None, :])
        else:
            for w in range(WIN):
                kk, _diff, phi = _rbf_window_term(d, mu, k0, w, gamma)
                h0 += phi[:, None] * tl.load(W0aT + kk[:, None] * HID + offs_f[None, :])
    else:
        for k0 in range(0, nb, BLOCK_NB):
            offs_k, mk, diff, phi = _rbf_chunk(d, mu, k0, gamma, nb, BLOCK_NB)
            w0t = tl.load(W0aT + offs_k[:, None] * HID + offs_f[None, :], mask=mk[:, None], other=0.0)
            h0 = tl.dot(phi, w0t, h0, input_precision=PREC)
    return h0


@triton.jit
def _chunked_dot(scr, W, ldw, col0, acc, R: tl.constexpr, KTOT: tl.constexpr, NOUT: tl.constexpr,
                 KC: tl.constexpr, PREC: tl.constexpr, NCOLS: tl.constexpr = 0):
    """acc += X @ W[:, col0:col0+NOUT] with X [R, KTOT] read from scratch (row-major) in K-chunks;
    W row-major with leading dimension ldw; with NCOLS > 0 columns >= NCOLS read as 0."""
    offs_r = tl.arange(0, R)
    offs_n = tl.arange(0, NOUT)
    for k0 in range(0, KTOT, KC):
        offs_k = k0 + tl.arange(0, KC)
        xk = tl.load(scr + offs_r[:, None] * KTOT + offs_k[None, :])
        if NCOLS > 0:
            wk = tl.load(W + offs_k[:, None] * ldw + col0 + offs_n[None, :],
                         mask=(col0 + offs_n[None, :]) < NCOLS, other=0.0)
        else:
            wk = tl.load(W + offs_k[:, None] * ldw + col0 + offs_n[None, :])
        acc = tl.dot(xk, wk, acc, input_precision=PREC)
    return acc


@triton.jit
def _to_scratch(scr, x, R: tl.constexpr, HID: tl.constexpr):
    offs_r = tl.arange(0, R)
    offs_f = tl.arange(0, HID)
    tl.debug_barrier()      # earlier readers of this slot are done
    tl.store(scr + offs_r[:, None] * HID + offs_f[None, :], x)
    tl.debug_barrier()      # visible to the whole CTA


@triton.jit
def _mlp_to_x2(d, tgt, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, scr_x, scr_h0, scr_h1,
               gamma, cutoff, nb: tl.constexpr, HID: tl.constexpr, R: tl.constexpr, BLOCK_NB: tl.constexpr,
               KC: tl.constexpr, PREC: tl.constexpr, SAVE_PRE: tl.constexpr, WIN: tl.constexpr,
               PHI_SCR: tl.constexpr = False):
    """Edge MLP up to x2 = silu(LN(W1 x1 + b1)); x2 is left in scr_x.  With SAVE_PRE the pre-LN h0 / h1
    are also written to scr_h0 / scr_h1 (backward)."""
    offs_f = tl.arange(0, HID)
    h0 = _layer1(d, tgt, j, mask_e, pt, ps, mu, W0aT, gamma, cutoff, nb, HID, R, BLOCK_NB, PREC, WIN, scr_x, PHI_SCR)
    if SAVE_PRE:
        _to_scratch(scr_h0, h0, R, HID)
    y0, _r0 = _ln_stats(h0, HID)
    n0 = y0 * tl.load(ln0w + offs_f)[None, :] + tl.load(ln0b + offs_f)[None, :]
    _to_scratch(scr_x, n0 * tl.sigmoid(n0), R, HID)
    h1 = _chunked_dot(scr_x, W1T, HID, 0, tl.zeros([R, HID], dtype=tl.float32) + tl.load(b1 + offs_f)[None, :],
                      R, HID, HID, KC, PREC)
    if SAVE_PRE:
        _to_scratch(scr_h1, h1, R, HID)
    y1, _r1 = _ln_stats(h1, HID)
    n1 = y1 * tl.load(ln1w + offs_f)[None, :] + tl.load(ln1b + offs_f)[None, :]
    _to_scratch(scr_x, n1 * tl.sigmoid(n1), R, HID)


@triton.jit
def _head_block_logits(scr_x, W2T, b2, q, k, tgt, j, mask_e, hb0, sm_scale,
                       H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, R: tl.constexpr,
                       HB: tl.constexpr, KC: tl.constexpr, PREC: tl.constexpr, QKL: tl.constexpr = False):
    """g, w (columns hb0..hb0+HB of the last Linear), <q,k> and the logits a for one head block."""
    offs_hb = hb0 + tl.arange(0, HB)
    g = _chunked_dot(scr_x, W2T, 2 * H, hb0, tl.zeros([R, HB], dtype=tl.float32) + tl.load(b2 + offs_hb)[None, :],
                     R, HID, HB, KC, PREC)
    w = _chunked_dot(scr_x, W2T, 2 * H, H + hb0,
                     tl.zeros([R, HB], dtype=tl.float32) + tl.load(b2 + H + offs_hb)[None, :],
                     R, HID, HB, KC, PREC)
    qk, a = _qk_logits(g, q, k, tgt, j, mask_e, offs_hb, sm_scale, H, D, R, HB, QKL)
    return g, w, qk, a


@triton.jit
def _qk_logits(g, q, k, tgt, j, mask_e, offs_hb, sm_scale, H: tl.constexpr, D: tl.constexpr, R: tl.constexpr,
               HB: tl.constexpr, QKL: tl.constexpr = False):
    """<q_i, k_j> of the head block offs_hb and the logits a = g <q,k> scale (-inf on padded rows)."""
    # QKL: q, k as [N, D, H] (``qk_layout``), else the model's [N, H, D]; each branch spelled out in full, so that
    # the default's code (and its register allocation) is what it was before the option existed
    qk = tl.zeros([R, HB], dtype=tl.float32)
    for dd in tl.static_range(D):
        # (q, k float32, or bf16 as the bf16 mode's projections make them (``bf16_qk``): converted exactly here;
        # a no-op for float32)
        if QKL:
            qd = tl.load(q + tgt[:, None] * (H * D) + dd * H + offs_hb[None, :]).to(tl.float32)
            kd = tl.load(k + j[:, None] * (H * D) + dd * H + offs_hb[None, :], mask=mask_e[:, None],
                         other=0.0).to(tl.float32)
        else:
            qd = tl.load(q + tgt[:, None] * (H * D) + offs_hb[None, :] * D + dd).to(tl.float32)
            kd = tl.load(k + j[:, None] * (H * D) + offs_hb[None, :] * D + dd, mask=mask_e[:, None],
                         other=0.0).to(tl.float32)
        qk += qd * kd
    return qk, tl.where(mask_e[:, None], g * qk * sm_scale, float("-inf"))


@triton.jit
def _table_pos(d, tgt, j, mask_e, tslot_t, tslot_s, tP, tM, th):
    """Radial table (TABLE): each edge's row (slot_tgt P + slot_src) M + k and local coordinate t in [0, 1],
    k = floor(d / h) clamped to [0, M - 1] (see ``attention_reference.table_lookup``)."""
    dmax = tM.to(tl.float32) * th
    dc = tl.minimum(d, dmax)      # beyond the grid (padding, past the cutoff): its end, with zero slope
    kf = tl.minimum(tl.maximum(tl.floor(dc / th), 0.0), (tM - 1).to(tl.float32))
    t = (dc - kf * th) / th
    si = tl.load(tslot_t + tgt).to(tl.int64)
    sj = tl.load(tslot_s + j, mask=mask_e, other=0).to(tl.int64)
    return t, (si * tP + sj) * tM + kf.to(tl.int64), tl.where(d < dmax, 1.0, 0.0)


@triton.jit
def _table_cols(tcoef, trow, t, mask_e, col0, F: tl.constexpr, NC: tl.constexpr):
    """Columns col0 .. col0 + NC of a radial table with F columns ([rows, 4, F]) at t, and their d-slopes times h
    (shared with the edge-degree kernels)."""
    base = tcoef + trow[:, None] * (4 * F) + col0 + tl.arange(0, NC)[None, :]
    m2 = mask_e[:, None]
    c0 = tl.load(base, mask=m2, other=0.0)
    c1 = tl.load(base + F, mask=m2, other=0.0)
    c2 = tl.load(base + 2 * F, mask=m2, other=0.0)
    c3 = tl.load(base + 3 * F, mask=m2, other=0.0)
    tt = t[:, None]
    return c0 + tt * (c1 + tt * (c2 + tt * c3)), c1 + tt * (2.0 * c2 + 3.0 * tt * c3)


@triton.jit
def _table_logits(tcoef, trow, t, q, k, tgt, j, mask_e, hb0, sm_scale,
                  H: tl.constexpr, D: tl.constexpr, R: tl.constexpr, HB: tl.constexpr, QKL: tl.constexpr = False):
    """``_head_block_logits`` with g, w read from the radial table instead of the edge MLP."""
    g, _gs = _table_cols(tcoef, trow, t, mask_e, hb0, 2 * H, HB)
    w, _ws = _table_cols(tcoef, trow, t, mask_e, H + hb0, 2 * H, HB)
    qk, a = _qk_logits(g, q, k, tgt, j, mask_e, hb0 + tl.arange(0, HB), sm_scale, H, D, R, HB, QKL)
    return g, w, qk, a


@triton.jit
def _stream_target(row_ptr, perm, i0, tt, n_t, t_start, BLOCK_E: tl.constexpr, PERM: tl.constexpr):
    """(valid, target, first edge, end edge) of target tt of the block, for the streamed loops.  Only the first
    BLOCK_E edges, as in the tiled path (the padded layout's ghost row is longer: a first version streamed it
    whole, serially in one program and past its scratch)."""
    ok = i0 + tt < n_t
    if PERM:
        it = tl.load(perm + tl.where(ok, t_start + i0 + tt, 0)).to(tl.int64)
    else:
        it = tl.where(ok, i0 + tt, 0).to(tl.int64)
    e0 = tl.load(row_ptr + it).to(tl.int64)
    e1 = tl.minimum(tl.where(ok, tl.load(row_ptr + it + 1).to(tl.int64), e0), e0 + BLOCK_E)
    return ok, it, e0, e1


@triton.jit
def _stream_edge(src, vec, e):
    """Source atom and unit vector of edge e (the same arithmetic as ``_rows``)."""
    jj = tl.load(src + e).to(tl.int64)
    vx = tl.load(vec + e * 3 + 0)
    vy = tl.load(vec + e * 3 + 1)
    vz = tl.load(vec + e * 3 + 2)
    dist = tl.sqrt(vx * vx + vy * vy + vz * vz)
    return jj, vx / dist, vy / dist, vz / dist


@triton.jit
def _load_u_rows(X, it, C: tl.constexpr):
    """Row ``it`` of a [N, 3, 9, C] tensor as [8, C] + [C] parts per direction x (9 is not a power of two)."""
    offs_c = tl.arange(0, C)
    o8 = tl.arange(0, 8)[:, None] * C + offs_c[None, :]
    b = X + it * (27 * C)
    return (tl.load(b + o8), tl.load(b + 9 * C + o8), tl.load(b + 18 * C + o8),
            tl.load(b + 8 * C + offs_c), tl.load(b + 17 * C + offs_c), tl.load(b + 26 * C + offs_c))


@triton.jit
def _stream_step(src, vec, v, scr_a, scr_r, e, row, keep, a_col, offs_c, offs_m8, ax8, ay8, az8, ax1, ay1, az1,
                 C: tl.constexpr, H: tl.constexpr, R: tl.constexpr, R_SCR: tl.constexpr, MASK: tl.constexpr,
                 VCACHE: tl.constexpr = ""):
    """``_stream_aggregate``'s one-edge step: edge e (scratch row ``row``) added to the [8, C] + [C] accumulators
    of the three directions, which it returns.  MASK (the unrolled loop): alpha taken as 0 where keep is False.
    VCACHE: the value rows' cache modifier ("" = the default ".ca"; ".cg" = L2 only, ``E2F_V2_FWD_V_CG``)."""
    if R_SCR:
        jj = tl.load(src + e).to(tl.int64)
        rx = tl.load(scr_r + row)
        ry = tl.load(scr_r + R + row)
        rz = tl.load(scr_r + 2 * R + row)
    else:
        jj, rx, ry, rz = _stream_edge(src, vec, e)
    a_c = tl.load(scr_a + row * H + a_col)                                  # [C]
    if MASK:
        a_c = tl.where(keep, a_c, 0.0)
    vb = v + jj * (9 * C)
    aV8 = a_c[None, :] * tl.load(vb + offs_m8[:, None] * C + offs_c[None, :], cache_modifier=VCACHE).to(tl.float32)
    aV1 = a_c * tl.load(vb + 8 * C + offs_c, cache_modifier=VCACHE).to(tl.float32)
    return ax8 + aV8 * rx, ay8 + aV8 * ry, az8 + aV8 * rz, ax1 + aV1 * rx, ay1 + aV1 * ry, az1 + aV1 * rz


@triton.jit
def _stream_aggregate(row_ptr, src, vec, v, U, scr_a, perm, i0, n_t, t_start,
                      C: tl.constexpr, H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                      PERM: tl.constexpr, SG: tl.constexpr = 1, SU: tl.constexpr = 1, scr_r=0,
                      R_SCR: tl.constexpr = False, VCACHE: tl.constexpr = ""):
    """U[i] = sum over the in-edges e of i of alpha[e, c mod H] r_e (x) v[j_e, :, c], one edge at a time, for
    the block's targets; alpha [rows, H] is read from the program's scratch (row = t * BLOCK_E + edge slot).
    The [9, C] value rows are held as [8, C] + [C] accumulators (9 is not a power of two), per direction.
    SG > 1 (``E2F_V2_FWD_STREAM_G``): SG edges per step, their value rows gathered as one [SG, 8, C] load and
    summed over the group axis (in-thread in the default layouts), so SG independent gathers are in flight
    instead of one; one edge per step leaves each step waiting on the latency of its source-dependent gather.
    SU > 1 (``E2F_V2_FWD_STREAM_U``, session 19): the one-edge step unrolled SU times in one loop body without
    branches, so the SU value-row gathers are independent loads the compiler may issue before the first edge's
    multiply-adds (no [SG, 8, C] tile, no group sum).  Each edge is still added in order, so U is bit-for-bit the
    SU = 1 result: edges past the row's end repeat edge e with alpha 0, and adding +0.0 to an accumulator that
    started at +0.0 changes no bit (round to nearest never makes -0.0 from +0.0).  On an H200 it gained at some
    sizes and lost at others (``benchmarks/results/session19_h200.md`` section 4), so only the App. A launch unrolls
    by default: 4 times in session 19, 8 since session 20 (``launch_config``).  SG > 1 takes precedence.
    R_SCR (``E2F_V2_FWD_R_SCR``, the default since session 22; SG = 1): each edge's unit vector read from the program's scratch scr_r
    ([3, R], written by the caller from ``_rows``, the same arithmetic) instead of recomputed from vec by every
    thread (three loads, a square root and three divisions per edge and thread); bit-for-bit the same U."""
    R: tl.constexpr = BLOCK_T * BLOCK_E
    offs_c = tl.arange(0, C)
    offs_m8 = tl.arange(0, 8)
    a_col = offs_c % H
    for tt in tl.static_range(BLOCK_T):
        ok, it, e0, e1 = _stream_target(row_ptr, perm, i0, tt, n_t, t_start, BLOCK_E, PERM)
        ax8 = tl.zeros([8, C], dtype=tl.float32)
        ay8 = tl.zeros([8, C], dtype=tl.float32)
        az8 = tl.zeros([8, C], dtype=tl.float32)
        ax1 = tl.zeros([C], dtype=tl.float32)
        ay1 = tl.zeros([C], dtype=tl.float32)
        az1 = tl.zeros([C], dtype=tl.float32)
        e = e0
        if SG == 1 and SU > 1:
            while e < e1:
                for u in tl.static_range(SU):
                    eu = e + u
                    oku = eu < e1
                    euc = tl.where(oku, eu, e)                # an edge of the row (e < e1 here)
                    ax8, ay8, az8, ax1, ay1, az1 = _stream_step(
                        src, vec, v, scr_a, scr_r, euc, tt * BLOCK_E + (euc - e0), oku, a_col, offs_c, offs_m8,
                        ax8, ay8, az8, ax1, ay1, az1, C, H, R, R_SCR, True, VCACHE)
                e += SU
        elif SG == 1:
            while e < e1:
                ax8, ay8, az8, ax1, ay1, az1 = _stream_step(
                    src, vec, v, scr_a, scr_r, e, tt * BLOCK_E + (e - e0), ok, a_col, offs_c, offs_m8,
                    ax8, ay8, az8, ax1, ay1, az1, C, H, R, R_SCR, False, VCACHE)
                e += 1
        else:
            offs_g = tl.arange(0, SG)
            while e < e1:
                eg = e + offs_g
                mg = eg < e1                      # past the row: alpha 0 (masked load below)
                jg, rx, ry, rz, _d = _load_edges(src, vec, eg, mg)
                rows = tt * BLOCK_E + (eg - e0)
                a_c = tl.load(scr_a + rows[:, None] * H + a_col[None, :], mask=mg[:, None], other=0.0)  # [SG, C]
                vb = v + jg * (9 * C)
                V8 = tl.load(vb[:, None, None] + (offs_m8[:, None] * C + offs_c[None, :])[None, :, :],
                             mask=mg[:, None, None], other=0.0).to(tl.float32)                   # [SG, 8, C]
                V1 = tl.load(vb[:, None] + 8 * C + offs_c[None, :], mask=mg[:, None], other=0.0).to(tl.float32)
                aV8 = a_c[:, None, :] * V8
                aV1 = a_c * V1
                ax8 += tl.sum(aV8 * rx[:, None, None], 0)
                ay8 += tl.sum(aV8 * ry[:, None, None], 0)
                az8 += tl.sum(aV8 * rz[:, None, None], 0)
                ax1 += tl.sum(aV1 * rx[:, None], 0)
                ay1 += tl.sum(aV1 * ry[:, None], 0)
                az1 += tl.sum(aV1 * rz[:, None], 0)
                e += SG
        ub = U + it * (27 * C)
        o8 = offs_m8[:, None] * C + offs_c[None, :]
        tl.store(ub + o8, ax8, mask=ok)
        tl.store(ub + 9 * C + o8, ay8, mask=ok)
        tl.store(ub + 18 * C + o8, az8, mask=ok)
        tl.store(ub + 8 * C + offs_c, ax1, mask=ok)
        tl.store(ub + 17 * C + offs_c, ay1, mask=ok)
        tl.store(ub + 26 * C + offs_c, az1, mask=ok)


# ----------------------------------------------------------------------------------------------------
# forward kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_kernel_v2(row_ptr, src, vec, q, k, v, pt, ps, mu,
                        W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, W2T, b2,
                        U, M_out, S_out, scratch, perm, seg,
                        N, n_blocks, nprog, gamma, cutoff, sm_scale, tcoef, tslot_t, tslot_s, tP, tM, th,
                        nb: tl.constexpr,
                        C: tl.constexpr, H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_NB: tl.constexpr,
                        HB: tl.constexpr, KC: tl.constexpr, PREC: tl.constexpr, SMOOTH: tl.constexpr,
                        PERM: tl.constexpr, SCR_STRIDE: tl.constexpr, AGG: tl.constexpr = 0,
                        RBF_WIN: tl.constexpr = 0, SG: tl.constexpr = 1, TABLE: tl.constexpr = False,
                        QKL: tl.constexpr = False, SU: tl.constexpr = 1, PHI_SCR: tl.constexpr = False,
                        R_SCR: tl.constexpr = False, VCACHE: tl.constexpr = ""):
    # QKL: q / k in the [N, D, H] layout (``qk_layout``)
    # TABLE: g, w read from a radial table of the edge MLP (tcoef [rows, 4, 2H] per-interval cubic coefficients,
    # tslot_t / tslot_s: element slot per target / source atom, tP elements, tM intervals of th; see
    # attention_reference.table_lookup)
    # instead of the MLP (experimental, inference)
    # RBF_WIN: 0 = every RBF centre in the first Linear, > 0 = the RBF_WIN nearest ones (``rbf_window``)
    # AGG: how U = sum_e alpha r (x) V is formed.  0 ("tile"): per head block, one [rows, HB] product and three
    # segment sums over the edge axis per (m, replica); 1 ("stream"): alpha [rows, H] is staged in scratch and
    # each target's edges are streamed one by one into [9, C] register accumulators (no cross-lane sums; the
    # on-the-fly form of the paper); 2 ("none"): U is not written (stage timing only, never a default)
    R: tl.constexpr = BLOCK_T * BLOCK_E
    pid = tl.program_id(0)
    scr_x = scratch + pid.to(tl.int64) * SCR_STRIDE        # [R, HID] (+ alpha [R, H] with AGG 1)
    scr_a = scr_x + R * HID
    scr_r = scr_a + R * H                                  # [3, R] unit vectors with AGG 1 and R_SCR
    t_start, n_t, n_blk = _bucket(N, n_blocks, seg, BLOCK_T, PERM)
    blk = pid
    while blk < n_blk:               # persistent loop over target blocks (a while loop: the interpreter
        i0 = blk.to(tl.int64) * BLOCK_T   # cannot iterate range() over runtime scalars)
        blk += nprog
        offs_r, e_loc, tgt, offs_e, mask_e, j, rx, ry, rz, d, tgt_t, tmask = _rows(
            row_ptr, src, vec, i0, n_t, perm, t_start, BLOCK_T, BLOCK_E, PERM)
        if TABLE:
            t_loc, trow, _live = _table_pos(d, tgt, j, mask_e, tslot_t, tslot_s, tP, tM, th)
        else:
            _mlp_to_x2(d, tgt, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, scr_x, scr_x, scr_x,
                       gamma, cutoff, nb, HID, R, BLOCK_NB, KC, PREC, False, RBF_WIN, PHI_SCR)
        u, _du = _envelope(d, cutoff)
        u = tl.where(mask_e, u, 0.0)
        for hb0 in range(0, H, HB):
            offs_hb = hb0 + tl.arange(0, HB)
            if TABLE:
                g, w, qk, a = _table_logits(tcoef, trow, t_loc, q, k, tgt, j, mask_e, hb0, sm_scale, H, D, R, HB,
                                            QKL)
            else:
                g, w, qk, a = _head_block_logits(scr_x, W2T, b2, q, k, tgt, j, mask_e, hb0, sm_scale,
                                                 H, D, HID, R, HB, KC, PREC, QKL)
            m = _softmax_shift(_seg_max(a, BLOCK_T, BLOCK_E, HB), SMOOTH)     # [BLOCK_T, HB]
            eps = tl.exp(a - _seg_bcast(m, BLOCK_T, BLOCK_E, HB)) * u[:, None]
            S = _softmax_denom(_seg_sum(eps, BLOCK_T, BLOCK_E, HB), m, SMOOTH)
            alpha = eps * w / _seg_bcast(S, BLOCK_T, BLOCK_E, HB)
            st = tgt_t[:, None] * H + offs_hb[None, :]
            tl.store(M_out + st, m, mask=tmask[:, None])
            tl.store(S_out + st, S, mask=tmask[:, None])
            if AGG == 0:
                # U[i, x, mm, c] = sum_e alpha[e, c mod H] r[e, x] v[j, mm, c], c = h + rr * H
                for mm in range(9):
                    for rr in tl.static_range(C // H):
                        c0 = rr * H + hb0
                        V = tl.load(v + j[:, None] * (9 * C) + mm * C + c0 + tl.arange(0, HB)[None, :],
                                    mask=mask_e[:, None], other=0.0).to(tl.float32)
                        aV = alpha * V
                        base = U + tgt_t[:, None] * (27 * C) + mm * C + c0 + tl.arange(0, HB)[None, :]
                        tl.store(base, _seg_sum(aV * rx[:, None], BLOCK_T, BLOCK_E, HB), mask=tmask[:, None])
                        tl.store(base + 9 * C, _seg_sum(aV * ry[:, None], BLOCK_T, BLOCK_E, HB),
                                 mask=tmask[:, None])
                        tl.store(base + 18 * C, _seg_sum(aV * rz[:, None], BLOCK_T, BLOCK_E, HB),
                                 mask=tmask[:, None])
            elif AGG == 1:
                if hb0 == 0:
                    tl.debug_barrier()      # the previous block's stream loop has read scr_a (and scr_r)
                    if R_SCR:
                        tl.store(scr_r + offs_r, rx)
                        tl.store(scr_r + R + offs_r, ry)
                        tl.store(scr_r + 2 * R + offs_r, rz)
                tl.store(scr_a + offs_r[:, None] * H + offs_hb[None, :], alpha)
        if AGG == 1:
            tl.debug_barrier()              # alpha of every head visible to the whole CTA
            _stream_aggregate(row_ptr, src, vec, v, U, scr_a, perm, i0, n_t, t_start,
                              C, H, BLOCK_T, BLOCK_E, PERM, SG, SU, scr_r, R_SCR and SG == 1, VCACHE)


@triton.jit
def _bwd_alpha(scr_x, W2T, b2, q, k, M_in, S_in, tgt, j, mask_e, u, tgt_t, tmask, hb0, sm_scale,
               tcoef, trow, t_loc,
               H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
               HB: tl.constexpr, KC: tl.constexpr, PREC: tl.constexpr, SMOOTH: tl.constexpr,
               TABLE: tl.constexpr = False, QKL: tl.constexpr = False):
    """Backward recompute of one head block: g, w, <q,k>, logits a, p = exp(a - m), eps = p u, the
    denominator S (per row) and alpha = eps w / S."""
    R: tl.constexpr = BLOCK_T * BLOCK_E
    offs_hb = hb0 + tl.arange(0, HB)
    if TABLE:
        g, w, qk, a = _table_logits(tcoef, trow, t_loc, q, k, tgt, j, mask_e, hb0, sm_scale, H, D, R, HB, QKL)
    else:
        g, w, qk, a = _head_block_logits(scr_x, W2T, b2, q, k, tgt, j, mask_e, hb0, sm_scale,
                                         H, D, HID, R, HB, KC, PREC, QKL)
    st = tgt_t[:, None] * H + offs_hb[None, :]
    m_t = tl.load(M_in + st, mask=tmask[:, None], other=0.0)
    m_r = _seg_bcast(m_t, BLOCK_T, BLOCK_E, HB)
    p = tl.exp(a - m_r)                                            # 0 on padded rows
    eps = p * u[:, None]
    if SMOOTH:
        # denominator from the recomputed eps: the backward tiles round the logits differently from
        # the forward's (~|a| 1e-7); with the forward's S that mismatch reached 1e-5 relative in
        # d(vec) and dk at logits ~40 (the official mode's max term hides it: its da sums to 0)
        S_r = _seg_bcast(_softmax_denom(_seg_sum(eps, BLOCK_T, BLOCK_E, HB), m_t, SMOOTH),
                         BLOCK_T, BLOCK_E, HB)
    else:
        S_r = _seg_bcast(tl.load(S_in + st, mask=tmask[:, None], other=1.0), BLOCK_T, BLOCK_E, HB)
    alpha = eps * w / S_r
    return g, w, qk, a, p, eps, S_r, alpha


@triton.jit
def _stream_aggregate_bwd(row_ptr, src, vec, v, dU, dv, scr_a, scr_da, scr_dr, perm, i0, n_t, t_start,
                          C: tl.constexpr, H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                          PERM: tl.constexpr, DV_ONLY: tl.constexpr, SG: tl.constexpr = 1,
                          ASEM: tl.constexpr = "relaxed"):
    """Backward of ``_stream_aggregate``, one edge at a time (SG > 1, ``E2F_V2_BWD_STREAM_G``: SG edges per step,
    so each cross-lane reduction and its barrier serves SG edges) with the target's dU held in registers:
    with W_x[c] = sum_m V[j, m, c] dU[i, x, m, c] (x = 0..2),
      dalpha[e, h] = sum_{c = h mod H} sum_x r_x W_x[c]          -> scratch scr_da [rows, H]
      dr[e, x]     = sum_c alpha[e, c mod H] W_x[c]              -> scratch scr_dr [rows, 4]
      dv[j, m, c] += alpha[e, c mod H] sum_x r_x dU[i, x, m, c]  (atomics over contiguous 9 C floats)
    DV_ONLY (the split backward, dalpha and d/dr in tiles): dv alone, with no cross-lane reduction and no
    read of v."""
    offs_c = tl.arange(0, C)
    offs_m8 = tl.arange(0, 8)
    offs_h = tl.arange(0, H)
    a_col = offs_c % H
    o8 = offs_m8[:, None] * C + offs_c[None, :]
    for tt in tl.static_range(BLOCK_T):
        ok, it, e0, e1 = _stream_target(row_ptr, perm, i0, tt, n_t, t_start, BLOCK_E, PERM)
        gx8, gy8, gz8, gx1, gy1, gz1 = _load_u_rows(dU, it, C)
        e = e0
        if SG > 1:
            offs_g = tl.arange(0, SG)
            o8g = o8[None, :, :]
            while e < e1:
                eg = e + offs_g
                mg = eg < e1                      # past the row: alpha 0 (masked load below)
                jg, rx, ry, rz, _d = _load_edges(src, vec, eg, mg)
                rx = rx[:, None]
                ry = ry[:, None]
                rz = rz[:, None]
                rows = tt * BLOCK_E + (eg - e0)
                a_c = tl.load(scr_a + rows[:, None] * H + a_col[None, :], mask=mg[:, None], other=0.0)  # [SG, C]
                if not DV_ONLY:
                    vb = v + jg * (9 * C)
                    V8 = tl.load(vb[:, None, None] + o8g, mask=mg[:, None, None], other=0.0).to(tl.float32)
                    V1 = tl.load(vb[:, None] + 8 * C + offs_c[None, :], mask=mg[:, None], other=0.0).to(tl.float32)
                    wx = tl.sum(V8 * gx8[None, :, :], 1) + V1 * gx1[None, :]                 # [SG, C]
                    wy = tl.sum(V8 * gy8[None, :, :], 1) + V1 * gy1[None, :]
                    wz = tl.sum(V8 * gz8[None, :, :], 1) + V1 * gz1[None, :]
                    da_c = rx * wx + ry * wy + rz * wz
                    tl.store(scr_da + rows[:, None] * H + offs_h[None, :],
                             tl.sum(tl.reshape(da_c, [SG, C // H, H]), 1), mask=mg[:, None])
                    tl.store(scr_dr + rows * 4 + 0, tl.sum(a_c * wx, 1), mask=mg)
                    tl.store(scr_dr + rows * 4 + 1, tl.sum(a_c * wy, 1), mask=mg)
                    tl.store(scr_dr + rows * 4 + 2, tl.sum(a_c * wz, 1), mask=mg)
                dvb = dv + jg * (9 * C)
                g8 = rx[:, :, None] * gx8[None, :, :] + ry[:, :, None] * gy8[None, :, :] + rz[:, :, None] * gz8[None, :, :]
                tl.atomic_add(dvb[:, None, None] + o8g, a_c[:, None, :] * g8, mask=mg[:, None, None], sem=ASEM)
                tl.atomic_add(dvb[:, None] + 8 * C + offs_c[None, :],
                              a_c * (rx * gx1[None, :] + ry * gy1[None, :] + rz * gz1[None, :]), mask=mg[:, None],
                              sem=ASEM)
                e += SG
        else:
            while e < e1:
                row = tt * BLOCK_E + (e - e0)
                jj, rx, ry, rz = _stream_edge(src, vec, e)
                a_c = tl.load(scr_a + row * H + a_col)                                  # [C]
                if not DV_ONLY:
                    vb = v + jj * (9 * C)
                    V8 = tl.load(vb + o8).to(tl.float32)
                    V1 = tl.load(vb + 8 * C + offs_c).to(tl.float32)
                    wx = tl.sum(V8 * gx8, 0) + V1 * gx1                                 # [C]
                    wy = tl.sum(V8 * gy8, 0) + V1 * gy1
                    wz = tl.sum(V8 * gz8, 0) + V1 * gz1
                    da_c = rx * wx + ry * wy + rz * wz
                    tl.store(scr_da + row * H + offs_h, tl.sum(tl.reshape(da_c, [C // H, H]), 0))
                    tl.store(scr_dr + row * 4 + 0, tl.sum(a_c * wx, 0))
                    tl.store(scr_dr + row * 4 + 1, tl.sum(a_c * wy, 0))
                    tl.store(scr_dr + row * 4 + 2, tl.sum(a_c * wz, 0))
                dvb = dv + jj * (9 * C)
                tl.atomic_add(dvb + o8, a_c[None, :] * (rx * gx8 + ry * gy8 + rz * gz8), sem=ASEM)
                tl.atomic_add(dvb + 8 * C + offs_c, a_c * (rx * gx1 + ry * gy1 + rz * gz1), sem=ASEM)
                e += 1


# ----------------------------------------------------------------------------------------------------
# backward kernel (grads w.r.t. vec, q, k, v)
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _acc_write(ptr, val, mask, ATOM: tl.constexpr, ASEM: tl.constexpr):
    """The tiled backward's dv / dk accumulation: an atomic add (ATOM 0, the result); for stage timing only (wrong
    gradients) the same writes as plain stores (1) or none (2)."""
    if ATOM == 0:
        tl.atomic_add(ptr, val, mask=mask, sem=ASEM)
    elif ATOM == 1:
        tl.store(ptr, val, mask=mask)


@triton.jit
def _attn_bwd_kernel_v2(row_ptr, src, vec, q, k, v, pt, ps, mu,
                        W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, W2T, b2, W0a, W1, W2,
                        M_in, S_in, dU,
                        dvec, dq, dk, dv, scratch, perm, seg,
                        N, n_blocks, nprog, gamma, cutoff, sm_scale, tcoef, tslot_t, tslot_s, tP, tM, th,
                        nb: tl.constexpr,
                        C: tl.constexpr, H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_NB: tl.constexpr,
                        HB: tl.constexpr, KC: tl.constexpr, PREC: tl.constexpr, SMOOTH: tl.constexpr,
                        DR_ACC: tl.constexpr, DU_BCAST: tl.constexpr, PERM: tl.constexpr, SCR_STRIDE: tl.constexpr,
                        AGG: tl.constexpr = 0, BPREC: tl.constexpr = "ieee", RBF_WIN: tl.constexpr = 0,
                        SG: tl.constexpr = 1, DX2_SCR: tl.constexpr = False, TABLE: tl.constexpr = False,
                        QKL: tl.constexpr = False, ATOM: tl.constexpr = 0, ASEM: tl.constexpr = "relaxed",
                        PHI_SCR: tl.constexpr = False, DD_SCR: tl.constexpr = False):
    # QKL: q / k / dq / dk in the [N, D, H] layout (``qk_layout``): contiguous dk atomics
    # ASEM: memory semantics of the dv / dk atomics ("relaxed" since session 12, ``atomic_sem``; Triton's default
    #   "acq_rel" compiles each to MEMBAR.ALL.GPU + ATOMG + CCTL.IVALL: a GPU-wide fence and an L1 invalidation,
    #   which also drops the spills and gathered rows cached in L1; "relaxed" is one fire-and-forget REDG)
    # ATOM: the tiled backward's dv and dk writes: 0 atomics (the result); stage timing only, wrong gradients
    #   (E2F_V2_BWD_ATOM, benchmarks/attention_stages.py): 1 plain stores of the same values, 2 no write at all
    # TABLE: g, w from the radial table (see _attn_fwd_kernel_v2); the MLP backward is then d(g, w)/dd, the
    # table's slopes, accumulated per head block (no MLP recompute, no dx2)
    # variants (same result; speed untested on a GPU, off by default, swept by benchmarks/tune_attention_v2.py):
    #   DR_ACC   d/dr accumulated as [rows, HB] tiles, reduced over heads once per target block instead of three
    #            cross-lane sums per (m, replica, head block)
    #   DU_BCAST dU read once per target ([BLOCK_T, HB]) and broadcast to its edge rows, instead of per row
    #   AGG      0: aggregation backward per head block as below; 1: streamed (``_stream_aggregate_bwd``: alpha
    #            of all heads to scratch first, then dalpha, dr and dv edge by edge); 2: skipped (stage timing
    #            only, wrong gradients); 3 ("split"): dalpha and d/dr in tiles as in 0, dv by
    #            ``_stream_aggregate_bwd`` with DV_ONLY (edge by edge, no reduction, contiguous atomics) instead
    #            of [rows, HB] atomics
    #   DX2_SCR  dg / dw of each head block go to scratch ([R, 2H], the last 2 R H floats of the slot) and
    #            dx2 = [dg | dw] W2 is one K = 2H chunked dot after the head loop, so the [R, HID] dx2
    #            accumulator is not live through the loop (under the 128-register cap the loop spills)
    R: tl.constexpr = BLOCK_T * BLOCK_E
    pid = tl.program_id(0)
    scr_x = scratch + pid.to(tl.int64) * SCR_STRIDE        # see _scratch_floats
    scr_h0 = scr_x + R * HID
    scr_h1 = scr_h0 + R * HID
    scr_a = scr_h1 + R * HID        # AGG 1 / 3: alpha [R, H]; AGG 1 also dalpha [R, H], dr [R, 4]
    scr_da = scr_a + R * H
    scr_dr = scr_da + R * H
    scr_gw = scr_x + (SCR_STRIDE - 2 * R * H)   # DX2_SCR: [R, 2H] (dg | dw), at the end of the slot
    offs_f = tl.arange(0, HID)
    t_start, n_t, n_blk = _bucket(N, n_blocks, seg, BLOCK_T, PERM)
    blk = pid
    while blk < n_blk:               # persistent loop over target blocks (a while loop: the interpreter
        i0 = blk.to(tl.int64) * BLOCK_T   # cannot iterate range() over runtime scalars)
        blk += nprog
        offs_r, e_loc, tgt, offs_e, mask_e, j, rx, ry, rz, d, tgt_t, tmask = _rows(
            row_ptr, src, vec, i0, n_t, perm, t_start, BLOCK_T, BLOCK_E, PERM)
        if TABLE:
            t_loc, trow, t_live = _table_pos(d, tgt, j, mask_e, tslot_t, tslot_s, tP, tM, th)
        else:
            t_loc = d
            trow = tgt
            t_live = d
            _mlp_to_x2(d, tgt, j, mask_e, pt, ps, mu, W0aT, ln0w, ln0b, W1T, b1, ln1w, ln1b, scr_x, scr_h0, scr_h1,
                       gamma, cutoff, nb, HID, R, BLOCK_NB, KC, PREC, True, RBF_WIN, PHI_SCR)
        dd_tab = tl.zeros([R], dtype=tl.float32)
        u, du_dd = _envelope(d, cutoff)
        u = tl.where(mask_e, u, 0.0)
        dx2 = tl.zeros([R, HID], dtype=tl.float32)
        du = tl.zeros([R], dtype=tl.float32)
        drx = tl.zeros([R], dtype=tl.float32)
        dry = tl.zeros([R], dtype=tl.float32)
        drz = tl.zeros([R], dtype=tl.float32)
        drx_t = tl.zeros([R, HB], dtype=tl.float32)   # DR_ACC (unused otherwise)
        dry_t = tl.zeros([R, HB], dtype=tl.float32)
        drz_t = tl.zeros([R, HB], dtype=tl.float32)
        if AGG == 1:    # alpha of every head to scratch, then the streamed aggregation backward
            for hb0 in range(0, H, HB):
                offs_hb = hb0 + tl.arange(0, HB)
                _g, _w, _qk, _a, _p, _eps, _S, alpha = _bwd_alpha(
                    scr_x, W2T, b2, q, k, M_in, S_in, tgt, j, mask_e, u, tgt_t, tmask, hb0, sm_scale,
                    tcoef, trow, t_loc, H, D, HID, BLOCK_T, BLOCK_E, HB, KC, PREC, SMOOTH, TABLE, QKL)
                tl.store(scr_a + offs_r[:, None] * H + offs_hb[None, :], alpha)
            tl.debug_barrier()
            _stream_aggregate_bwd(row_ptr, src, vec, v, dU, dv, scr_a, scr_da, scr_dr, perm, i0, n_t, t_start,
                                  C, H, BLOCK_T, BLOCK_E, PERM, False, SG, ASEM)
            tl.debug_barrier()
            drx = tl.load(scr_dr + offs_r * 4 + 0, mask=mask_e, other=0.0)
            dry = tl.load(scr_dr + offs_r * 4 + 1, mask=mask_e, other=0.0)
            drz = tl.load(scr_dr + offs_r * 4 + 2, mask=mask_e, other=0.0)
        for hb0 in range(0, H, HB):
            offs_hb = hb0 + tl.arange(0, HB)
            g, w, qk, a, p, eps, S_r, alpha = _bwd_alpha(
                scr_x, W2T, b2, q, k, M_in, S_in, tgt, j, mask_e, u, tgt_t, tmask, hb0, sm_scale,
                tcoef, trow, t_loc, H, D, HID, BLOCK_T, BLOCK_E, HB, KC, PREC, SMOOTH, TABLE, QKL)
            # --- aggregation backward ------------------------------------------------------------
            dalpha = tl.zeros([R, HB], dtype=tl.float32)
            if AGG == 1:
                dalpha = tl.load(scr_da + offs_r[:, None] * H + offs_hb[None, :], mask=mask_e[:, None], other=0.0)
            if AGG == 3:
                if hb0 == 0:
                    tl.debug_barrier()      # the previous block's dv pass has read scr_a
                tl.store(scr_a + offs_r[:, None] * H + offs_hb[None, :], alpha)
            if AGG == 0 or AGG == 3:
                for mm in range(9):
                    for rr in range(C // H):
                        c0 = rr * H + hb0
                        V = tl.load(v + j[:, None] * (9 * C) + mm * C + c0 + tl.arange(0, HB)[None, :],
                                    mask=mask_e[:, None], other=0.0).to(tl.float32)
                        if DU_BCAST:
                            gt = dU + tgt_t[:, None] * (27 * C) + mm * C + c0 + tl.arange(0, HB)[None, :]
                            Gx = _seg_bcast(tl.load(gt, mask=tmask[:, None], other=0.0), BLOCK_T, BLOCK_E, HB)
                            Gy = _seg_bcast(tl.load(gt + 9 * C, mask=tmask[:, None], other=0.0), BLOCK_T, BLOCK_E, HB)
                            Gz = _seg_bcast(tl.load(gt + 18 * C, mask=tmask[:, None], other=0.0), BLOCK_T, BLOCK_E, HB)
                        else:
                            gb = dU + tgt[:, None] * (27 * C) + mm * C + c0 + tl.arange(0, HB)[None, :]
                            Gx = tl.load(gb)
                            Gy = tl.load(gb + 9 * C)
                            Gz = tl.load(gb + 18 * C)
                        rG = rx[:, None] * Gx + ry[:, None] * Gy + rz[:, None] * Gz
                        dalpha += rG * V
                        aV = alpha * V
                        if DR_ACC:
                            drx_t += aV * Gx
                            dry_t += aV * Gy
                            drz_t += aV * Gz
                        else:
                            drx += tl.sum(aV * Gx, 1)
                            dry += tl.sum(aV * Gy, 1)
                            drz += tl.sum(aV * Gz, 1)
                        if AGG == 0:
                            _acc_write(dv + j[:, None] * (9 * C) + mm * C + c0 + tl.arange(0, HB)[None, :],
                                       alpha * rG, mask_e[:, None], ATOM, ASEM)
            # --- softmax backward (heads independent: local to the block) ---------------------------
            delta = _seg_sum(dalpha * alpha, BLOCK_T, BLOCK_E, HB)            # [BLOCK_T, HB]
            dw = dalpha * eps / S_r
            deps = (dalpha * w - _seg_bcast(delta, BLOCK_T, BLOCK_E, HB)) / S_r
            da = deps * eps
            du += tl.sum(deps * p, 1)
            if not SMOOTH:   # official: m = max a is part of the function (smooth: a constant shift)
                dm = -_seg_sum(da, BLOCK_T, BLOCK_E, HB)                      # [BLOCK_T, HB]
                amax = _seg_bcast(_seg_max(a, BLOCK_T, BLOCK_E, HB), BLOCK_T, BLOCK_E, HB)
                cand = tl.where((a == amax) & mask_e[:, None], e_loc[:, None], BLOCK_E)
                first = _seg_bcast(_seg_min(cand, BLOCK_T, BLOCK_E, HB), BLOCK_T, BLOCK_E, HB)
                da += tl.where(e_loc[:, None] == first, _seg_bcast(dm, BLOCK_T, BLOCK_E, HB), 0.0)
            da = tl.where(mask_e[:, None], da, 0.0)
            # --- a = g <q,k> scale --------------------------------------------------------------------
            dg = da * qk * sm_scale
            dqk = da * g * sm_scale
            for dd in tl.static_range(D):
                if QKL:     # [N, D, H]: the HB heads of component dd are contiguous (one dk atomic per row
                    # covers HB consecutive floats instead of HB floats D apart)
                    kd = tl.load(k + j[:, None] * (H * D) + dd * H + offs_hb[None, :], mask=mask_e[:, None],
                                 other=0.0).to(tl.float32)
                    tl.store(dq + tgt_t[:, None] * (H * D) + dd * H + offs_hb[None, :],
                             _seg_sum(dqk * kd, BLOCK_T, BLOCK_E, HB), mask=tmask[:, None])
                    qd = tl.load(q + tgt[:, None] * (H * D) + dd * H + offs_hb[None, :]).to(tl.float32)
                    _acc_write(dk + j[:, None] * (H * D) + dd * H + offs_hb[None, :], dqk * qd, mask_e[:, None],
                               ATOM, ASEM)
                else:
                    kd = tl.load(k + j[:, None] * (H * D) + offs_hb[None, :] * D + dd, mask=mask_e[:, None],
                                 other=0.0).to(tl.float32)
                    tl.store(dq + tgt_t[:, None] * (H * D) + offs_hb[None, :] * D + dd,
                             _seg_sum(dqk * kd, BLOCK_T, BLOCK_E, HB), mask=tmask[:, None])
                    qd = tl.load(q + tgt[:, None] * (H * D) + offs_hb[None, :] * D + dd).to(tl.float32)
                    _acc_write(dk + j[:, None] * (H * D) + offs_hb[None, :] * D + dd, dqk * qd, mask_e[:, None],
                               ATOM, ASEM)
            # --- last Linear: dx2 += dg W2[g rows of block] + dw W2[w rows of block] --------------------
            if TABLE:       # (g, w) = table(d): d/dd through the table's slopes (h times d/dd in _table_cols).
                # The coefficients are read again here on purpose: returning the slopes from _bwd_alpha keeps two
                # more [rows, HB] tiles live through the aggregation backward, and ptxas then spills 218 values
                # instead of 116 at the V1.5 size (484 -> 104 instead of 30 at App. A) under the 128 cap
                _g2, gs = _table_cols(tcoef, trow, t_loc, mask_e, hb0, 2 * H, HB)
                _w2, ws = _table_cols(tcoef, trow, t_loc, mask_e, H + hb0, 2 * H, HB)
                dd_tab += tl.sum(dg * gs + dw * ws, 1) * (t_live / th)
            elif DX2_SCR:   # (the slot's earlier readers passed the barriers of _mlp_to_x2 since)
                tl.store(scr_gw + offs_r[:, None] * (2 * H) + offs_hb[None, :], dg)
                tl.store(scr_gw + offs_r[:, None] * (2 * H) + H + offs_hb[None, :], dw)
            else:
                w2g = tl.load(W2 + offs_hb[:, None] * HID + offs_f[None, :])            # [HB, HID]
                w2w = tl.load(W2 + (H + offs_hb)[:, None] * HID + offs_f[None, :])
                dx2 = tl.dot(dg, w2g, dx2, input_precision=BPREC)
                dx2 = tl.dot(dw, w2w, dx2, input_precision=BPREC)
        if DX2_SCR and not TABLE:
            tl.debug_barrier()      # every head block's dg / dw visible to the whole CTA
            dx2 = _chunked_dot(scr_gw, W2, HID, 0, tl.zeros([R, HID], dtype=tl.float32), R, 2 * H, HID, KC, BPREC)
        if AGG == 3:                # dv edge by edge (alpha of every head block is in scratch)
            tl.debug_barrier()
            _stream_aggregate_bwd(row_ptr, src, vec, v, dU, dv, scr_a, scr_da, scr_dr, perm, i0, n_t, t_start,
                                  C, H, BLOCK_T, BLOCK_E, PERM, True, SG, ASEM)
        # --- LN1/SiLU backward, W1 (K-chunked through scratch), LN0/SiLU backward ----------------------
        dd_e = du * du_dd
        if TABLE:
            dd_e += dd_tab
        else:
            h1 = tl.load(scr_h1 + offs_r[:, None] * HID + offs_f[None, :])
            dh1 = _silu_ln_bwd(dx2, h1, tl.load(ln1w + offs_f), tl.load(ln1b + offs_f), HID)
            _to_scratch(scr_x, dh1, R, HID)
            dx1 = _chunked_dot(scr_x, W1, HID, 0, tl.zeros([R, HID], dtype=tl.float32), R, HID, HID, KC, BPREC)
            h0 = tl.load(scr_h0 + offs_r[:, None] * HID + offs_f[None, :])
            dh0 = _silu_ln_bwd(dx1, h0, tl.load(ln0w + offs_f), tl.load(ln0b + offs_f), HID)
            if RBF_WIN > 0:     # d/dd through the RBF window only
                dd_e += _rbf_window_dd(d, dh0, mu, W0aT, gamma, cutoff, nb, HID, RBF_WIN, R, scr_x, scr_h1, DD_SCR)
            else:
                # dphi = dh0 W0a[:, chunk]: K = HID is chunked through scratch (a K = HID FMA dot keeps whole
                # K-strips of both operands in registers)
                _to_scratch(scr_x, dh0, R, HID)
                for k0 in range(0, nb, BLOCK_NB):
                    offs_k, mk, diff, phi = _rbf_chunk(d, mu, k0, gamma, nb, BLOCK_NB)
                    dphi = _chunked_dot(scr_x, W0a, nb, k0, tl.zeros([R, BLOCK_NB], dtype=tl.float32),
                                        R, HID, BLOCK_NB, KC, BPREC, nb)
                    dd_e += tl.sum(dphi * phi * (2.0 * gamma) * diff, 1)
        # --- vec = d r -> dvec = dd r + (dr - (dr.r) r) / d -----------------------------------------------
        if DR_ACC and AGG != 1:
            drx = tl.sum(drx_t, 1)
            dry = tl.sum(dry_t, 1)
            drz = tl.sum(drz_t, 1)
        rdot = drx * rx + dry * ry + drz * rz
        tl.store(dvec + offs_e * 3 + 0, dd_e * rx + (drx - rdot * rx) / d, mask=mask_e)
        tl.store(dvec + offs_e * 3 + 1, dd_e * ry + (dry - rdot * ry) / d, mask=mask_e)
        tl.store(dvec + offs_e * 3 + 2, dd_e * rz + (drz - rdot * rz) / d, mask=mask_e)


# ----------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------
_LAST_COMPILED = {}   # last launched compiled kernels (diagnostics)


def compile_info():
    """Registers / spills / shared memory of the last launched v2 forward and backward kernels."""
    out = {}
    for key, ck in _LAST_COMPILED.items():
        try:
            md = ck.metadata
            out[key] = dict(n_regs=ck.n_regs, n_spills=ck.n_spills, shared=md.shared, num_warps=md.num_warps)
        except Exception as exc:  # diagnostics only
            out[key] = repr(exc)[:100]
    return out


def _block_e(row_ptr: torch.Tensor, max_degree: int | None) -> int:
    if max_degree is None:
        n = row_ptr.numel() - 1
        max_degree = int((row_ptr[1:] - row_ptr[:-1]).max().item()) if n > 0 else 0
    return max(16, triton.next_power_of_2(max(int(max_degree), 1)))


def degree_buckets(row_ptr: torch.Tensor, block_e: int):
    """Targets split by in-degree for two launches: those with at most ``block_e // 2`` edges (tiles of half
    the width) first, then the rest (full tiles), each in the original order.  Returns (perm [N] int64,
    seg [2, 2] int64 = (first entry of perm, count) per launch, the small tile width), all on the device and
    without a device -> host sync (the partition is a cumulative sum and a scatter), so it can be captured in a
    CUDA graph.  Why: the tile width is next_pow2(max in-degree), and in liquid water at 5 A (mean 52, max ~67
    neighbours) that is 128 slots for ~52 real edges; 99.6 % of the atoms fit 64."""
    n = row_ptr.numel() - 1
    dev = row_ptr.device
    deg = (row_ptr[1:] - row_ptr[:-1]).to(torch.int64)
    small_e = block_e // 2
    small = deg <= small_e
    cs = torch.cumsum(small.to(torch.int64), 0)
    n_small = cs[-1:] if n > 0 else torch.zeros(1, dtype=torch.int64, device=dev)
    idx = torch.arange(n, device=dev, dtype=torch.int64)
    pos = torch.where(small, cs - 1, n_small + (idx + 1 - cs) - 1)
    perm = torch.empty(n, dtype=torch.int64, device=dev).scatter_(0, pos, idx)
    zero = torch.zeros(1, dtype=torch.int64, device=dev)
    seg = torch.stack([torch.cat([zero, n_small]), torch.cat([n_small, n - n_small])])
    return perm, seg, small_e


def use_buckets(block_e: int) -> bool:
    """Degree-bucketed launches (``degree_buckets``), on by default since their H200 timings (session 8): the
    bundled model's 600-water force call 9.1 -> 7.8 ms (CUDA graph), 115,200 waters' atoms 467 -> 327 ms
    (``benchmarks/results/buckets_graphed_check_{off,on}_h200.json``, ``profile_bundled_water_115200_*``).
    ``E2F_V2_BUCKETS=0`` turns them off.  Only for tiles of 32 edges or more (the half tile stays >= 16)."""
    return bool(_env_int("E2F_V2_BUCKETS", 1)) and block_e >= 32


def _launches(rp: torch.Tensor, block_e: int):
    """[(BLOCK_E, perm, seg row, PERM)] of one forward or backward: one launch over all targets in order, or
    (with buckets) one per degree bucket."""
    if not use_buckets(block_e):
        return [(block_e, rp, rp, False)]
    perm, seg, small_e = degree_buckets(rp, block_e)
    return [(small_e, perm, seg[0], True), (block_e, perm, seg[1], True)]


def _env_int(name, default):
    val = os.environ.get(name)
    return int(val) if val else default


# How the aggregation U = sum_e alpha r (x) V (and its backward) is formed: E2F_V2_FWD_AGG / E2F_V2_BWD_AGG =
# "tile" | "stream" | "none" ("none" leaves it out: stage timing only, wrong results).  Defaults from H200
# timings (benchmarks/attention_stages.py -> benchmarks/results/session8_speed_h200.md): the streamed forward is
# 2.5x faster at the bundled model's sizes (115,200 atoms, 64 edges: 54.6 -> 21.7 ms) and 1.6x at V1.5's (10k
# atoms: 6.7 -> 4.3 ms); the streamed backward is slower (its per-edge cross-lane sums), so it stays opt-in.
_AGG_MODES = {"tile": 0, "stream": 1, "none": 2, "split": 3}   # split: backward only (see _attn_bwd_kernel_v2)
_AGG_DEFAULT = {"fwd": "stream", "bwd": "tile"}


def _scratch_floats(kind: str, agg: int, R: int, hid: int, H: int, dx2_scr: bool = False,
                    r_scr: bool = False) -> int:
    """Floats of one program's scratch slot: the edge-MLP activations ([R, hid] forward, x / h0 / h1 backward)
    and, only where the aggregation mode uses them, alpha [R, H] (stream, split) and dalpha [R, H] + dr [R, 4]
    (streamed backward), and the streamed forward's unit vectors [3, R] (R_SCR).  Allocated by the host and passed
    to the kernel as its SCR_STRIDE (a constexpr: it depends only on constexprs, so it adds no specialisation)."""
    if kind == "fwd":
        return R * hid + ((R * H + (3 * R if r_scr else 0)) if agg == _AGG_MODES["stream"] else 0)
    extra = {_AGG_MODES["stream"]: 2 * R * H + 4 * R, _AGG_MODES["split"]: R * H}.get(agg, 0)
    return 3 * R * hid + extra + (2 * R * H if dx2_scr else 0)    # DX2_SCR: [R, 2H] at the end of the slot


def launch_config(H: int, hid: int, nb: int, block_e: int, kind: str = "fwd", table: bool = False) -> dict:
    """Tile parameters of the forward ("fwd") or backward ("bwd") kernel.

    For H >= 64 the defaults are the fastest exact tiles of an H200 sweep at the V1.5 size (K = 32, H = 128;
    ``benchmarks/tune_attention_v2.py``, results in ``benchmarks/results/attention_v2_tune_h200.md``): forward
    1.31x, forward + backward 1.10x over the earlier defaults at 10k atoms.  Smaller models keep those earlier
    defaults, chosen from sm_90 compile reports (zero spills; ``attention_v2_compile_report.txt``), untimed.
    Overridable with E2F_V2_{FWD,BWD}_{BLOCK_T, HB, KC, NUM_WARPS, PROGS_PER_SM} (E2F_V2_PROGS_PER_SM sets both
    kinds' programs per SM).

    ``table``: the radial-table launch (TABLE: no edge MLP in the kernel), whose warps were re-swept on its own
    (H200, session 12, ``benchmarks/results/attention_stages_tabletiles_s12_h200.jsonl``; every variant checked
    against float64 first): the forward takes 4 warps at every size (bundled 115k: 10.03 -> 6.64 ms; V1.5 already
    had 4).  The backward took 8 warps for H >= 64 then (V1.5 10k forward + backward 15.41 -> 15.01 ms), with the
    acquire-release atomics of that time; with the relaxed ones (session 13) 4 warps are faster again: V1.5 20k TF32
    graphed step 69.2 -> 61.3 ms (H200, session 18, ``graphed_sweep_20k_tf32_s18_h200.json``), so every size now
    takes 4.  HB 64, BLOCK_T 2, 2 edges per step and a 160-register cap were slower in session 12.

    The untuned edge-MLP launch (H < 64) re-swept after the relaxed atomics (H200, session 19,
    ``benchmarks/results/attention_stages_appa*_s19_h200.jsonl``, every variant checked against float64 first): at
    the App. A size (H 16, hid 128, K 64, 32k atoms) the backward is faster with 8 warps (forward + backward 45.4 ->
    40.6 ms, 46.0 -> 41.0 in a first call) and the forward with 4 programs per SM (11.3 -> 10.8 ms, twice); at the
    bundled model's (hid 32, 14.4k atoms) 8 backward warps are slower (4.03 -> 4.81 ms) and the programs per SM make
    no difference, so both apply from hid 128 on.  HB 32, KC 32, 4 programs per SM and no register cap beside the 8
    backward warps were equal or slower.  The same launch unrolls its streamed forward (SU, ``_stream_aggregate``):
    4 times in session 19 (App. A 32k with random sources 13.82 -> 12.96 and 13.64 -> 12.82 ms in two calls); at
    the bundled model's, V1.5's and the table launch's sizes SU was mixed or slower, so they keep SU 1
    (``session19_h200.md`` section 4).

    Session 20 (H200, ``benchmarks/results/session20_h200.md``): the App. A forward spends 6.1 of its 12.8 ms in
    the edge MLP, logits and softmax ("none") and the rest in the streamed aggregation, which the table launch (4 CTAs
    of 4 warps per SM) does in ~4.7 ms; the MLP launch had 2 CTAs of 8 warps (128 registers each), so little of one
    CTA's gathers overlapped another's arithmetic.  An 80-register cap and KC 16 (24 KB of shared memory instead of
    48) give 3 resident CTAs of 8 warps (66 spilled floats per thread in the forward, 188 in the backward; to L1),
    and a grid of exactly that many (3 programs per SM): forward 12.81 -> 10.91 ms with SU 8 (SU 1 / 2 / 4: 11.45 / 11.04 / 11.28; 64 registers and 4
    CTAs 13.55, 16 warps at 64 registers 11.5-12.2, 4 warps 14.9).  The backward the same way (80 registers, 3
    programs per SM; its KC is 16 already): forward + backward 54.07 -> 48.08 ms with the old forward.

    Session 21 (H200, ``benchmarks/results/session21_h200.md``): the untuned table forward (H < 64: the bundled model,
    the OpenMM main job's kernel) takes a 64-register cap: bundled 115k 4.88 / 4.87 -> 4.69 / 4.69 ms (alternated,
    two rounds; 8 resident CTAs of 4 warps; a third call 4.90 / 4.90 -> 4.68 / 4.77), forward + backward 15.41 /
    15.44 -> 15.28 / 15.23 ms, and the OpenMM main job at 115,200 atoms 74.5 / 75.0 -> 74.0 / 73.9 ms per step; at
    14,400 atoms equal within noise (1.18 / 0.94 -> 1.05 / 0.95 ms).  V1.5's (H 128) was slower at 64 in session 20,
    so the tuned table launch keeps 128, and so does the App. A size (hid 128, C 256: its [9, C] accumulators spill 34
    floats per thread at 64 registers, none at 128; its table forward ran ~2x slower at 64 in session 21).
    Session 22 (``benchmarks/results/session22_h200.md``) undid that cap: with the streamed forward's unit vectors
    in scratch (R_SCR) the bundled table forward spills 16 floats at 64 registers, and at 128 it runs 4.51 / 4.50 ->
    3.85 / 3.82 ms at 115k and 0.97 -> 0.96 / 0.92 ms at 14.4k (alternated).  The same session turned PHI_SCR on for
    the App. A forward (10.97 -> 10.74 ms twice; forward + backward with it on in both kernels: equal).
    """
    K = kind.upper()
    tuned = H >= 64     # the GPU sweep (benchmarks/results/attention_v2_tune_h200.md) ran at the V1.5 size, H = 128
    d_pps, d_su, d_mr = 8, 1, 128   # programs per SM; the streamed forward's unroll (SU); register cap
    if kind == "fwd":   # ~64 rows per program
        d_bt, d_hb, d_kc, d_nw = (max(1, 64 // block_e), 32, 16, 4) if tuned else (max(1, 64 // block_e), 32, 32, 8)
    else:               # ~32 rows per program
        d_bt, d_hb, d_kc, d_nw = (max(1, 32 // block_e), 32, 32, 4) if tuned else (max(1, 32 // block_e), 16, 16, 4)
    if table:
        d_nw = 4
    elif not tuned and hid >= 128:     # the App. A size (sessions 19, 20)
        d_nw, d_kc, d_mr, d_pps, d_su = (8, 16, 80, 3, 1) if kind == "bwd" else (8, 16, 80, 3, 8)
    hb = min(H, _env_int(f"E2F_V2_{K}_HB", d_hb))
    kc = min(hid, _env_int(f"E2F_V2_{K}_KC", d_kc))
    cfg = dict(BLOCK_T=_env_int(f"E2F_V2_{K}_BLOCK_T", d_bt), HB=hb, KC=kc,
               BLOCK_NB=min(kc, triton.next_power_of_2(nb)), num_warps=_env_int(f"E2F_V2_{K}_NUM_WARPS", d_nw),
               progs_per_sm=_env_int(f"E2F_V2_{K}_PROGS_PER_SM", _env_int("E2F_V2_PROGS_PER_SM", d_pps)))
    agg = os.environ.get(f"E2F_V2_{K}_AGG") or _AGG_DEFAULT[kind]
    if agg not in _AGG_MODES or (kind == "fwd" and agg == "split"):
        raise ValueError(f"E2F_V2_{K}_AGG={agg!r}: expected one of "
                         f"{sorted(m for m in _AGG_MODES if kind != 'fwd' or m != 'split')}")
    cfg["AGG"] = _AGG_MODES[agg]
    # the RBF window's basis values computed once per block and staged in scratch (``_layer1``; session 21, bit-for-bit
    # the per-term result), on for the tuned (H >= 64) launches: H200, V1.5 10k forward 2.91 -> 2.68 ms (three rounds),
    # forward + backward 10.05 -> 9.34 ms; the App. A launch (80 registers: forward spills 66 -> 78) 10.99 -> 11.09
    # ms forward (two rounds), forward + backward equal, so it stayed off there; after session 22's R_SCR the App. A
    # forward gains from it (10.97 -> 10.74 ms, two rounds), so every forward launch takes it (only windowed ones reach
    # it), and the untuned backward stays without.  E2F_V2_PHI_SCR=0 / 1 overrides both kinds
    cfg["PHI_SCR"] = bool(_env_int("E2F_V2_PHI_SCR", 1 if tuned or kind == "fwd" else 0))
    # a register cap per thread, 128 by default (E2F_V2_{FWD,BWD}_MAXNREG; 0 = none): uncapped, every tile compiles
    # to 155-255 registers, i.e. one or two CTAs (8 warps) per SM, so these kernels waited on memory latency with
    # little to hide it; the cap trades spills (to L1) for resident warps (16 per SM).  H200, session 10
    # (benchmarks/results/attention_stages_s10_h200.jsonl): forward + backward 27.7 -> 22.5 ms (V1.5, 10k atoms),
    # 82.5 -> 56.6 ms (bundled, 115k); 96 / 80 registers and 168 for the backward alone were slower
    cfg["maxnreg"] = _env_int(f"E2F_V2_{K}_MAXNREG", d_mr) or None
    # edges per step of the streamed aggregation and its backward (``_stream_aggregate``, ``_stream_aggregate_bwd``:
    # E2F_V2_{FWD,BWD}_STREAM_G; untimed, opt-in)
    cfg["SG"] = _env_int(f"E2F_V2_{K}_STREAM_G", 1)
    if cfg["SG"] < 1 or cfg["SG"] & (cfg["SG"] - 1):
        raise ValueError(f"E2F_V2_{K}_STREAM_G={cfg['SG']}: expected a power of two >= 1")
    if kind == "fwd":   # the streamed forward's one-edge step unrolled (``_stream_aggregate``; see above)
        cfg["SU"] = _env_int("E2F_V2_FWD_STREAM_U", d_su)
        if cfg["SU"] < 1:
            raise ValueError(f"E2F_V2_FWD_STREAM_U={cfg['SU']}: expected an integer >= 1")
        # the streamed forward's unit vectors staged in scratch once per block (``_stream_aggregate``; bit-for-bit the
        # same U), on for every forward launch: H200, session 22, two rounds alternated
        # (benchmarks/results/attention_stages_rscr_*_s22b_h200.jsonl): the bundled model's table forward at 115k
        # 4.79 -> 4.50 ms, App. A 32k MLP 11.12 -> 10.97 ms and table 5.82 -> 5.77 ms, V1.5 10k 2.68 -> 2.67 ms.
        # E2F_V2_FWD_R_SCR=0 turns it off
        cfg["R_SCR"] = bool(_env_int("E2F_V2_FWD_R_SCR", 1))
        # the streamed forward's value-row gathers cached in L2 only (".cg"; session 24, opt-in): each source's row is
        # read by ~K targets spread over the grid, so L1 keeps little of it.  H200, two rounds alternated
        # (benchmarks/results/attention_stages_vcg_*_s24c_h200.jsonl): App. A 32k table forward 5.79 -> 5.41 ms, but
        # the App. A MLP forward (10.68 -> 10.70), the bundled 115k and the V1.5 10k launches did not move, so no
        # real model's launch takes it
        cfg["VCACHE"] = ".cg" if _env_int("E2F_V2_FWD_V_CG", 0) else ""
    if kind != "fwd":   # backward variants (see _attn_bwd_kernel_v2); DR_ACC / DU_BCAST timed without effect, opt-in
        cfg.update(DR_ACC=bool(_env_int("E2F_V2_BWD_DR_ACC", 0)), DU_BCAST=bool(_env_int("E2F_V2_BWD_DU_BCAST", 0)))
        # E2F_V2_BWD_ATOM (stage timing only, wrong gradients): 1 = the dv / dk atomics as plain stores, 2 = no
        # write; the difference to the default is what the atomics cost (session 12)
        cfg["ATOM"] = _env_int("E2F_V2_BWD_ATOM", 0)
        cfg["ASEM"] = atomic_sem()
        # the backward's d/dd over the RBF window with its basis values staged in scratch (``_rbf_window_dd``; bit-for-bit
        # the per-term result), on by default (session 22, H200, two rounds alternated,
        # benchmarks/results/attention_stages_ddscr_s22a_h200.jsonl): forward + backward 10.73 -> 10.67 ms at V1.5 10k,
        # 46.0 -> 45.3 ms at App. A 32k; only windowed launches (V1.5, App. A) reach it.  E2F_V2_BWD_DD_SCR=0 turns it off
        cfg["DD_SCR"] = bool(_env_int("E2F_V2_BWD_DD_SCR", 1))
        # DX2_SCR (dg / dw through scratch, dx2 as one K = 2H dot after the head loop) is on by default wherever
        # 2 H is a multiple of the K chunk: H200, session 11 (benchmarks/results/attention_stages_s11_h200.jsonl),
        # forward + backward 22.2 -> 20.7 ms at V1.5 10k atoms, 56.1 -> 55.7 ms bundled 115k; E2F_V2_BWD_DX2_SCR=0
        # turns it off, =1 insists (an error where the chunk does not divide 2 H)
        fits = (2 * H) % kc == 0
        asked = _env_int("E2F_V2_BWD_DX2_SCR", -1)
        if asked == 1 and not fits:
            raise ValueError(f"E2F_V2_BWD_DX2_SCR needs 2 H ({2 * H}) to be a multiple of the K chunk ({kc})")
        cfg["DX2_SCR"] = fits if asked < 0 else bool(asked)
    assert H % hb == 0 and hid % kc == 0, cfg
    return cfg


def _maxnreg(cfg: dict) -> dict:
    """The launch option of a register cap, only where one is set, on NVIDIA GPUs (the interpreter takes no such
    option; Triton's AMD backend has no maxnreg)."""
    if not cfg.get("maxnreg") or os.environ.get("TRITON_INTERPRET") == "1" or torch.version.hip:
        return {}
    return {"maxnreg": cfg["maxnreg"]}


_DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")


def atomic_sem() -> str:
    """Memory semantics of the backward's dv / dk atomics, ``E2F_V2_ATOMIC_SEM``: "relaxed" (default since
    session 12) or "acq_rel" (Triton's default, what every earlier session ran).  They only accumulate (nothing in
    the kernel reads dv or dk back, and the launch boundary orders them for later kernels), so relaxed atomics give
    the same sums, in the same nondeterministic order, as CUDA's own ``atomicAdd``.  acq_rel compiles each
    atomic to ``MEMBAR.ALL.GPU; ATOMG...; CCTL.IVALL``: a GPU-wide fence before it and an invalidation of the L1
    cache after it, which also throws away the register spills and gathered rows held in L1 (sm_90 SASS, checked
    with cuobjdump); relaxed is one ``REDG``.  Not yet timed on a GPU when it became the default: the SASS leaves
    no way for it to be slower, and ``E2F_V2_ATOMIC_SEM=acq_rel`` brings the old code back for an A/B timing."""
    val = os.environ.get("E2F_V2_ATOMIC_SEM", "relaxed")
    if val not in ("relaxed", "acq_rel"):
        raise ValueError(f"E2F_V2_ATOMIC_SEM={val!r}: expected 'relaxed' or 'acq_rel'")
    return val


def bf16_values(v: torch.Tensor) -> bool:
    """Values that arrive in bf16 (the model's ``set_precision("bf16")``: the value projection runs under bf16
    autocast) go to the kernels as they are, instead of as a float32 copy; the kernels convert each loaded value to
    float32 in registers.  The result is bit-identical (bf16 -> float32 is exact either way), the values' share of
    the per-edge gathers halves (36 C of ~41 C bytes per edge at the V1.5 size), and the float32 copy of v (N 9 C
    floats per layer) is not made.  The default since session 13 (H200, bf16 with radial tables: 10k atoms 12.27
    -> 12.86 steps/s, 100k 1.268 -> 1.274, ``benchmarks/results/session13_h200.md``); ``E2F_V2_BF16_VALUES=0``
    brings the float32 copy back."""
    return env_switch("E2F_V2_BF16_VALUES") and v.dtype == torch.bfloat16


def qk_layout() -> bool:
    """``E2F_V2_QK_LAYOUT``: how the kernels see q, k and their gradients.  "dh" (the default since session 13):
    [N, D, H] copies of the model's [N, H, D], made before each launch (2 N H D floats each way); "hd": the model's
    layout as it is.  In "dh" the backward's dk atomics write HB consecutive floats per row and component instead
    of HB floats D apart, i.e. D times fewer 32-byte sectors per atomic instruction (at V1.5, D = 8, dk is 1024 of
    the 3328 floats each edge adds atomically).  H200 (``benchmarks/results/session13_h200.md``), radial tables:
    attention forward + backward 8.90 -> 5.46 ms at V1.5 10k and 23.85 -> 15.51 ms at the bundled 115k; end to end
    V1.5 10k fp32 9.03 -> 9.21 and TF32 13.20 -> 14.00 steps/s, 20k 4.97 -> 5.17 and 7.48 -> 7.98."""
    val = os.environ.get("E2F_V2_QK_LAYOUT", "dh")
    if val not in ("hd", "dh"):
        raise ValueError(f"E2F_V2_QK_LAYOUT={val!r}: expected 'hd' or 'dh'")
    return val == "dh"


def dot_precision():
    """``E2F_V2_DOT_PREC`` (opt-in, untimed): the input precision of every edge-MLP dot, forward and backward.
    "tf32x3" splits each fp32 operand into two TF32 parts and runs three tensor-core products (about fp32
    accuracy); "tf32" one (about 1e-3 relative); "ieee" exact fp32 FMAs.  Unset: the forward follows
    ``allow_tf32`` and the backward stays "ieee"."""
    val = os.environ.get("E2F_V2_DOT_PREC")
    if val and val not in _DOT_PRECISIONS:
        raise ValueError(f"E2F_V2_DOT_PREC={val!r}: expected one of {_DOT_PRECISIONS}")
    return val or None


#: log of the smallest RBF basis value kept by the window: centres left out have phi_k = exp(gamma (d - mu_k)^2)
#: < exp(-30) = 9.4e-14 (relative to the largest basis value, 1), six orders of magnitude below fp32's resolution.
_RBF_TAIL = 30.0
_MU_UNIFORM: dict = {}


def rbf_window(mu: torch.Tensor, gamma: float, cutoff: float) -> int:
    """Width of the RBF window of the first edge-MLP Linear (0: every centre).

    phi_k(d) = exp(gamma (d - mu_k)^2) with the official centres mu_k = k R / (nb - 1) and gamma = -1 / (8 Delta^2)
    is below exp(-30) more than 15.5 spacings from d, so W0a phi(d) only needs the centres around d: 32 of the
    V1.5 model's 256 (8x fewer multiply-adds in the first Linear and in d/dd).  The terms left out are < 1e-13
    relative: the result is the fp32 result of the full sum up to summation order.  The width follows gamma:
    |gamma| Delta^2 (W/2 - 1/2)^2 >= 30.  Used only where it leaves out at least 3/4 of the centres (H200,
    ``benchmarks/results/session9_h200.md``: V1.5 attention forward 4.63 -> 4.09 ms and forward + backward
    29.0 -> 27.7 ms at 10k atoms, end to end 4.71 -> 4.96 steps/s; the bundled model's 32 of 64 made its
    backward 3 % slower, so it keeps every centre), only when mu is that uniform grid
    (checked once per mu tensor; not while a CUDA graph is being captured, where the check's device -> host copy
    is not allowed: that capture runs with every centre).  ``E2F_V2_RBF_WIN=0`` turns it off.  Shared by the
    attention and edge-degree v2 kernels."""
    if os.environ.get("E2F_V2_RBF_WIN", "auto") == "0":
        return 0
    nb = mu.numel()
    if nb < 2 or not gamma < 0 or not cutoff > 0:
        return 0
    delta = cutoff / (nb - 1)
    win = 2 * math.ceil(0.5 + math.sqrt(_RBF_TAIL / (-gamma * delta * delta)))
    if 4 * win > nb:    # a window of half the centres (the bundled model: 32 of 64) timed slower in the backward
        return 0
    try:
        version = mu._version
    except RuntimeError:        # an inference tensor (created under torch.inference_mode) has no version counter
        version = -1
    key = (mu.device, mu.data_ptr(), version, nb, float(cutoff))
    ok = _MU_UNIFORM.get(key)
    if ok is None:
        if mu.is_cuda and torch.cuda.is_current_stream_capturing():
            return 0
        grid = torch.linspace(0.0, float(cutoff), nb, dtype=torch.float64)
        ok = bool((mu.detach().to("cpu", torch.float64) - grid).abs().max() <= 1e-5 * cutoff)
        if len(_MU_UNIFORM) > 64:
            _MU_UNIFORM.clear()
        _MU_UNIFORM[key] = ok
    return win if ok else 0


def _grid(n_blocks: int, device, progs_per_sm: int) -> int:
    if device.type == "cuda":
        n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    else:  # interpreter
        n_sm = 2
    return max(1, min(n_blocks, n_sm * progs_per_sm))


#: the radial table of the call in progress (attention_triton_v2's ``table``): handed to the autograd Function
#: beside its arguments, whose positions (FUSED_N_FIXED, the reference backward's) stay those of every backend
_TABLE_ARG = threading.local()


def _table_launch_args(table, device):
    """(tcoef, tslot_t, tslot_s, tP, tM, th, TABLE) for a launch; dummies where there is no table."""
    if table is None:
        dummy = torch.zeros(1, device=device, dtype=torch.float32)
        islot = torch.zeros(1, device=device, dtype=torch.int32)
        return dummy, islot, islot, 1, 1, 1.0, False
    coef, slot_t, slot_s, P, M, h = table
    i32 = lambda x: x.to(device=device, dtype=torch.int32).contiguous()
    return (coef.detach().to(device=device, dtype=torch.float32).contiguous(), i32(slot_t), i32(slot_s),
            int(P), int(M), float(h), True)


def bf16_qk(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Queries and keys that arrive in bf16 (the bf16 mode: ``SO3ToScalar.lin2`` runs under bf16 autocast) go to
    the kernels as they are, like the values (``bf16_values``), instead of as float32 copies; the kernels convert
    each load exactly.  Bit-identical; it halves k's share of the per-edge gathers (H D of the floats each edge
    reads) and the bytes of the host-side copies (cast, [N, D, H] layout), forward and backward.  The default
    (``E2F_V2_BF16_QK=0`` restores the float32 copies).  Timed on an H200 in session 15 (V1.5, tables, bf16): with
    the session's other changes in, +3.8 % at 100k atoms (2.96 -> 3.07 steps/s, twice), +2.5 % at 10k and +2 % at
    20k on the CUDA-graph path; one earlier eager A/B at 2k / 10k, before those changes, was slower (10k 18.6 ->
    16.7)."""
    return env_switch("E2F_V2_BF16_QK") and q.dtype == torch.bfloat16 and k.dtype == torch.bfloat16


def _kernel_inputs(vec, q, k, v, qkl: bool):
    """vec, q, k, v as the v2 kernels read them (forward and backward alike): contiguous float32; q, k as [N, D, H]
    copies when ``qkl`` (``qk_layout``); v left in bf16 where ``bf16_values`` says so, q and k where ``bf16_qk``
    does (converted in the kernels)."""
    f32 = torch.float32
    vecc = vec.detach().to(f32).contiguous()
    keep = bf16_qk(q, k)

    def qk_in(x):
        # (a q / k made as [N, D, H] (``SO3ToScalar.from_parts_dh``) is a transposed view: no copy here; a dtype
        # conversion keeps its strides)
        x = x.detach() if keep else x.detach().to(f32)
        return (x.transpose(1, 2) if qkl else x).contiguous()

    qc, kc_ = qk_in(q), qk_in(k)
    vc = v.detach().contiguous() if bf16_values(v) else v.detach().to(f32).contiguous()
    return vecc, qc, kc_, vc


class FusedAttentionFunctionV2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, row_ptr, src, vec, q, k, v, t, s, mu, gamma, cutoff, allow_tf32, max_degree, softmax, *fc):
        table = getattr(_TABLE_ARG, "value", None)
        tab_args = _table_launch_args(table, v.device)
        smooth = check_softmax(softmax)
        N, H, D = q.shape
        C = v.shape[-1]
        nb = mu.numel()
        hid = fc[0].shape[0]
        f32 = torch.float32
        pt, ps, muc, fwd_w, _ = _prep(t, s, mu, fc, nb)
        rp = row_ptr.contiguous()
        srcc = src.contiguous()
        qkl = qk_layout()
        vecc, qc, kc_, vc = _kernel_inputs(vec, q, k, v, qkl)
        block_e = _block_e(rp, max_degree)
        prec = dot_precision() or ("tf32" if allow_tf32 else "ieee")
        win = rbf_window(mu, float(gamma), float(cutoff))
        U = torch.empty((N, 3, 9, C), device=v.device, dtype=f32)
        M = torch.empty((N, H), device=v.device, dtype=f32)
        S = torch.empty((N, H), device=v.device, dtype=f32)
        launches = _launches(rp, block_e) if N > 0 else []
        for be, perm, seg, use_perm in launches:
            cfg = launch_config(H, hid, nb, be, "fwd", table=bool(tab_args[6]))
            n_blocks = triton.cdiv(N, cfg["BLOCK_T"])     # with buckets: a bound (the kernel reads the count)
            nprog = _grid(n_blocks, v.device, cfg["progs_per_sm"])
            R = cfg["BLOCK_T"] * be
            stride = _scratch_floats("fwd", cfg["AGG"], R, hid, H, r_scr=cfg["R_SCR"])
            scratch = torch.empty(nprog * stride, device=v.device, dtype=f32)
            _LAST_COMPILED["fwd" if be == block_e else "fwd_small"] = _attn_fwd_kernel_v2[(nprog,)](
                rp, srcc, vecc, qc, kc_, vc, pt, ps, muc, *fwd_w, U, M, S, scratch, perm, seg,
                N, n_blocks, nprog, float(gamma), float(cutoff), 1.0 / math.sqrt(D), *tab_args[:6], nb=nb,
                C=C, H=H, D=D, HID=hid, BLOCK_T=cfg["BLOCK_T"], BLOCK_E=be, BLOCK_NB=cfg["BLOCK_NB"],
                HB=cfg["HB"], KC=cfg["KC"], PREC=prec, SMOOTH=smooth, PERM=use_perm, AGG=cfg["AGG"],
                SCR_STRIDE=stride, RBF_WIN=win, SG=cfg["SG"], TABLE=tab_args[6], QKL=qkl, SU=cfg["SU"],
                PHI_SCR=cfg["PHI_SCR"], R_SCR=cfg["R_SCR"], VCACHE=cfg["VCACHE"], num_warps=cfg["num_warps"],
                **_maxnreg(cfg))
        ctx.save_for_backward(row_ptr, src, vec, q, k, v, t, s, mu, M, S, *fc)
        ctx.table = table
        ctx.qkl = qkl
        ctx.launches = launches
        ctx.rbf_win = win
        ctx.gamma, ctx.cutoff, ctx.prec, ctx.block_e, ctx.softmax = float(gamma), float(cutoff), prec, block_e, softmax
        ctx.mark_non_differentiable(M, S)
        return U, M, S

    @staticmethod
    def backward(ctx, dU, _dM, _dS):
        row_ptr, src, vec, q, k, v, t, s, mu, M, S, *fc = ctx.saved_tensors
        nig = ctx.needs_input_grad
        grads = [None] * (FUSED_N_FIXED + len(fc))
        if dU is None:
            return tuple(grads)
        if needs_reference_backward(nig):  # training / double backward: autograd through the reference
            if ctx.table is not None:
                raise RuntimeError("a radial table of the edge MLP is for inference (energies and forces): no "
                                   "double backward or MLP-parameter gradients through it")
            return reference_backward(nig, dU, row_ptr, src, vec, q, k, v, t, s, mu, fc, ctx.gamma, ctx.cutoff,
                                      ctx.softmax)
        tab_args = _table_launch_args(ctx.table, v.device)

        N, H, D = q.shape
        C = v.shape[-1]
        nb = mu.numel()
        hid = fc[0].shape[0]
        f32 = torch.float32
        pt, ps, muc, fwd_w, bwd_w = _prep(t, s, mu, fc, nb)
        vecc, qc, kc_, vc = _kernel_inputs(vec, q, k, v, ctx.qkl)    # dq, dk below come out in qc's layout too
        dUc = dU.to(f32).contiguous()
        dvec = torch.zeros_like(vecc)
        dq = torch.empty(qc.shape, device=qc.device, dtype=f32)         # float32 whatever q's and k's dtype
        dk = torch.zeros(kc_.shape, device=kc_.device, dtype=f32)
        dv = torch.zeros(vc.shape, device=vc.device, dtype=f32)        # float32 sums whatever v's dtype
        rp = row_ptr.contiguous()
        for be, perm, seg, use_perm in ctx.launches:
            cfg = launch_config(H, hid, nb, be, "bwd", table=bool(tab_args[6]))
            n_blocks = triton.cdiv(N, cfg["BLOCK_T"])     # with buckets: a bound (the kernel reads the count)
            nprog = _grid(n_blocks, v.device, cfg["progs_per_sm"])
            R = cfg["BLOCK_T"] * be
            stride = _scratch_floats("bwd", cfg["AGG"], R, hid, H, cfg["DX2_SCR"])
            scratch = torch.empty(nprog * stride, device=v.device, dtype=f32)
            _LAST_COMPILED["bwd" if be == ctx.block_e else "bwd_small"] = _attn_bwd_kernel_v2[(nprog,)](
                rp, src.contiguous(), vecc, qc, kc_, vc, pt, ps, muc,
                *fwd_w, *bwd_w, M, S, dUc, dvec, dq, dk, dv, scratch, perm, seg,
                N, n_blocks, nprog, ctx.gamma, ctx.cutoff, 1.0 / math.sqrt(D), *tab_args[:6], nb=nb,
                C=C, H=H, D=D, HID=hid, BLOCK_T=cfg["BLOCK_T"], BLOCK_E=be, BLOCK_NB=cfg["BLOCK_NB"],
                HB=cfg["HB"], KC=cfg["KC"], PREC=ctx.prec, BPREC=dot_precision() or "ieee",
                SMOOTH=ctx.softmax == "smooth",
                DR_ACC=cfg["DR_ACC"], DU_BCAST=cfg["DU_BCAST"], PERM=use_perm, AGG=cfg["AGG"],
                SCR_STRIDE=stride, RBF_WIN=ctx.rbf_win, SG=cfg["SG"], DX2_SCR=cfg["DX2_SCR"] and not tab_args[6],
                TABLE=tab_args[6], QKL=ctx.qkl, ATOM=cfg["ATOM"], ASEM=cfg["ASEM"], PHI_SCR=cfg["PHI_SCR"],
                DD_SCR=cfg["DD_SCR"],
                num_warps=cfg["num_warps"],
                **_maxnreg(cfg))
        if ctx.qkl:     # [N, H, D] views of the kernels' [N, D, H] sums: the gradients of queries and keys made as
            # [N, D, H] (``SO3ToScalar.from_parts_dh``) need no copy; autograd takes any strides
            dq, dk = dq.transpose(1, 2), dk.transpose(1, 2)
        for idx, gr, x in ((2, dvec, vec), (3, dq, q), (4, dk, k), (5, dv, v)):
            if nig[idx]:
                grads[idx] = gr.to(x.dtype)
        return tuple(grads)


def attention_triton_v2(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, *,
                        allow_tf32: bool = False, max_degree: int | None = None, return_stats: bool = False,
                        softmax: str = "official", table=None):
    """Fused Triton attention edge part, v2 blocking; same signature / result as ``attention_triton``.

    ``allow_tf32`` is honoured here (for benchmarks); ``fused_attention`` always runs v2 with exact fp32
    ("ieee") dots, which measured faster than TF32 for v2 on an H100 (see ``kernels/__init__.py``)."""
    _TABLE_ARG.value = table        # ``table``: see attention_reference.table_lookup (experimental, inference)
    try:
        U, M, S = FusedAttentionFunctionV2.apply(row_ptr, src, vec, q, k, v, t, s, mu, gamma, cutoff,
                                                 allow_tf32, max_degree, softmax, *FCParams(*fc_params))
    finally:
        _TABLE_ARG.value = None
    return (U, M, S) if return_stats else U
