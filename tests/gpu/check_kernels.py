"""GPU correctness check: fused Triton attention vs the PyTorch reference (float64 ground truth).

Usage:  python tests/gpu/check_kernels.py [out.json] [--quick] [--only=PREFIX] [--v2]
The attention kernel checked is v1 (``attention_triton``) unless --v2 is given: then v2 (``attention_triton_v2``, the
default on CUDA) with today's default launches.  --only=appA: the cases whose name starts so.
For every case, fresh random inputs; forward U and the gradients w.r.t. vec, q, k, v (random upstream
gradient) are compared as ||a - b|| / ||b|| against the reference evaluated in float64 on the GPU.
Outputs are poisoned (NaN) before each kernel run by pre-filling the CUDA caching allocator's blocks; every
element must be finite.  Gate: rel. error <= 1e-5 with exact-fp32 ("ieee") dots; TF32 errors are reported
only.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
try:
    import openmm_e2former.kernels as K
    from openmm_e2former.kernels._testing import make_case, args_of, TINY, V15
except ImportError:
    import kernels as K
    from kernels._testing import make_case, args_of, TINY, V15
from importlib import import_module

AT = import_module(K.__name__ + ".attention_triton")
AT2 = import_module(K.__name__ + ".attention_triton_v2")
#: the attention kernel under test: AT (v1, the default of this script) or AT2 (--v2)
IMPL = {"mod": AT, "fn": AT.attention_triton}
TOL = 1e-5
DEV = os.environ.get("E2F_CHECK_DEVICE", "cuda")   # "cpu" + TRITON_INTERPRET=1: dry run of this script


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def poison_allocator(nbytes):
    """Fill a large freed block with NaN so that later torch.empty()s start from garbage, not zeros."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=DEV)
    x.fill_(float("nan"))
    del x


def check_case(name, N, K_, cfg, seed, allow_tf32=False, fixed_degree=False):
    c32 = make_case(N, K_, **cfg, device=DEV, seed=seed, fixed_degree=fixed_degree)
    c64 = {key: (val.double() if isinstance(val, torch.Tensor) and val.is_floating_point() else val)
           for key, val in c32.items()}
    c64["fc_params"] = K.FCParams(*(x.double() for x in c32["fc_params"]))
    E = int(c32["row_ptr"][-1])
    a32 = list(args_of(c32))
    a64 = list(args_of(c64))
    for n in (2, 3, 4, 5):
        a32[n] = a32[n].clone().requires_grad_(True)
        a64[n] = a64[n].clone().requires_grad_(True)
    out_bytes = N * 27 * cfg["C"] * 4
    poison_allocator(max(4 * out_bytes, 1 << 20))
    t0 = time.time()
    U = IMPL["fn"](*a32, allow_tf32=allow_tf32, max_degree=K_)
    sync()
    t_fwd = time.time() - t0
    gen = torch.Generator(device=DEV).manual_seed(seed + 1000)
    G = torch.randn(U.shape, device=DEV, dtype=torch.float64, generator=gen)
    poison_allocator(max(4 * out_bytes, 1 << 20))
    grads = torch.autograd.grad(U, [a32[n] for n in (2, 3, 4, 5)], G.float())
    sync()
    U64 = K.attention_reference(*a64)
    g64 = torch.autograd.grad(U64, [a64[n] for n in (2, 3, 4, 5)], G)
    finite = bool(torch.isfinite(U).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    # also the fp32 reference, for context
    with torch.no_grad():
        U32r = K.attention_reference(*[x.detach() if isinstance(x, torch.Tensor) else x for x in a32])
    row = dict(name=name, N=N, K=K_, E=E, tf32=allow_tf32, kernel=IMPL["mod"].__name__.rsplit(".", 1)[-1], **cfg,
               err_U=rel(U, U64), err_dvec=rel(grads[0], g64[0]), err_dq=rel(grads[1], g64[1]),
               err_dk=rel(grads[2], g64[2]), err_dv=rel(grads[3], g64[3]),
               err_U_ref32_vs_ref64=rel(U32r, U64), finite=finite, first_call_s=t_fwd,
               isolated_zero=bool((U[0] == 0).all()))
    errs = [row[k] for k in ("err_U", "err_dvec", "err_dq", "err_dk", "err_dv")]
    try:
        row["compile_info"] = IMPL["mod"].compile_info() if DEV == "cuda" else None
    except BaseException as exc:
        row["compile_info"] = repr(exc)[:100]
    row["pass"] = finite and row["isolated_zero"] and (allow_tf32 or max(errs) <= TOL)
    del U, grads, U64, g64, U32r, a32, a64, c32, c64
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return row


APPA = dict(V15, H=16)


def check_edge_degree(name, N, K_, nb, hid, C, seed, time_it=False):
    """Fused edge-degree embedding vs float64 reference: forward and d/dvec (+ optional timing)."""
    ED = import_module(K.__name__ + ".edge_degree_triton")
    c32 = make_case(N, K_, C=16, H=16, D=4, nb=nb, T=16, hid=hid, device=DEV, seed=seed)
    g = torch.Generator().manual_seed(seed)
    T0 = torch.randn(N, nb, generator=g).to(DEV)
    S0 = torch.randn(N, nb, generator=g).to(DEV)
    params = [K.FCParams(*(x.to(DEV) for x in K.FCParams.random(nb, nb, hid, C // 2, generator=g)))
              for _ in range(3)]
    vec = c32["vec"].clone().requires_grad_(True)
    vec64 = c32["vec"].double().requires_grad_(True)
    p64 = [K.FCParams(*(x.double() for x in p)) for p in params]
    common = (c32["row_ptr"], c32["src"])
    poison_allocator(max(4 * N * 9 * C * 4, 1 << 20))
    h = ED.edge_degree_triton(*common, vec, T0, S0, params, c32["mu"], c32["gamma"], c32["cutoff"], max_degree=K_)
    G = torch.randn(h.shape, device=DEV, dtype=torch.float64, generator=torch.Generator(device=DEV).manual_seed(seed))
    gk, = torch.autograd.grad(h, [vec], G.float())
    h64 = K.edge_degree_reference(*common, vec64, T0.double(), S0.double(), p64, c32["mu"].double(),
                                  c32["gamma"], c32["cutoff"])
    gr, = torch.autograd.grad(h64, [vec64], G)
    row = dict(name=name, N=N, K=K_, E=int(c32["row_ptr"][-1]), nb=nb, hid=hid, C=C,
               err_h=rel(h, h64), err_dvec=rel(gk, gr),
               finite=bool(torch.isfinite(h).all() and torch.isfinite(gk).all()))
    row["pass"] = row["finite"] and max(row["err_h"], row["err_dvec"]) <= TOL
    try:
        row["compile_info"] = AT.compile_info()
    except BaseException as exc:
        row["compile_info"] = repr(exc)[:100]
    if time_it and DEV == "cuda":
        import triton
        a = (*common, vec, T0, S0, params, c32["mu"], c32["gamma"], c32["cutoff"])
        def fused_fb():
            return torch.autograd.grad(ED.edge_degree_triton(*a, max_degree=K_), [vec], G.float())
        def ref_fb():
            return torch.autograd.grad(K.edge_degree_reference(*a), [vec], G.float())
        for nm, fn in (("fused_fwd_bwd_ms", fused_fb), ("ref_fwd_bwd_ms", ref_fb)):
            try:
                row[nm] = triton.testing.do_bench(fn, warmup=3, rep=20, return_mode="median")
            except Exception as exc:
                row[nm] = repr(exc)[:100]
    return row


def final_cases():
    """Short priority-ordered list for the last (time-limited) device run."""
    return [("attn", ("v15", 2000, 32, V15, 101, False, False)),
            ("attn", ("appA-fixedK", 2000, 64, APPA, 102, False, True)),
            ("edge", ("edge-v15", 2000, 32, 256, 128, 256, 103, False)),
            ("attn", ("tiny", 2000, 8, TINY, 104, False, False)),
            ("attn", ("v15", 20000, 32, V15, 105, False, False)),
            ("edge", ("edge-v15", 20000, 32, 256, 128, 256, 106, True)),
            ("attn", ("v15-tf32", 2000, 32, V15, 107, True, False))]


def cases(quick=False):
    out = []
    sizes = (100, 2000) if quick else (100, 2000, 20000)
    if DEV == "cpu":
        return [("tiny", 5, 8, TINY, 1, False, False), ("tiny", 4, 20, TINY, 2, True, False)]
    seed = 1
    for cfg_name, cfg in (("tiny", TINY), ("v15", V15)):
        for N in sizes:
            for K_ in (8, 32):
                out.append((f"{cfg_name}", N, K_, cfg, seed, False, False)); seed += 1
        out.append((f"{cfg_name}", 2000, 64, cfg, seed, False, False)); seed += 1
        out.append((f"{cfg_name}-fixedK", 2000, 32, cfg, seed, False, True)); seed += 1
    out.append(("appA", 2000, 64, APPA, seed, False, True)); seed += 1
    # TF32 last (reported, not gated)
    for cfg_name, cfg, K_ in (("tiny", TINY, 32), ("v15", V15, 32), ("appA", APPA, 64)):
        out.append((f"{cfg_name}-tf32", 2000, K_, cfg, seed, True, False)); seed += 1
    return out


def main(argv):
    quick = "--quick" in argv
    only = [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]   # --only=appA: cases whose name starts so
    if "--v2" in argv:
        IMPL.update(mod=AT2, fn=AT2.attention_triton_v2)
    paths = [a for a in argv if not a.startswith("--")]
    out_path = paths[0] if paths else os.path.join(os.environ.get("OUT", "."), "kernels_gpu_check.json")
    if "--final" in argv:
        return main_final(out_path)
    rows = []
    print(f"{'case':14s} {'N':>6s} {'K':>3s} {'E':>8s} {'U':>9s} {'dvec':>9s} {'dq':>9s} {'dk':>9s} "
          f"{'dv':>9s} {'ref32':>9s} pass", flush=True)
    todo = [c for c in cases(quick) if not only or c[0].startswith(only[0])]
    if not todo:
        print(f"no case matches --only={only[0]}", flush=True)
        return 2
    for args in todo:
        try:
            r = check_case(*args)
        except Exception as exc:  # keep going, record the failure
            r = dict(name=args[0], N=args[1], K=args[2], error=repr(exc)[:500], **{"pass": False})
            print("ERROR", args[:3], repr(exc)[:300], flush=True)
            import traceback
            print("".join(traceback.format_exc().splitlines(True)[-12:]), flush=True)
            if DEV == "cuda":
                torch.cuda.empty_cache()
        else:
            print(f"{r['name']:14s} {r['N']:6d} {r['K']:3d} {r['E']:8d} {r['err_U']:9.2e} {r['err_dvec']:9.2e} "
                  f"{r['err_dq']:9.2e} {r['err_dk']:9.2e} {r['err_dv']:9.2e} {r['err_U_ref32_vs_ref64']:9.2e} "
                  f"{r['pass']}  {r['compile_info']}", flush=True)
        rows.append(r)
    res = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu-interpreter", torch=torch.__version__,
               triton=__import__("triton").__version__, tol=TOL, rows=rows,
               all_pass=all(r["pass"] for r in rows))
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(res, indent=1))
    print("ALL PASS" if res["all_pass"] else "SOME FAILED", flush=True)
    return 0 if res["all_pass"] else 1


def main_final(out_path):
    rows = []
    for kind, args in final_cases():
        try:
            r = check_case(*args) if kind == "attn" else check_edge_degree(*args)
        except Exception as exc:
            r = dict(name=args[0], N=args[1], K=args[2], error=repr(exc)[:500], **{"pass": False})
        print({k_: (f"{v_:.2e}" if isinstance(v_, float) else v_) for k_, v_ in r.items()}, flush=True)
        rows.append(r)
        res = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu", tol=TOL, rows=rows,
                   all_pass=all(x["pass"] for x in rows))
        Path(out_path).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
