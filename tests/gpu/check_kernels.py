"""GPU correctness check: fused Triton attention vs the PyTorch reference (float64 ground truth).

Usage:  python tests/gpu/check_kernels.py [out.json] [--quick]
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
    U = AT.attention_triton(*a32, allow_tf32=allow_tf32, max_degree=K_)
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
    row = dict(name=name, N=N, K=K_, E=E, tf32=allow_tf32, **cfg,
               err_U=rel(U, U64), err_dvec=rel(grads[0], g64[0]), err_dq=rel(grads[1], g64[1]),
               err_dk=rel(grads[2], g64[2]), err_dv=rel(grads[3], g64[3]),
               err_U_ref32_vs_ref64=rel(U32r, U64), finite=finite, first_call_s=t_fwd,
               isolated_zero=bool((U[0] == 0).all()))
    errs = [row[k] for k in ("err_U", "err_dvec", "err_dq", "err_dk", "err_dv")]
    try:
        row["compile_info"] = AT.compile_info() if DEV == "cuda" else None
    except BaseException as exc:
        row["compile_info"] = repr(exc)[:100]
    row["pass"] = finite and row["isolated_zero"] and (allow_tf32 or max(errs) <= TOL)
    del U, grads, U64, g64, U32r, a32, a64, c32, c64
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return row


APPA = dict(V15, H=16)


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
    paths = [a for a in argv if not a.startswith("--")]
    out_path = paths[0] if paths else os.path.join(os.environ.get("OUT", "."), "kernels_gpu_check.json")
    rows = []
    print(f"{'case':14s} {'N':>6s} {'K':>3s} {'E':>8s} {'U':>9s} {'dvec':>9s} {'dq':>9s} {'dk':>9s} "
          f"{'dv':>9s} {'ref32':>9s} pass", flush=True)
    for args in cases(quick):
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
