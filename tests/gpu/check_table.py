"""GPU check of the radial-table path of the v2 attention and edge-degree kernels (TABLE, session 11): U and the
gradients to vec, q, k, v (attention), h and d/dvec (edge degree) against the float64 PyTorch reference reading
the same table, on fresh random inputs and tables,
at the tiny, V1.5 and App. A sizes, with the default launches and the other aggregation modes; fp32 relative
error <= 1e-5 (issue #4 item 3).

    python tests/gpu/check_table.py OUT.json [--device cuda]   (TRITON_INTERPRET=1 and --device cpu: the
    interpreter, small sizes only)
"""
from __future__ import annotations

import json
import sys

import torch

from openmm_e2former import kernels as KM
from openmm_e2former.kernels import _testing as T_
from openmm_e2former.kernels.attention_reference import attention_reference


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(N, K, sizes, seed, device, env=None):
    with T_.env_vars(env):
        case = T_.make_case(N, K, **sizes, seed=seed, device=device)
        c64 = T_.make_case(N, K, **sizes, seed=seed, dtype=torch.float64, device=device)
        tab = T_.random_table(2 * sizes["H"], N, torch.Generator().manual_seed(seed + 1000), device=device)
        a = list(T_.args_of(case))
        a64 = list(T_.args_of(c64))
        for n in (2, 3, 4, 5):
            a[n] = a[n].clone().requires_grad_(True)
            a64[n] = a64[n].clone().requires_grad_(True)
        U = KM.fused_attention(*a, backend="triton_v2", table=(tab[0].float(),) + tab[1:])
        Ur = attention_reference(*a64, table=tab)
        G = torch.randn(U.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
        gt = torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G.float())
        gr = torch.autograd.grad(Ur, [a64[n] for n in (2, 3, 4, 5)], G)
        return [rel(U.double(), Ur)] + [rel(x.double(), y) for x, y in zip(gt, gr)]


def check_edge_degree(N, K, seed, device, nb=64, hid=32, C=32, T=16, env=None):
    """The edge-degree v2 kernels with a table of the three MLPs' last hidden layers ([rows, 4, 3 hid]): h and
    d/dvec against the float64 reference with the same table."""
    from openmm_e2former.kernels import edge_degree_triton_v2 as ed2
    from openmm_e2former.kernels.edge_degree_reference import edge_degree_reference

    with T_.env_vars(env):
        case = T_.make_case(N, K, **T_.TINY, seed=seed, device=device)
        g = torch.Generator().manual_seed(seed)
        T0, S0 = torch.randn(N, T, generator=g).to(device), torch.randn(N, T, generator=g).to(device)
        params = [tuple(x.to(device) for x in KM.FCParams.random(nb, T, hid, C, generator=g)) for _ in range(3)]
        mu = torch.linspace(0, 4.5, nb, device=device)
        gam = KM.rbf_gamma(4.5, nb)
        tab = T_.random_table(3 * hid, N, g, device=device)
        rp, src = case["row_ptr"], case["src"]
        v32 = case["vec"].float().clone().requires_grad_(True)
        v64 = case["vec"].double().clone().requires_grad_(True)
        h = ed2.edge_degree_triton_v2(rp, src, v32, T0, S0, params, mu, gam, 4.5, max_degree=K,
                                      table=(tab[0].float(),) + tab[1:])
        p64 = [KM.FCParams(*(x.double() for x in p)) for p in params]
        h64 = edge_degree_reference(rp, src, v64, T0.double(), S0.double(), p64, mu.double(), gam, 4.5, table=tab)
        G = torch.randn(h64.shape, generator=g, dtype=torch.float64).to(device)
        (gk,) = torch.autograd.grad(h, [v32], G.float())
        (gr,) = torch.autograd.grad(h64, [v64], G)
        return [rel(h.double(), h64), rel(gk.double(), gr)]


def main(argv):
    out = argv[0] if argv else "table_gpu_check.json"
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cuda"
    big = device != "cpu"
    runs = [("tiny", T_.TINY, 2000 if big else 9, 32 if big else 9, {}),
            ("tiny, split bwd", T_.TINY, 2000 if big else 9, 32 if big else 9, {"E2F_V2_BWD_AGG": "split"}),
            ("tiny, tiled fwd, streamed bwd", T_.TINY, 2000 if big else 9, 17,
             {"E2F_V2_FWD_AGG": "tile", "E2F_V2_BWD_AGG": "stream"}),
            ("tiny, [N, H, D] q / k layout", T_.TINY, 2000 if big else 9, 32 if big else 9, {"E2F_V2_QK_LAYOUT": "hd"}),
            ("tiny, unit vectors in scratch", T_.TINY, 2000 if big else 9, 17, {"E2F_V2_FWD_R_SCR": "1"})]
    if big:
        runs += [("v15", T_.V15, 2000, 32, {}), ("v15", T_.V15, 20000, 32, {}),
                 ("v15, [N, H, D] q / k layout", T_.V15, 20000, 32, {"E2F_V2_QK_LAYOUT": "hd"}),
                 ("appA", dict(C=256, H=16, D=8, nb=256, T=128, hid=128), 2000, 64, {})]
    rows, worst = [], 0.0
    for i, (name, sizes, N, K, env) in enumerate(runs):
        errs = check(N, K, sizes, 10 + i, device, env)
        rows.append({"case": name, "N": N, "K": K, "env": env, "rel_err_U_dvec_dq_dk_dv": errs})
        print(f"{name:32s} N {N:6d} K {K:3d} " + " ".join("%.1e" % e for e in errs), flush=True)
        worst = max(worst, *errs)
    ed_runs = [("edge degree", 2000 if big else 9, 32 if big else 9, {}),
               ("edge degree, buckets", 2000 if big else 9, 20, {"E2F_V2_BUCKETS": "1"})]
    if big:
        ed_runs += [("edge degree, V1.5 size", 20000, 32, dict(nb=256, hid=128, C=256, T=128))]
    for i, (name, N, K, kw) in enumerate(ed_runs):
        env = {k: v for k, v in kw.items() if k.startswith("E2F")}
        sizes = {k: v for k, v in kw.items() if not k.startswith("E2F")}
        errs = check_edge_degree(N, K, 50 + i, device, env=env, **sizes)
        rows.append({"case": name, "N": N, "K": K, "env": env, "rel_err_h_dvec": errs})
        print(f"{name:32s} N {N:6d} K {K:3d} " + " ".join("%.1e" % e for e in errs), flush=True)
        worst = max(worst, *errs)
    ok = worst <= 1e-5
    json.dump({"device": torch.cuda.get_device_name() if big else "cpu (interpreter)", "rows": rows,
               "worst": worst, "pass": ok}, open(out, "w"), indent=1)
    print("WORST", worst, "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
