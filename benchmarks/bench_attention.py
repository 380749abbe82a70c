"""Benchmark: fused Triton attention edge part vs the naive PyTorch reference (gather / softmax / scatter).

Usage: python benchmarks/bench_attention.py [out_prefix] [--quick] [--impls fused,reference,...] [--settings appA,v15]
                                           [--ns 128,512,...]
writes <out_prefix>.json and <out_prefix>.md (default benchmarks/results/attention_<gpu>).

Settings (fp32 throughout, every atom has exactly K incoming edges, random sources):
  appA : the paper's App. A setting K = 64, H = 16; with the V1.5 sizes C = 256, D = 8, nb = 256, T = 128,
         hid = 128 (App. A does not fix C / D; we pick the V1.5 ones)
  v15  : the V1.5 model setting K = 32, H = 128, D = 8, C = 256, nb = 256, T = 128, hid = 128
Modes: "fwd" (U only) and "fwd+bwd" (U and dU/d(vec, q, k, v) for a random upstream gradient).
Implementations (--impls, default fused,reference):
  fused        ``kernels.fused_attention`` as the model calls it: the default backend (v2 since session 3), its
               default tiles, aggregation modes and degree buckets, exact fp32 ("ieee") dots
  fused_tf32x3 the same with E2F_V2_DOT_PREC=tf32x3 (three TF32 tensor-core products per fp32 dot)
  fused_v1     the v1 kernels (``attention_triton``), exact fp32: what sessions 1-2 measured as "fused"
  fused_v1_tf32 the v1 kernels with TF32 dots in the edge MLP (session 2's "fused_tf32")
  reference    the PyTorch reference (gather / softmax / scatter, E x H and E x C tensors in memory)
  fused_table / reference_table   the same two with the edge MLP read from a radial table (``TABLE``, the OpenMM
               force's default on CUDA since session 12): a random continuous table of the model's format
               (``kernels._testing.random_table``, 3 elements), read by the kernels and by the PyTorch reference
               alike, so the pair compares like with like; their FLOP / byte counts drop the MLP and add the
               table rows (``flops_bytes(..., table=True)``)
Timing: triton.testing.do_bench, median.  Peak memory: max_memory_allocated above the inputs.
FLOPs / bytes are the algorithmic counts of the fused kernels (see flops_bytes); the same counts are used
for the reference, so its "TFLOPS" is useful work per second, not what it executes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import triton

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
try:
    import openmm_e2former.kernels as K
    from openmm_e2former.kernels._testing import make_case, args_of, env_vars, random_table, V15
except ImportError:
    import kernels as K
    from kernels._testing import make_case, args_of, env_vars, random_table, V15
from importlib import import_module

AT = import_module(K.__name__ + ".attention_triton")

SETTINGS = {
    "appA": dict(K=64, cfg=dict(V15, H=16)),
    "v15": dict(K=32, cfg=dict(V15)),
}


def flops_bytes(N, K_, C, H, D, nb, T, hid, mode, table=False):
    E = N * K_
    if table:
        return _flops_bytes_table(E, N, C, H, D, mode)
    mlp = 2 * (nb * hid + hid * hid + hid * 2 * H)
    f_fwd = E * (mlp + 4 * nb + 2 * H * D + 12 * H + 63 * C) + N * 2 * 2 * T * hid
    b_fwd = E * (8 + 12 + 4 * H * D + 36 * C + 4 * hid) + N * (8 + 4 * (H * D + hid + 27 * C + 2 * H + 2 * T))
    if mode == "fwd":
        return f_fwd, b_fwd
    f_bwd = E * (2 * mlp + 4 * nb + 8 * nb + 6 * H * D + 30 * H + 6 * 27 * C) + N * 2 * 2 * T * hid
    b_bwd = (E * (8 + 12 + 4 * H * D + 36 * C + 4 * hid + 12 + 8 * 9 * C + 8 * H * D)
             + N * (8 + 4 * (2 * H * D + hid + 27 * C + 2 * H + 2 * T)))
    return f_fwd + f_bwd, b_fwd + b_bwd


def _flops_bytes_table(E, N, C, H, D, mode):
    """The counts with the edge MLP read from a table: per edge, the cubic of 2H columns (6 flops each; the
    backward also its slope, 5 more) instead of the RBF and the MLP, and one [4, 2H] float32 row read per pass
    instead of the target / source projections; the rest as in the MLP counts (logits, softmax, aggregation)."""
    f_fwd = E * (6 * 2 * H + 2 * H * D + 12 * H + 63 * C)
    b_fwd = E * (8 + 12 + 4 * H * D + 36 * C + 16 * 2 * H) + N * (8 + 4 * (H * D + 27 * C + 2 * H))
    if mode == "fwd":
        return f_fwd, b_fwd
    f_bwd = E * (11 * 2 * H + 6 * H * D + 30 * H + 6 * 27 * C)
    b_bwd = (E * (8 + 12 + 4 * H * D + 36 * C + 16 * 2 * H + 12 + 8 * 9 * C + 8 * H * D)
             + N * (8 + 4 * (2 * H * D + 27 * C + 2 * H)))
    return f_fwd + f_bwd, b_fwd + b_bwd


IMPLS = ("fused", "fused_tf32x3", "fused_v1", "fused_v1_tf32", "reference", "fused_table", "reference_table")
IMPL_ENV = {"fused_tf32x3": {"E2F_V2_DOT_PREC": "tf32x3"}}


def make_fn(impl, args, mode, K_, table=None):
    if impl == "reference":
        call = lambda: K.attention_reference(*args)
    elif impl == "reference_table":
        call = lambda: K.attention_reference(*args, table=table)
    elif impl == "fused_table":
        call = lambda: K.fused_attention(*args, max_degree=K_, table=table)
    elif impl.startswith("fused_v1"):
        tf32 = impl == "fused_v1_tf32"
        call = lambda: AT.attention_triton(*args, allow_tf32=tf32, max_degree=K_)
    elif impl in ("fused", "fused_tf32x3"):
        call = lambda: K.fused_attention(*args, max_degree=K_)
    else:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return call()
        return fn
    G = None
    leaves = [args[n] for n in (2, 3, 4, 5)]

    def fn():
        nonlocal G
        U = call()
        if G is None:
            G = torch.randn_like(U)
        return torch.autograd.grad(U, leaves, G)
    return fn


def bench_one(setting, N, impl, mode, case):
    s = SETTINGS[setting]
    K_, cfg = s["K"], s["cfg"]
    args = list(args_of(case))
    if mode != "fwd":
        for n in (2, 3, 4, 5):
            args[n] = args[n].detach().requires_grad_(True)
    table = None
    if impl.endswith("_table"):
        coef, *rest = random_table(2 * cfg["H"], N, torch.Generator().manual_seed(N), device="cuda")
        table = (coef.float(), *rest)
        del coef                                    # the float64 copy (170 MB at the V1.5 size) is not timed
    fn = make_fn(impl, args, mode, K_, table)
    row = dict(setting=setting, N=N, K=K_, impl=impl, mode=mode, **cfg)
    with env_vars(IMPL_ENV.get(impl, {})):
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = fn()
            torch.cuda.synchronize()
            row["peak_mem_MB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            del out
            ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
            fl, by = flops_bytes(N, K_, **cfg, mode=mode, table=table is not None)
            row.update(ms=ms, TFLOPS=fl / ms * 1e-9, GBps=by / ms * 1e-6, flop=fl, bytes=by)
        except torch.cuda.OutOfMemoryError:
            row.update(ms=None, oom=True)
        except Exception as exc:
            row.update(ms=None, error=repr(exc)[:300])
            if "CUDA error" in repr(exc) or "AcceleratorError" in repr(exc):
                row["fatal"] = True
    del fn, args, table
    torch.cuda.empty_cache()
    return row


def _opt(argv, name, default):
    if name in argv:
        i = argv.index(name)
        val = argv[i + 1]
        del argv[i:i + 2]
        return val
    return default


def main(argv):
    argv = list(argv)
    impls = _opt(argv, "--impls", "fused,reference").split(",")
    settings = _opt(argv, "--settings", ",".join(SETTINGS)).split(",")
    ns_opt = _opt(argv, "--ns", None)
    for i in impls:
        if i not in IMPLS:
            raise SystemExit(f"unknown impl {i!r}; expected one of {IMPLS}")
    quick = "--quick" in argv
    paths = [a for a in argv if not a.startswith("--")]
    gpu = "h200" if "H200" in torch.cuda.get_device_name() else "h100"
    prefix = paths[0] if paths else str(REPO / f"benchmarks/results/attention_{gpu}")
    Ns = (128, 2048, 32768) if quick else (128, 512, 2048, 8192, 32768, 100000)
    if ns_opt:
        Ns = tuple(int(n) for n in ns_opt.split(","))
    budget_s = float(os.environ.get("BENCH_BUDGET_S", "1e9"))
    t_start = time.time()
    rows = []
    ref_oom = {}
    dead = False
    for setting in settings:
        for N in Ns:
            if dead or time.time() - t_start > budget_s:
                print(f"time budget exhausted: skipping {setting} N={N}", flush=True)
                continue
            case = make_case(N, SETTINGS[setting]["K"], **SETTINGS[setting]["cfg"], device="cuda", seed=N,
                             fixed_degree=True, special_rows=False)
            for mode in ("fwd", "fwd+bwd"):
                for impl in impls:
                    if impl.startswith("reference") and ref_oom.get((setting, mode, impl)):
                        rows.append(dict(setting=setting, N=N, impl=impl, mode=mode, ms=None, oom=True,
                                         skipped="smaller N already OOM"))
                        continue
                    if dead:
                        continue
                    r = bench_one(setting, N, impl, mode, case)
                    dead = dead or bool(r.get("fatal"))
                    if r.get("oom") and impl.startswith("reference"):
                        ref_oom[(setting, mode, impl)] = True
                    rows.append(r)
                    Path(prefix + ".partial.json").write_text(json.dumps(rows, indent=1))
                    ms = r.get("ms")
                    print(f"{setting:5s} {mode:8s} N={N:6d} {impl:11s} "
                          + (f"{ms:9.3f} ms {r['TFLOPS']:6.2f} TF/s {r['GBps']:7.1f} GB/s "
                             f"peak {r['peak_mem_MB']:8.1f} MB" if ms else f"{'OOM' if r.get('oom') else r.get('error')}"),
                          flush=True)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               impls=impls, settings={k: dict(K=v["K"], **v["cfg"]) for k, v in SETTINGS.items()}, rows=rows)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(prefix + ".json").write_text(json.dumps(res, indent=1))
    Path(prefix + ".md").write_text(to_markdown(res))
    print(to_markdown(res))


#: peak HBM bandwidth (GB/s) and fp32 FMA (non-tensor) TFLOP/s from the vendors' data sheets
PEAKS = {"H100": (3350.0, 67.0), "H200": (4800.0, 67.0)}


def peaks(device_name):
    for key, val in PEAKS.items():
        if key in device_name:
            return key, val
    return None, (None, None)


def to_markdown(res):
    impls = res.get("impls", ["fused", "fused_tf32", "reference"])
    gpu, (bw, fl) = peaks(res["device"])
    lines = [f"# Attention edge part: fused Triton vs PyTorch reference ({res['device']})", "",
             f"torch {res['torch']}, triton {res['triton']}, fp32 inputs, median of do_bench. "
             "appA: K=64, H=16, C=256, D=8, nb=256, hid=128; v15: K=32, H=128, C=256, D=8, nb=256, hid=128; "
             "every atom has K edges from random sources. fwd+bwd = U and d/d(vec,q,k,v). "
             "TFLOPS / GB/s use the fused kernels' algorithmic counts (bytes: every per-edge gather counted) for "
             "every implementation, so the reference's figures are useful work per second"
             + (f"; % of the {gpu} roofline: {bw:.0f} GB/s HBM, {fl:.0f} TFLOP/s fp32 (data sheet)." if gpu else "."),
             "", "| setting | mode | N | " + " | ".join(f"{i} ms" for i in impls)
             + " | speed-up (fused vs reference) | fused TFLOPS | fused GB/s | % of HBM roofline | fused peak MB | reference peak MB |",
             "|---|---|---:|" + "---:|" * (len(impls) + 6)]
    by = {}
    for r in res["rows"]:
        by[(r["setting"], r["mode"], r["N"], r["impl"])] = r

    def ms(r):
        if r is None:
            return "–"
        if r.get("ms") is None:
            return "OOM" if r.get("oom") else "err"
        return f"{r['ms']:.3f}"
    keys = sorted({(r["setting"], r["mode"], r["N"]) for r in res["rows"]},
                  key=lambda x: (x[0], x[1], x[2]))
    for st, mo, n in keys:
        # one row for the MLP pair (fused vs reference) and one for the table pair where measured
        for fi, ri, label in (("fused", "reference", st), ("fused_table", "reference_table", f"{st}, table")):
            f, rf = by.get((st, mo, n, fi)), by.get((st, mo, n, ri))
            if f is None and rf is None:
                if fi == "fused" and not any((st, mo, n, i) in by for i in ("fused_table", "reference_table")):
                    # neither pair (e.g. --impls fused_v1,fused_tf32x3): one row of every impl's times
                    lines.append(f"| {st} | {mo} | {n} | " + " | ".join(ms(by.get((st, mo, n, i))) for i in impls)
                                 + " | – | – | – | – | – | – |")
                continue
            sp = (f"{rf['ms'] / f['ms']:.1f}x" if f and rf and f.get("ms") and rf.get("ms") else "–")
            ok = f and f.get("ms")
            cells = [ms(by.get((st, mo, n, i))) if (i.endswith("_table") == fi.endswith("_table")) else "–"
                     for i in impls]
            lines.append(f"| {label} | {mo} | {n} | " + " | ".join(cells) + f" | {sp} | "
                         + (f"{f['TFLOPS']:.2f} | {f['GBps']:.0f} | "
                            + (f"{100 * f['GBps'] / bw:.0f} %" if bw else "–") + f" | {f['peak_mem_MB']:.0f}"
                            if ok else "– | – | – | –")
                         + " | " + (f"{rf['peak_mem_MB']:.0f}" if rf and rf.get("ms") else ms(rf)) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
