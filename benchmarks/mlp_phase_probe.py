"""Probe: can the App. A edge MLP run faster on tensor cores at fp32 accuracy (tf32x3) than on the FMA units?

Item 4a's MLP pair (``bench_attention.py``, setting appA) is at 44 % of the HBM roofline in the forward, against a
50 % target; session 20 found half of its time in the edge MLP + logits + softmax phase.  Sessions 9 and 19 timed
the fused kernels' edge-MLP dots with ``E2F_V2_DOT_PREC=tf32x3``: 17-38 % and ~2x slower.  Those dots were the
kernel's K-chunked ones (K = 16-32, A read back from scratch per chunk).  This probe asks the question the
restructure plan in ``attention_notes.md`` depends on, in isolation: one [BM, HID] tile per step, the whole K of
layer 2 in one ``tl.dot`` with its accumulator kept in the MMA layout through the LayerNorm / SiLU into layer 3
(the "MLP kept in the mma layout across layers" form), against the kernels' SIMT form (x staged in scratch, K-chunked
ieee dots).

The MLP is the App. A one (``attention_reference.edge_mlp`` with the RBF window of ``rbf_window``):
    h0 = W0 [phi_win(d); t_i; s_j] + b0   (t / s projections gathered per row, as the fused kernel does)
    x1 = silu(LN(h0)),  x2 = silu(LN(W1 x1 + b1)),  out = W2 x2 + b2   ->  [E, 2H]
Layer 1 is the same code in every mode (rank-1 updates over the WIN centres), so the modes differ in layers 2 and 3.
Each mode's output is checked against float64 (max error relative to max |out|) before it is timed.

Modes:
  simt     x staged in per-program scratch, K-chunked ``tl.dot(..., input_precision="ieee")`` (the fused kernels' form)
  tc3      full-K ``tl.dot`` on tensor cores, tf32x3 (three TF32 products: fp32 accuracy)
  tc1      the same in plain TF32 (an upper bound on speed; fails the 1e-5 gate by design)
  l1       layer 1 + its LayerNorm / SiLU only (what every mode shares), output the row sums; with the window
           ("win", 32 in every other mode) set to 24 / 16 / 0 centres to see its cost
  tc3h     tf32x3 by hand: the weights split into TF32 hi / lo parts on the host and loaded once per program,
           three TF32 dots per layer
  l1g      layer 1 as l1, with the tile's rows sorted by d and groups of RG rows walking the union of their windows
           (one weight row load per group instead of per row; bit-for-bit l1's sums); ``--set l1g``
  l1gs     the same with each 32-column chunk's basis values staged in scratch; ``--set l1gs``

Usage: python benchmarks/mlp_phase_probe.py [--out PREFIX] [--quick] [--configs 0,4,...]

Results (H200, session 24): ``benchmarks/results/session24_h200.md`` section 2, raw rows in
``mlp_phase_probe_s24{a,b}_h200.json`` (s24a ran an earlier config list, without tc3h and the window sweep; each row
records its settings), and ``_s24{d,e}`` for the grouped first layer.  In short: simt 5.24 ms, tc3 8.9 ms, tc3h 6.3 ms,
tc1 4.4 ms; layer 1 alone 2.92 ms, grouped 4.4-11 ms.  Since then the probe calls the fused kernels' own helpers
(``_chunked_dot``, ``_to_scratch``, ``_ln_stats``, ``_rbf_window_start``) instead of copies of them; re-timed
(``_s24i``): l1 2.93, simt 5.25, tc3 8.91 ms, the same errors.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch
import triton
import triton.language as tl

try:        # the fused kernels' own helpers, so that "simt" is their form and not a copy of it
    from openmm_e2former.kernels.attention_triton_v2 import _chunked_dot, _ln_stats, _rbf_window_start, _to_scratch
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels.attention_triton_v2 import _chunked_dot, _ln_stats, _rbf_window_start, _to_scratch


@triton.jit
def _ln_silu(h, w, b, HID: tl.constexpr):
    """silu(LN(h)) as the fused kernels' ``_mlp_to_x2`` forms it."""
    y, _rstd = _ln_stats(h, HID)
    n = y * w[None, :] + b[None, :]
    return n * tl.sigmoid(n)


@triton.jit
def _mlp_probe_kernel(d_ptr, tgt_ptr, src_ptr, pt, ps, mu, W0aT, b0, ln0w, ln0b, W1T, b1, ln1w, ln1b, W2T, b2,
                      W1h, W1l, W2h, W2l, out, scratch, E, n_tiles, nprog, gamma, cutoff,
                      nb: tl.constexpr, HID: tl.constexpr, NO: tl.constexpr, BM: tl.constexpr, WIN: tl.constexpr,
                      KC: tl.constexpr, MODE: tl.constexpr, RG: tl.constexpr = 8):
    # MODE 0 simt, 1 tc3 (tf32x3), 2 tc1 (tf32), 3 layer 1 only, 4 tc3h (weights split on the host into TF32 hi / lo
    # parts and loaded once per program, three TF32 dots by hand)
    pid = tl.program_id(0)
    scr = scratch + pid.to(tl.int64) * (BM * HID)
    offs_f = tl.arange(0, HID)
    offs_o = tl.arange(0, NO)
    offs_m = tl.arange(0, BM)
    if MODE == 4:
        w1h = tl.load(W1h + offs_f[:, None] * HID + offs_f[None, :])
        w1l = tl.load(W1l + offs_f[:, None] * HID + offs_f[None, :])
        w2h = tl.load(W2h + offs_f[:, None] * NO + offs_o[None, :])
        w2l = tl.load(W2l + offs_f[:, None] * NO + offs_o[None, :])
    tile = pid
    while tile < n_tiles:
        offs_r = tile.to(tl.int64) * BM + offs_m
        tile += nprog
        mask = offs_r < E
        d = tl.load(d_ptr + offs_r, mask=mask, other=1.0)
        tgt = tl.load(tgt_ptr + offs_r, mask=mask, other=0)
        j = tl.load(src_ptr + offs_r, mask=mask, other=0)
        if MODE == 5 or MODE == 6:
            # the rows sorted by d, in groups of RG consecutive ones; each group walks the union of its rows'
            # windows once, so one weight row serves RG rows (terms outside a row's own window are exact zeros,
            # added in the same ascending order: bit-for-bit the per-row sum)
            NG: tl.constexpr = BM // RG
            key = (d.to(tl.int32, bitcast=True).to(tl.int64) << 16) | offs_m.to(tl.int64)
            perm = (tl.sort(key, 0) & 65535).to(tl.int64)
            srow = (offs_r - offs_m) + perm
            smask = srow < E
            ds = tl.load(d_ptr + srow, mask=smask, other=1.0)
            ts = tl.load(tgt_ptr + srow, mask=smask, other=0)
            js = tl.load(src_ptr + srow, mask=smask, other=0)
            hs = tl.load(pt + ts[:, None] * HID + offs_f[None, :]) + tl.load(ps + js[:, None] * HID + offs_f[None, :])
            hs += tl.load(b0 + offs_f)[None, :]
            k0s = _rbf_window_start(ds, cutoff, nb, WIN)
            d2 = tl.reshape(ds, [NG, RG])
            k02 = tl.reshape(k0s, [NG, RG])
            kb = tl.min(k02, 1)
            span = tl.max(tl.max(k02, 1) - kb, 0) + WIN
            acc = tl.reshape(hs, [NG, RG, HID])
            if MODE == 5:
                kk = 0
                while kk < span:                    # (a while loop: the interpreter cannot range() over a tensor)
                    kidx = kb + kk
                    kk += 1
                    km = kidx < nb
                    wrow = tl.load(W0aT + kidx[:, None] * HID + offs_f[None, :], mask=km[:, None], other=0.0)
                    diff = d2 - tl.load(mu + kidx, mask=km, other=0.0)[:, None]
                    inwin = (kidx[:, None] >= k02) & (kidx[:, None] < k02 + WIN)
                    phi = tl.where(inwin, tl.exp(gamma * diff * diff), 0.0)
                    acc += phi[:, :, None] * wrow[:, None, :]
            else:
                # MODE 6: the basis values of each SC-column chunk of the span computed once, as a [BM, SC] tile
                # staged in scratch, then read back [NG, RG] per column (no exp in the inner loop)
                SC: tl.constexpr = 32
                offs_c = tl.arange(0, SC)
                kb_row = tl.reshape(tl.broadcast_to(kb[:, None], [NG, RG]), [BM])
                g_off = tl.arange(0, NG)[:, None] * (RG * SC) + tl.arange(0, RG)[None, :] * SC
                c0 = 0
                while c0 < span:
                    kc2 = kb_row[:, None] + c0 + offs_c[None, :]                  # [BM, SC] centre index
                    km2 = kc2 < nb
                    diff2 = ds[:, None] - tl.load(mu + kc2, mask=km2, other=0.0)
                    inwin2 = (kc2 >= k0s[:, None]) & (kc2 < k0s[:, None] + WIN)
                    tl.debug_barrier()
                    tl.store(scr + offs_m[:, None] * SC + offs_c[None, :],
                             tl.where(inwin2, tl.exp(gamma * diff2 * diff2), 0.0))
                    tl.debug_barrier()
                    for c in range(SC):
                        kidx = kb + c0 + c
                        wrow = tl.load(W0aT + kidx[:, None] * HID + offs_f[None, :], mask=(kidx < nb)[:, None],
                                       other=0.0)
                        phi = tl.load(scr + g_off + c)
                        acc += phi[:, :, None] * wrow[:, None, :]
                    c0 += SC
            x1s = _ln_silu(tl.reshape(acc, [BM, HID]), tl.load(ln0w + offs_f), tl.load(ln0b + offs_f), HID)
            tl.store(out + srow * NO, tl.sum(x1s, 1), mask=smask)
        else:
            h0 = tl.load(pt + tgt[:, None] * HID + offs_f[None, :]) + tl.load(ps + j[:, None] * HID + offs_f[None, :])
            h0 += tl.load(b0 + offs_f)[None, :]
            k0 = _rbf_window_start(d, cutoff, nb, WIN)
            for w in range(WIN):
                kk = k0 + w
                diff = d - tl.load(mu + kk)
                h0 += tl.exp(gamma * diff * diff)[:, None] * tl.load(W0aT + kk[:, None] * HID + offs_f[None, :])
            x1 = _ln_silu(h0, tl.load(ln0w + offs_f), tl.load(ln0b + offs_f), HID)
            if MODE == 3:
                tl.store(out + offs_r * NO, tl.sum(x1, 1), mask=mask)
            else:
                if MODE == 0:
                    _to_scratch(scr, x1, BM, HID)
                    h1 = _chunked_dot(scr, W1T, HID, 0, tl.zeros([BM, HID], dtype=tl.float32)
                                      + tl.load(b1 + offs_f)[None, :], BM, HID, HID, KC, "ieee")
                    _to_scratch(scr, _ln_silu(h1, tl.load(ln1w + offs_f), tl.load(ln1b + offs_f), HID), BM, HID)
                    o = _chunked_dot(scr, W2T, NO, 0, tl.zeros([BM, NO], dtype=tl.float32)
                                     + tl.load(b2 + offs_o)[None, :], BM, HID, NO, KC, "ieee")
                elif MODE == 4:
                    x1h = (x1.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
                    x1l = x1 - x1h
                    h1 = tl.zeros([BM, HID], dtype=tl.float32) + tl.load(b1 + offs_f)[None, :]
                    h1 = tl.dot(x1l, w1h, h1, input_precision="tf32")
                    h1 = tl.dot(x1h, w1l, h1, input_precision="tf32")
                    h1 = tl.dot(x1h, w1h, h1, input_precision="tf32")
                    x2 = _ln_silu(h1, tl.load(ln1w + offs_f), tl.load(ln1b + offs_f), HID)
                    x2h = (x2.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
                    x2l = x2 - x2h
                    o = tl.zeros([BM, NO], dtype=tl.float32) + tl.load(b2 + offs_o)[None, :]
                    o = tl.dot(x2l, w2h, o, input_precision="tf32")
                    o = tl.dot(x2h, w2l, o, input_precision="tf32")
                    o = tl.dot(x2h, w2h, o, input_precision="tf32")
                else:
                    PREC: tl.constexpr = "tf32x3" if MODE == 1 else "tf32"
                    w1 = tl.load(W1T + offs_f[:, None] * HID + offs_f[None, :])
                    h1 = tl.dot(x1, w1, tl.zeros([BM, HID], dtype=tl.float32) + tl.load(b1 + offs_f)[None, :],
                                input_precision=PREC)
                    x2 = _ln_silu(h1, tl.load(ln1w + offs_f), tl.load(ln1b + offs_f), HID)
                    w2 = tl.load(W2T + offs_f[:, None] * NO + offs_o[None, :])
                    o = tl.dot(x2, w2, tl.zeros([BM, NO], dtype=tl.float32) + tl.load(b2 + offs_o)[None, :],
                               input_precision=PREC)
                tl.store(out + offs_r[:, None] * NO + offs_o[None, :], o, mask=mask[:, None])


MODES = {"simt": 0, "tc3": 1, "tc1": 2, "l1": 3, "tc3h": 4, "l1g": 5, "l1gs": 6}


def tf32_split(w):
    """w = hi + lo with hi's mantissa cut to TF32's 10 bits (the low 13 bits cleared) and lo = w - hi exact."""
    hi = (w.view(torch.int32) & -8192).view(torch.float32)
    return hi.contiguous(), (w - hi).contiguous()


def make_inputs(N, K, nb=256, T=128, hid=128, H=16, cutoff=4.5, device="cuda", seed=0):
    g = torch.Generator().manual_seed(seed)
    E = N * K
    tgt = torch.arange(N).repeat_interleave(K)
    src = torch.randint(0, N, (E,), generator=g)
    d = 0.7 + (cutoff * 1.05 - 0.7) * torch.rand(E, generator=g, dtype=torch.float64)
    t = torch.randn(N, T, generator=g, dtype=torch.float64)
    s = torch.randn(N, T, generator=g, dtype=torch.float64)
    nin = nb + 2 * T
    W0 = torch.randn(hid, nin, generator=g, dtype=torch.float64) / math.sqrt(nin)
    P = dict(W0=W0, b0=0.1 * torch.randn(hid, generator=g, dtype=torch.float64),
             ln0w=1 + 0.1 * torch.randn(hid, generator=g, dtype=torch.float64),
             ln0b=0.1 * torch.randn(hid, generator=g, dtype=torch.float64),
             W1=torch.randn(hid, hid, generator=g, dtype=torch.float64) / math.sqrt(hid),
             b1=0.1 * torch.randn(hid, generator=g, dtype=torch.float64),
             ln1w=1 + 0.1 * torch.randn(hid, generator=g, dtype=torch.float64),
             ln1b=0.1 * torch.randn(hid, generator=g, dtype=torch.float64),
             W2=torch.randn(2 * H, hid, generator=g, dtype=torch.float64) / math.sqrt(hid),
             b2=0.1 * torch.randn(2 * H, generator=g, dtype=torch.float64))
    mu = torch.linspace(0, cutoff, nb, dtype=torch.float64)
    gamma = -0.5 / (2 * cutoff / (nb - 1)) ** 2
    pt = t @ W0[:, nb:nb + T].T                 # per-atom projections, as the fused kernel's pt / ps
    ps = s @ W0[:, nb + T:].T
    host = dict(d=d, tgt=tgt, src=src, pt=pt, ps=ps, mu=mu, gamma=gamma, cutoff=cutoff, P=P, nb=nb, hid=hid, H=H)
    f32 = lambda x: x.to(device=device, dtype=torch.float32).contiguous()
    dev = dict(d=f32(d), tgt=tgt.to(device=device, dtype=torch.int32), src=src.to(device=device, dtype=torch.int32),
               pt=f32(pt), ps=f32(ps), mu=f32(mu), W0aT=f32(W0[:, :nb].T), b0=f32(P["b0"]), ln0w=f32(P["ln0w"]),
               ln0b=f32(P["ln0b"]), W1T=f32(P["W1"].T), b1=f32(P["b1"]), ln1w=f32(P["ln1w"]), ln1b=f32(P["ln1b"]),
               W2T=f32(P["W2"].T), b2=f32(P["b2"]))
    dev["W1h"], dev["W1l"] = tf32_split(dev["W1T"])
    dev["W2h"], dev["W2l"] = tf32_split(dev["W2T"])
    return host, dev


def reference(host, rows, mode):
    """float64 output for the edges ``rows`` (all RBF centres: the window leaves out < exp(-30) of the largest)."""
    F = torch.nn.functional
    d = host["d"][rows]
    P = host["P"]
    phi = torch.exp(host["gamma"] * (d[:, None] - host["mu"][None, :]) ** 2)
    h0 = phi @ P["W0"][:, :host["nb"]].T + host["pt"][host["tgt"][rows]] + host["ps"][host["src"][rows]] + P["b0"]
    hid = host["hid"]
    x1 = F.silu(F.layer_norm(h0, (hid,), P["ln0w"], P["ln0b"], 1e-5))
    if mode in ("l1", "l1g", "l1gs"):
        return x1.sum(1, keepdim=True)
    x2 = F.silu(F.layer_norm(x1 @ P["W1"].T + P["b1"], (hid,), P["ln1w"], P["ln1b"], 1e-5))
    return x2 @ P["W2"].T + P["b2"]


def run(dev, E, mode, BM, KC, num_warps, progs_per_sm, maxnreg=None, num_stages=None, win=32, rg=8):
    nb = dev["mu"].numel()
    hid = dev["W1T"].shape[0]
    NO = dev["W2T"].shape[1]
    n_tiles = triton.cdiv(E, BM)
    dv = dev["d"].device
    nsm = torch.cuda.get_device_properties(0).multi_processor_count if dv.type == "cuda" else 2
    nprog = min(n_tiles, nsm * progs_per_sm)
    scratch = torch.empty(nprog * BM * hid, device=dv, dtype=torch.float32)
    out = torch.empty(E, NO, device=dv, dtype=torch.float32)
    gamma = -0.5 / (2 * 4.5 / (nb - 1)) ** 2
    kw = dict(num_warps=num_warps)
    if maxnreg and dv.type == "cuda":
        kw["maxnreg"] = maxnreg
    if num_stages:
        kw["num_stages"] = num_stages

    def fn():
        _mlp_probe_kernel[(nprog,)](dev["d"], dev["tgt"], dev["src"], dev["pt"], dev["ps"], dev["mu"], dev["W0aT"],
                                    dev["b0"], dev["ln0w"], dev["ln0b"], dev["W1T"], dev["b1"], dev["ln1w"],
                                    dev["ln1b"], dev["W2T"], dev["b2"], dev["W1h"], dev["W1l"], dev["W2h"],
                                    dev["W2l"], out, scratch, E, n_tiles, nprog, gamma, 4.5,
                                    nb=nb, HID=hid, NO=NO, BM=BM, WIN=win, KC=KC, MODE=MODES[mode], RG=rg, **kw)
        return out
    return fn


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--configs", default=None, help="comma-separated indices into the config list")
    ap.add_argument("--set", default="default", choices=("default", "l1g", "l1gs"), help="which config list")
    a = ap.parse_args(argv)
    N, K = (2048, 64) if a.quick else (a.n, 64)
    host, dev = make_inputs(N, K)
    E = N * K
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, E, (4096,), generator=g)
    # (mode, BM, KC, warps, programs per SM, maxnreg, RBF window)
    configs = [("l1", 64, 16, 8, 3, None, 32), ("l1", 64, 16, 8, 3, None, 24), ("l1", 64, 16, 8, 3, None, 16),
               ("l1", 64, 16, 8, 3, None, 0),
               ("simt", 64, 16, 8, 3, 80, 32), ("simt", 64, 16, 4, 4, None, 32),
               ("tc3h", 64, 16, 4, 2, None, 32), ("tc3h", 64, 16, 8, 2, None, 32), ("tc3h", 64, 16, 8, 1, None, 32),
               ("tc3", 64, 16, 8, 1, None, 32), ("tc1", 128, 16, 8, 1, None, 32)]
    if a.set == "l1gs":     # session 24, after s24d: the grouped first layer with its basis values staged
        configs = [("l1", 64, 16, 8, 3, None, 32), ("l1gs", 64, 16, 8, 3, None, 32, 8),
                   ("l1gs", 64, 16, 8, 3, None, 32, 4), ("l1gs", 64, 16, 4, 4, None, 32, 8),
                   ("l1gs", 64, 16, 4, 4, None, 32, 4), ("l1gs", 64, 16, 4, 4, None, 32, 16),
                   ("l1", 64, 16, 8, 3, None, 32), ("l1gs", 64, 16, 4, 4, None, 32, 8)]
    if a.set == "l1g":      # session 24, after s24b: the grouped first layer against the per-row one
        configs = [("l1", 64, 16, 8, 3, None, 32), ("l1g", 64, 16, 8, 3, None, 32, 8), ("l1g", 64, 16, 8, 3, None, 32, 4),
                   ("l1g", 64, 16, 8, 3, None, 32, 16), ("l1g", 64, 16, 4, 4, None, 32, 8),
                   ("l1g", 64, 16, 8, 2, None, 32, 8), ("l1", 64, 16, 8, 3, None, 32), ("l1g", 64, 16, 8, 3, None, 32, 8)]
    if a.configs:
        configs = [c for i, c in enumerate(configs) if str(i) in a.configs.split(",")]
    hid, NO = 128, 32
    mac = E * (32 * hid + hid * hid + hid * NO)          # windowed layer 1 + layers 2, 3
    rows_out = []
    for mode, BM, KC, nw, pps, mr, win, *rest in configs:
        rg = rest[0] if rest else 8
        row = dict(mode=mode, BM=BM, KC=KC, num_warps=nw, progs_per_sm=pps, maxnreg=mr, win=win, N=N, K=K)
        if mode.startswith("l1g"):
            row["RG"] = rg
        try:
            fn = run(dev, E, mode, BM, KC, nw, pps, mr, win=win, rg=rg)
            o = fn()
            torch.cuda.synchronize()
            ref = reference(host, rows, mode)
            got = o[rows.to("cuda")][:, :ref.shape[1]].double().cpu()
            row["max_rel_err"] = float((got - ref).abs().max() / ref.abs().max())
            ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
            row.update(ms=ms, mlp_TFLOPS=(2 * mac / ms * 1e-9) if not mode.startswith("l1") else None)
        except Exception as exc:            # a config that does not compile / fit is a result too
            row["error"] = repr(exc)[:300]
        print(json.dumps(row), flush=True)
        rows_out.append(row)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out + ".json", "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, triton=triton.__version__,
                           rows=rows_out), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
