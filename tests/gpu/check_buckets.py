"""GPU correctness check of the degree-bucketed v2 launches (E2F_V2_BUCKETS=1) against float64.

    python tests/gpu/check_buckets.py [out.json]            # on a CUDA machine
    E2F_CHECK_DEVICE=cpu TRITON_INTERPRET=1 python tests/gpu/check_buckets.py   # dry run (small N)

Attention v2 (U and d/d(vec, q, k, v)) and edge-degree v2 (h and d/dvec), each with the buckets on and off,
on fresh random graphs whose in-degrees are uniform in [0, K] (both buckets populated): the bundled model's
shapes with K = 67 (liquid water at 5 A: tiles 128 / 64) and the V1.5 shapes with K = 32 (tiles 32 / 16).
Gate: relative error <= 1e-5 against the float64 reference; the buckets-on result is also compared with the
buckets-off one.
"""
from __future__ import annotations

import json
import os
import sys
from importlib import import_module
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
try:
    import openmm_e2former.kernels as K
    from openmm_e2former.kernels._testing import make_case, args_of, V15
except ImportError:
    import kernels as K
    from kernels._testing import make_case, args_of, V15

DEV = os.environ.get("E2F_CHECK_DEVICE", "cuda")
TOL = 1e-5
BUNDLED = dict(C=64, H=16, D=4, nb=64, T=32, hid=32)
V2 = import_module(K.__name__ + ".attention_triton_v2")
ED2 = import_module(K.__name__ + ".edge_degree_triton_v2")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def with_buckets(flag, fn):
    old = os.environ.get("E2F_V2_BUCKETS")
    os.environ["E2F_V2_BUCKETS"] = "1" if flag else "0"
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop("E2F_V2_BUCKETS")
        else:
            os.environ["E2F_V2_BUCKETS"] = old


def attention_case(name, N, K_, cfg, seed):
    c32 = make_case(N, K_, **cfg, device=DEV, seed=seed, special_rows=True)
    c64 = make_case(N, K_, **cfg, device=DEV, seed=seed, dtype=torch.float64, special_rows=True)
    a64 = list(args_of(c64))
    for n in (2, 3, 4, 5):
        a64[n] = a64[n].clone().requires_grad_(True)
    U64 = K.attention_reference(*a64, softmax="smooth")
    G = torch.randn(U64.shape, device=DEV, dtype=torch.float64, generator=torch.Generator(device=DEV).manual_seed(seed))
    g64 = torch.autograd.grad(U64, [a64[n] for n in (2, 3, 4, 5)], G)
    out = {}
    for flag in (False, True):
        def run():
            a = list(args_of(c32))
            for n in (2, 3, 4, 5):
                a[n] = a[n].clone().requires_grad_(True)
            U = V2.attention_triton_v2(*a, max_degree=K_, softmax="smooth")
            return [U.detach()] + list(torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G.float()))
        out[flag] = with_buckets(flag, run)
    deg = (c32["row_ptr"][1:] - c32["row_ptr"][:-1]).cpu()
    be = V2._block_e(c32["row_ptr"], K_)
    row = dict(kind="attention", name=name, N=N, K=K_, tile=be, small_tile=be // 2,
               in_small_bucket=int((deg <= be // 2).sum()), **cfg)
    for flag, tag in ((False, "off"), (True, "on")):
        row[f"err_{tag}"] = [rel(x, y) for x, y in zip(out[flag], [U64] + list(g64))]
    row["on_vs_off"] = [rel(x, y) for x, y in zip(out[True], out[False])]
    row["finite"] = all(bool(torch.isfinite(x).all()) for x in out[True])
    row["pass"] = row["finite"] and max(row["err_on"]) <= TOL and max(row["err_off"]) <= TOL
    return row


def edge_case(name, N, K_, nb, hid, C, seed):
    c32 = make_case(N, K_, C=16, H=16, D=4, nb=nb, T=16, hid=hid, device=DEV, seed=seed)
    g = torch.Generator().manual_seed(seed)
    T0, S0 = torch.randn(N, nb, generator=g).to(DEV), torch.randn(N, nb, generator=g).to(DEV)
    params = [K.FCParams(*(x.to(DEV) for x in K.FCParams.random(nb, nb, hid, C, generator=g))) for _ in range(3)]
    common = (c32["row_ptr"], c32["src"])
    vec64 = c32["vec"].double().requires_grad_(True)
    h64 = K.edge_degree_reference(*common, vec64, T0.double(), S0.double(),
                                  [K.FCParams(*(x.double() for x in p)) for p in params], c32["mu"].double(),
                                  c32["gamma"], c32["cutoff"])
    G = torch.randn(h64.shape, device=DEV, dtype=torch.float64, generator=torch.Generator(device=DEV).manual_seed(seed))
    gr, = torch.autograd.grad(h64, [vec64], G)
    out = {}
    for flag in (False, True):
        def run():
            vec = c32["vec"].clone().requires_grad_(True)
            h = ED2.edge_degree_triton_v2(*common, vec, T0, S0, params, c32["mu"], c32["gamma"], c32["cutoff"],
                                          max_degree=K_)
            return [h.detach(), torch.autograd.grad(h, [vec], G.float())[0]]
        out[flag] = with_buckets(flag, run)
    row = dict(kind="edge_degree", name=name, N=N, K=K_, nb=nb, hid=hid, C=C)
    for flag, tag in ((False, "off"), (True, "on")):
        row[f"err_{tag}"] = [rel(out[flag][0], h64), rel(out[flag][1], gr)]
    row["on_vs_off"] = [rel(x, y) for x, y in zip(out[True], out[False])]
    row["finite"] = all(bool(torch.isfinite(x).all()) for x in out[True])
    row["pass"] = row["finite"] and max(row["err_on"]) <= TOL and max(row["err_off"]) <= TOL
    return row


def main(argv):
    out_path = argv[0] if argv else os.path.join(os.environ.get("OUT", "."), "buckets_gpu_check.json")
    small = DEV == "cpu"
    n = 12 if small else 2000
    cases = [("attention", ("bundled-water", n, 67, BUNDLED, 201)),
             ("attention", ("v15", n, 32, V15 if not small else dict(BUNDLED, C=32), 202)),
             ("edge", ("edge-bundled-water", n, 67, 64, 32, 64, 203)),
             ("edge", ("edge-v15", n, 32, 256 if not small else 64, 128 if not small else 32,
                       256 if not small else 32, 204))]
    rows = []
    for kind, args in cases:
        try:
            r = attention_case(*args) if kind == "attention" else edge_case(*args)
        except Exception as exc:
            r = dict(kind=kind, name=args[0], error=repr(exc)[:500], **{"pass": False})
        print(json.dumps({k: (["%.1e" % x for x in v] if isinstance(v, list) else v) for k, v in r.items()}),
              flush=True)
        rows.append(r)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)      # what finished survives a time limit
        Path(out_path).write_text(json.dumps(dict(rows=rows, complete=False), indent=1))
    res = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu-interpreter", tol=TOL, rows=rows,
               all_pass=all(r["pass"] for r in rows), complete=True)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(res, indent=1))
    print("ALL PASS" if res["all_pass"] else "SOME FAILED", flush=True)
    return 0 if res["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
