"""CPU tests of the attention kernels (reference, autograd, and the Triton kernels under the interpreter).

The Triton test runs in a subprocess with TRITON_INTERPRET=1 (it must be set before triton is imported).
It is skipped, with a visible reason, when triton is not installed, unless E2FORMER_REQUIRE_TRITON=1,
in which case a missing triton is a failure.
"""
from __future__ import annotations

import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
try:  # installed package (pip install .)
    import openmm_e2former.kernels as K
    KPKG = "openmm_e2former.kernels"
except ImportError:  # plain checkout: kernels/ importable from the repository root
    sys.path.insert(0, str(REPO))
    import kernels as K
    KPKG = "kernels"
from importlib import import_module

from helpers import TRITON_MODEL_SCRIPT_HEAD, run_under_triton_interpreter

FCParams, attention_reference, fused_attention = K.FCParams, K.attention_reference, K.fused_attention
make_case, args_of = import_module(KPKG + "._testing").make_case, import_module(KPKG + "._testing").args_of
MICRO = dict(C=4, H=2, D=2, nb=6, T=3, hid=5)


# ------------------------------------------------------------------------------------------------
# an independent, deliberately naive implementation: python loops over atoms and edges, float64
# ------------------------------------------------------------------------------------------------
def _naive(row_ptr, src, vec, q, k, v, t, s, p, mu, gamma, cutoff, softmax="official"):
    N, H, D = q.shape
    C = v.shape[-1]
    U = torch.zeros(N, 3, 9, C, dtype=torch.float64)

    def layer_norm(x, w, b):
        mean = sum(x.tolist()) / len(x)
        var = sum((xi - mean) ** 2 for xi in x.tolist()) / len(x)
        return torch.tensor([(xi - mean) / math.sqrt(var + 1e-5) for xi in x.tolist()],
                            dtype=torch.float64) * w + b

    def silu(x):
        return x / (1 + torch.exp(-x))

    for i in range(N):
        edges = range(int(row_ptr[i]), int(row_ptr[i + 1]))
        logits, gates_w, envs, rhats, js = [], [], [], [], []
        for e in edges:
            j = int(src[e])
            d = math.sqrt(sum(float(c) ** 2 for c in vec[e]))
            phi = torch.tensor([math.exp(gamma * (d - float(m_)) ** 2) for m_ in mu], dtype=torch.float64)
            z = torch.cat([phi, t[i], s[j]])
            h = silu(layer_norm(p.W0 @ z + p.b0, p.ln0_w, p.ln0_b))
            h = silu(layer_norm(p.W1 @ h + p.b1, p.ln1_w, p.ln1_b))
            out = p.W2 @ h + p.b2
            x = d / cutoff
            env = 1 - 21 * x ** 5 + 35 * x ** 6 - 15 * x ** 7 if x < 1 else 0.0
            logits.append([float(out[h_]) * float(q[i, h_] @ k[j, h_]) / math.sqrt(D) for h_ in range(H)])
            gates_w.append([float(out[H + h_]) for h_ in range(H)])
            envs.append(env)
            rhats.append([float(c) / d for c in vec[e]])
            js.append(j)
        for h_ in range(H):
            if not js:
                continue
            if softmax == "smooth":   # the formula as written: no shift at all
                eps = [math.exp(lg[h_]) * en for lg, en in zip(logits, envs)]
            else:
                mx = max(lg[h_] for lg in logits)
                eps = [math.exp(lg[h_] - mx) * en for lg, en in zip(logits, envs)]
            den = sum(eps) + 1e-3
            for n, j in enumerate(js):
                alpha = eps[n] * gates_w[n][h_] / den
                for c in range(h_, C, H):
                    for x in range(3):
                        for m in range(9):
                            U[i, x, m, c] += alpha * rhats[n][x] * float(v[j, m, c])
    return U


def test_reference_matches_naive_loop():
    case = make_case(7, 4, **MICRO, dtype=torch.float64, seed=3)
    U = attention_reference(*args_of(case))
    Un = _naive(*args_of(case))
    assert U.shape == (7, 3, 9, 4)
    assert torch.all(U[0] == 0)                       # atom without edges
    assert int(case["row_ptr"][2] - case["row_ptr"][1]) == 1
    assert U[1].abs().sum() > 0                       # single-edge atom
    assert torch.allclose(U, Un, rtol=1e-10, atol=1e-12), (U - Un).abs().max()


def test_reference_smooth_softmax_matches_naive_formula():
    """softmax="smooth": alpha = w u exp(a) / (sum u exp(a) + 1e-3), evaluated literally in float64."""
    for seed in (3, 8):
        case = make_case(8, 5, **MICRO, dtype=torch.float64, seed=seed, extreme_rows=40.0)
        U = attention_reference(*args_of(case), softmax="smooth")
        Un = _naive(*args_of(case), softmax="smooth")
        assert torch.all(U[0] == 0)
        assert torch.allclose(U, Un, rtol=1e-9, atol=1e-10), (U - Un).abs().max()   # (logits up to ~40)
        Uo = attention_reference(*args_of(case))
        assert (U - Uo).abs().max() > 1e-6          # the two modes are different functions
    with pytest.raises(ValueError, match="softmax"):
        attention_reference(*args_of(case), softmax="smoth")


def test_smooth_softmax_extreme_logits_and_gradcheck():
    """Core of the smooth mode: no overflow / 0/0 for very negative or very large logits (float32), matches
    the float64 formula, and float64 gradcheck (the shift carries no gradient)."""
    from importlib import import_module
    softmax_weights = import_module(KPKG + ".attention_reference").softmax_weights
    tgt = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 4])
    a = torch.tensor([[-30.0], [-31.0], [-29.5],        # all very negative: eps term dominates, alpha ~ 1e-10
                      [60.0], [58.0],                  # large, u ~ 0 / u = 0
                      [120.0], [119.0],                # huge and u = 0: every term underflows in float32
                      [1.5], [0.3],                    # ordinary
                      [-2.0]], dtype=torch.float64)    # single edge
    u = torch.tensor([0.9, 0.5, 0.2, 1e-12, 0.0, 0.0, 0.0, 0.7, 0.4, 0.8], dtype=torch.float64)
    w = torch.linspace(-1.0, 1.5, 10, dtype=torch.float64)[:, None]
    direct = []
    for e in range(10):                                   # literal formula, exp(a) fits in float64
        same = tgt == tgt[e]
        direct.append(w[e, 0] * u[e] * torch.exp(a[e, 0]) / ((u[same] * torch.exp(a[same, 0])).sum() + 1e-3))
    direct = torch.stack(direct)[:, None]
    for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        a_, u_, w_ = (x.to(dt).clone().requires_grad_(True) for x in (a, u, w))
        alpha = softmax_weights(a_, u_, w_, tgt, 6, "smooth")
        assert torch.isfinite(alpha).all()
        assert torch.allclose(alpha.double(), direct, rtol=tol, atol=tol * 1e-3), (alpha.double() - direct)
        grads = torch.autograd.grad(alpha.square().sum() + alpha.sum(), (a_, u_, w_))
        assert all(torch.isfinite(g_).all() for g_ in grads)
    alpha = alpha.detach()                                 # (float32 here)
    assert float(alpha[0]) < 1e-9 and abs(float(alpha[3]) - float(w[3])) < 1e-3
    assert torch.all(alpha[5:7] == 0)
    sel = torch.tensor([0, 1, 2, 7, 8, 9])                 # gradcheck away from u = 0 (kink of u itself)
    leaves = [a[sel].clone().requires_grad_(True), u[sel].clone().requires_grad_(True),
              w[sel].clone().requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda a_, u_, w_: softmax_weights(a_, u_, w_, tgt[sel], 6, "smooth"),
                                    leaves, eps=1e-7, atol=1e-8, rtol=1e-6)


def test_reference_smooth_gradcheck_float64():
    case = make_case(5, 3, **MICRO, dtype=torch.float64, seed=5)
    row_ptr, src, vec, q, k, v, t, s, p, mu, gamma, cutoff = args_of(case)
    leaves = [x.clone().requires_grad_(True) for x in (vec, q, k, v, t, s, mu, *p)]

    def f(vec, q, k, v, t, s, mu, *pp):
        return attention_reference(row_ptr, src, vec, q, k, v, t, s, FCParams(*pp), mu, gamma, cutoff,
                                   softmax="smooth")

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    # double backward (force-loss training) goes through this reference: second derivatives w.r.t. vec, q
    g2 = lambda vec_, q_: f(vec_, q_, *leaves[2:])
    assert torch.autograd.gradgradcheck(g2, leaves[:2], eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_reference_int32_rowptr_and_isolated_grads():
    case = make_case(9, 5, **MICRO, dtype=torch.float64, seed=4)
    case32 = dict(case, row_ptr=case["row_ptr"].to(torch.int32))
    args = list(args_of(case32))
    for n in (2, 3, 4, 5):
        args[n] = args[n].clone().requires_grad_(True)
    U = attention_reference(*args)
    assert torch.allclose(U, attention_reference(*args_of(case)))
    U.square().sum().backward()
    for n in (2, 3, 4, 5):
        assert torch.isfinite(args[n].grad).all()
    assert torch.all(args[3].grad[0] == 0)            # query of the isolated atom gets no gradient


def test_reference_gradcheck_float64():
    case = make_case(5, 3, **MICRO, dtype=torch.float64, seed=5)
    row_ptr, src, vec, q, k, v, t, s, p, mu, gamma, cutoff = args_of(case)
    leaves = [vec, q, k, v, t, s, mu, *p]
    leaves = [x.clone().requires_grad_(True) for x in leaves]

    def f(vec, q, k, v, t, s, mu, *pp):
        return attention_reference(row_ptr, src, vec, q, k, v, t, s, FCParams(*pp), mu, gamma, cutoff)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_reference_equivariance_rotation():
    """U transforms as a vector in its x index when all edge vectors are rotated."""
    case = make_case(6, 4, **MICRO, dtype=torch.float64, seed=6)
    R, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    U = attention_reference(*args_of(case))
    case_r = dict(case, vec=case["vec"] @ R.T)
    U_r = attention_reference(*args_of(case_r))
    assert torch.allclose(U_r, torch.einsum("xy,nymc->nxmc", R, U), atol=1e-12)


def test_envelope_fp32_accuracy_near_cutoff():
    """The envelope is evaluated in factored form: fp32 keeps full relative precision up to the cutoff."""
    d64 = torch.linspace(0.5, 4.4999, 2001, dtype=torch.float64)
    x = d64 / 4.5
    exact = 1 - 21 * x ** 5 + 35 * x ** 6 - 15 * x ** 7
    u32 = K.polynomial_envelope(d64.float(), 4.5).double()
    exact_at_f32 = K.polynomial_envelope(d64.float().double(), 4.5)
    assert torch.allclose(exact, K.polynomial_envelope(d64, 4.5), rtol=1e-9, atol=1e-13)
    assert ((u32 - exact_at_f32).abs() / exact_at_f32.abs().clamp_min(1e-30)).max() < 1e-5
    # whole layer: fp32 vs fp64 on a random-degree graph (many low-degree atoms with edges near R)
    c32 = make_case(300, 8, **MICRO, seed=9)
    c64 = {k_: (v_.double() if isinstance(v_, torch.Tensor) and v_.is_floating_point() else v_)
           for k_, v_ in c32.items()}
    c64["fc_params"] = FCParams(*(x_.double() for x_ in c32["fc_params"]))
    U32, U64 = attention_reference(*args_of(c32)), attention_reference(*args_of(c64))
    assert ((U32.double() - U64).norm() / U64.norm()).item() < 2e-6


def _naive_edge_degree(row_ptr, src, vec, T0, S0, params, mu, gamma, cutoff, scale):
    N = row_ptr.numel() - 1
    C = params[0].W2.shape[0]
    h = torch.zeros(N, 9, C, dtype=torch.float64)
    s3, s5, s15 = math.sqrt(3), math.sqrt(5), math.sqrt(15)
    for i in range(N):
        for e in range(int(row_ptr[i]), int(row_ptr[i + 1])):
            j = int(src[e])
            d = float(vec[e].norm())
            x, y, z = (float(c) / d for c in vec[e])
            Y = [1.0, s3 * x, s3 * y, s3 * z, s15 * x * z, s15 * x * y, s5 * (y * y - (x * x + z * z) / 2),
                 s15 * y * z, s15 / 2 * (z * z - x * x)]
            xr = d / cutoff
            env = 1 - 21 * xr ** 5 + 35 * xr ** 6 - 15 * xr ** 7 if xr < 1 else 0.0
            zz = torch.cat([torch.exp(gamma * (d - mu) ** 2), T0[i], S0[j]])
            for m in range(9):
                p = params[(0, 1, 1, 1, 2, 2, 2, 2, 2)[m]]
                hh = torch.nn.functional.silu(torch.nn.functional.layer_norm(p.W0 @ zz + p.b0, (p.W0.shape[0],), p.ln0_w, p.ln0_b, 1e-5))
                hh = torch.nn.functional.silu(torch.nn.functional.layer_norm(p.W1 @ hh + p.b1, (p.W1.shape[0],), p.ln1_w, p.ln1_b, 1e-5))
                h[i, m] += scale * Y[m] * env * (p.W2 @ hh + p.b2)
    return h


def _edge_degree_case(dtype=torch.float64, N=6, K_=4, nb=6, hid=5, C=4, seed=21):
    case = make_case(N, K_, C=4, H=2, D=2, nb=nb, T=3, hid=hid, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed)
    T0 = torch.randn(N, nb, generator=g, dtype=torch.float64).to(dtype)
    S0 = torch.randn(N, nb, generator=g, dtype=torch.float64).to(dtype)
    params = [FCParams.random(nb, nb, hid, C // 2, dtype=torch.float64, generator=g) for _ in range(3)]
    params = [FCParams(*(x.to(dtype) for x in p)) for p in params]
    return (case["row_ptr"], case["src"], case["vec"], T0, S0, params, case["mu"], case["gamma"], case["cutoff"])


def test_edge_degree_reference_matches_naive_and_gradcheck():
    args = _edge_degree_case()
    h = K.edge_degree_reference(*args)
    hn = _naive_edge_degree(*args, K.EDGE_DEGREE_SCALE)
    assert h.shape == (6, 9, 4) and torch.all(h[0] == 0)
    assert torch.allclose(h, hn, rtol=1e-10, atol=1e-12)
    row_ptr, src, vec, T0, S0, params, mu, gamma, cutoff = args
    vec = vec.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v_: K.edge_degree_reference(row_ptr, src, v_, T0, S0, params, mu, gamma, cutoff), (vec,),
        eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    # rotation: l=1 rows rotate as vectors, l=0 invariant
    R, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    h_r = K.edge_degree_reference(row_ptr, src, args[2] @ R.T, T0, S0, params, mu, gamma, cutoff)
    assert torch.allclose(h_r[:, 0], h[:, 0], atol=1e-12)
    assert torch.allclose(h_r[:, 1:4], torch.einsum("xy,nyc->nxc", R, h[:, 1:4]), atol=1e-12)


def test_dispatch_cpu_uses_reference():
    case = make_case(5, 3, **MICRO, seed=7)
    U = fused_attention(*args_of(case))
    assert torch.equal(U, attention_reference(*args_of(case)))
    assert torch.equal(U, fused_attention(*args_of(case), backend="reference"))


# ------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter (subprocess: TRITON_INTERPRET must precede the triton import)
# ------------------------------------------------------------------------------------------------
_INTERP_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    KM = import_module(sys.argv[1])
    attention_reference, fused_attention, FCParams = KM.attention_reference, KM.fused_attention, KM.FCParams
    from importlib import import_module
    T_ = import_module(sys.argv[1] + "._testing")
    make_case, args_of, TINY = T_.make_case, T_.args_of, T_.TINY

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

    worst = 0.0
    for N, K, seed, idx, softmax, ext in ((6, 5, 11, torch.int64, "official", None),
                                          (5, 17, 12, torch.int32, "official", None),
                                          (6, 5, 21, torch.int64, "smooth", 10.0)):
        case = make_case(N, K, **TINY, seed=seed, index_dtype=idx, extreme_rows=ext)
        ref64 = make_case(N, K, **TINY, seed=seed, dtype=torch.float64, index_dtype=idx, extreme_rows=ext)
        args = list(args_of(case)); a64 = list(args_of(ref64))
        for n in (2, 3, 4, 5):
            args[n] = args[n].clone().requires_grad_(True)
            a64[n] = a64[n].clone().requires_grad_(True)
        U = fused_attention(*args, backend="triton", softmax=softmax)
        Ur = attention_reference(*a64, softmax=softmax)
        assert torch.isfinite(U).all() and torch.all(U[0] == 0)
        G = torch.randn(U.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        g_t = torch.autograd.grad(U, [args[n] for n in (2, 3, 4, 5)], G.float())
        g_r = torch.autograd.grad(Ur, [a64[n] for n in (2, 3, 4, 5)], G)
        errs = [rel(U.double(), Ur)] + [rel(a.double(), b) for a, b in zip(g_t, g_r)]
        print(softmax, "N", N, "K", K, "rel errors U,dvec,dq,dk,dv:", ["%.2e" % x for x in errs])
        worst = max(worst, *errs)

    # training path: grads w.r.t. t, s and fc params go through the reference inside backward
    case = make_case(4, 3, **TINY, seed=13)
    args = list(args_of(case))
    p = FCParams(*(x.clone().requires_grad_(True) for x in args[8]))
    args[8] = p
    args[6] = args[6].clone().requires_grad_(True)
    args[2] = args[2].clone().requires_grad_(True)
    U = fused_attention(*args, backend="triton")
    G = torch.randn(U.shape, generator=torch.Generator().manual_seed(14))
    g_t = torch.autograd.grad(U, [args[2], args[6], p.W0, p.W2], G)
    U2 = attention_reference(*args)
    g_r = torch.autograd.grad(U2, [args[2], args[6], p.W0, p.W2], G)
    errs = [rel(a, b) for a, b in zip(g_t, g_r)]
    print("training-path rel errors:", ["%.2e" % x for x in errs])
    worst = max(worst, *errs)
    # edge-degree embedding, v1 kernels (backend="triton"; auto on CUDA now runs v2): forward and d/dvec
    ed_tri = import_module(sys.argv[1] + ".edge_degree_triton")
    N, nb, hid, C = 7, 32, 32, 32
    case = make_case(N, 6, **TINY, seed=15)
    g = torch.Generator().manual_seed(15)
    T0, S0 = torch.randn(N, nb, generator=g), torch.randn(N, nb, generator=g)
    params = [FCParams.random(nb, nb, hid, C // 2, generator=g) for _ in range(3)]
    mu = torch.linspace(0, 4.5, nb)
    gam = KM.rbf_gamma(4.5, nb)
    vec = case["vec"].clone().requires_grad_(True)
    v1_calls = []
    v1_orig = ed_tri.edge_degree_triton
    ed_tri.edge_degree_triton = lambda *a, **kw: (v1_calls.append(1), v1_orig(*a, **kw))[1]
    h = KM.fused_edge_degree(case["row_ptr"], case["src"], vec, T0, S0, params, mu, gam, 4.5, backend="triton")
    assert v1_calls == [1], "backend='triton' must run the v1 edge-degree kernels"
    vec64 = case["vec"].double().requires_grad_(True)
    p64 = [FCParams(*(x.double() for x in p)) for p in params]
    h64 = KM.edge_degree_reference(case["row_ptr"], case["src"], vec64, T0.double(), S0.double(), p64,
                                  mu.double(), gam, 4.5)
    G = torch.randn(h.shape, generator=g, dtype=torch.float64)
    gk, = torch.autograd.grad(h, [vec], G.float())
    gr, = torch.autograd.grad(h64, [vec64], G)
    errs = [rel(h.double(), h64), rel(gk.double(), gr)]
    print("edge-degree rel errors h, dvec:", ["%.2e" % x for x in errs])
    worst = max(worst, *errs)
    print("WORST", worst)
    assert worst < 2e-5, worst
""")


def test_triton_interpreter_matches_reference():
    run_under_triton_interpreter(_INTERP_SCRIPT, [KPKG], "Triton interpreter test")


# ------------------------------------------------------------------------------------------------
# v2 (register-blocked) Triton kernels under the interpreter: forward and d/d(vec, q, k, v) against the
# float64 reference, atoms with 0 / 1 / K edges, K up to 64, several targets per program (incl. a partial
# last block), int32 row_ptr, non-default tile overrides, env-var dispatch and the training path.
# ------------------------------------------------------------------------------------------------
_INTERP_V2_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    KM = import_module(sys.argv[1])
    T_ = import_module(sys.argv[1] + "._testing")
    make_case, args_of, TINY = T_.make_case, T_.args_of, T_.TINY

    def rel(a, b):
        return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

    def check(N, K, seed, idx=torch.int64, env=None, via_env=False, softmax="official", extreme=None):
        with T_.env_vars(env):
            case = make_case(N, K, **TINY, seed=seed, index_dtype=idx, extreme_rows=extreme)
            c64 = make_case(N, K, **TINY, seed=seed, dtype=torch.float64, index_dtype=idx, extreme_rows=extreme)
            args = list(args_of(case)); a64 = list(args_of(c64))
            for n in (2, 3, 4, 5):
                args[n] = args[n].clone().requires_grad_(True)
                a64[n] = a64[n].clone().requires_grad_(True)
            if via_env:
                os.environ["E2FORMER_ATTENTION_BACKEND"] = "triton_v2"
                assert KM.select_backend(args[3], args[5], args[8]) == "triton_v2"
                U = KM.fused_attention(*args, softmax=softmax)
                del os.environ["E2FORMER_ATTENTION_BACKEND"]
            else:
                U = KM.fused_attention(*args, backend="triton_v2", softmax=softmax)
            Ur = KM.attention_reference(*a64, softmax=softmax)
            assert torch.isfinite(U).all() and torch.all(U[0] == 0)          # atom 0: no edge
            assert U[1].abs().sum() > 0                                      # atom 1: one edge
            G = torch.randn(U.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            g_t = torch.autograd.grad(U, [args[n] for n in (2, 3, 4, 5)], G.float())
            g_r = torch.autograd.grad(Ur, [a64[n] for n in (2, 3, 4, 5)], G)
            assert torch.all(g_t[1][0] == 0)                                 # dq of the isolated atom
            errs = [rel(U.double(), Ur)] + [rel(a.double(), b) for a, b in zip(g_t, g_r)]
            print("v2", softmax, "N", N, "K", K, env or "", "rel errors U,dvec,dq,dk,dv:",
                  ["%.2e" % x for x in errs])
            return max(errs)

    worst = 0.0
    worst = max(worst, check(6, 5, 11))                                  # BLOCK_E 16: 4 targets / program
    worst = max(worst, check(7, 17, 12, torch.int32, via_env=True))      # BLOCK_E 32, partial last block
    worst = max(worst, check(5, 64, 13))                                 # BLOCK_E 64
    worst = max(worst, check(7, 9, 14, env={"E2F_V2_FWD_BLOCK_T": "4", "E2F_V2_FWD_HB": "8",
                                            "E2F_V2_BWD_BLOCK_T": "2", "E2F_V2_BWD_KC": "32",
                                            "E2F_V2_PROGS_PER_SM": "1"}))
    # the backward variants (d/dr tiles reduced once; dU read per target and broadcast), with 2 targets per
    # program so the broadcast covers a partial last block, and in the smooth mode
    worst = max(worst, check(7, 9, 17, env={"E2F_V2_BWD_BLOCK_T": "2", "E2F_V2_BWD_DR_ACC": "1",
                                            "E2F_V2_BWD_DU_BCAST": "1"}))
    worst = max(worst, check(6, 5, 18, env={"E2F_V2_BWD_DR_ACC": "1"}, softmax="smooth", extreme=10.0))
    worst = max(worst, check(6, 17, 19, env={"E2F_V2_BWD_DU_BCAST": "1"}))
    # degree buckets (E2F_V2_BUCKETS): targets with <= BLOCK_E / 2 edges in half-width tiles, the rest in full
    # tiles, two launches over a device-side permutation; degrees uniform in [0, K] fill both buckets, and the
    # half tile of 16 slots gets 4 targets per forward program (a partial last block of permuted targets)
    worst = max(worst, check(9, 17, 31, env={"E2F_V2_BUCKETS": "1"}))
    worst = max(worst, check(7, 40, 32, torch.int32, env={"E2F_V2_BUCKETS": "1", "E2F_V2_BWD_BLOCK_T": "2",
                                                          "E2F_V2_BWD_DU_BCAST": "1"}))
    worst = max(worst, check(8, 20, 33, env={"E2F_V2_BUCKETS": "1"}, softmax="smooth", extreme=10.0))
    V2 = import_module(sys.argv[1] + ".attention_triton_v2")
    assert {"fwd_small", "bwd_small"} <= set(V2._LAST_COMPILED), V2._LAST_COMPILED.keys()   # both launches ran
    # the single launch (buckets off) and the tiled forward aggregation, no longer the defaults
    worst = max(worst, check(7, 17, 34, env={"E2F_V2_BUCKETS": "0", "E2F_V2_FWD_AGG": "tile"}))
    worst = max(worst, check(6, 5, 35, env={"E2F_V2_FWD_AGG": "tile"}, softmax="smooth", extreme=10.0))
    # streamed forward aggregation (the default; set explicitly here): alpha staged in scratch, edges streamed
    # one by one into [9, C] accumulators; several targets per program (partial last block), buckets, int32
    worst = max(worst, check(6, 5, 41, env={"E2F_V2_FWD_AGG": "stream"}))
    worst = max(worst, check(7, 9, 42, torch.int32, env={"E2F_V2_FWD_AGG": "stream", "E2F_V2_FWD_BLOCK_T": "2",
                                                          "E2F_V2_PROGS_PER_SM": "1"}))
    worst = max(worst, check(9, 17, 43, env={"E2F_V2_FWD_AGG": "stream", "E2F_V2_BUCKETS": "1"}))
    worst = max(worst, check(6, 5, 44, env={"E2F_V2_FWD_AGG": "stream"}, softmax="smooth", extreme=10.0))
    # SG edges per streamed step (E2F_V2_FWD_STREAM_G): rows whose degree is not a multiple of SG (masked group
    # tails), several targets per program, buckets, a group wider than some rows
    worst = max(worst, check(7, 17, 45, env={"E2F_V2_FWD_AGG": "stream", "E2F_V2_FWD_STREAM_G": "4",
                                             "E2F_V2_FWD_BLOCK_T": "2"}))
    worst = max(worst, check(9, 17, 46, torch.int32, env={"E2F_V2_FWD_AGG": "stream", "E2F_V2_FWD_STREAM_G": "8",
                                                          "E2F_V2_BUCKETS": "1"}))
    worst = max(worst, check(6, 5, 47, env={"E2F_V2_FWD_AGG": "stream", "E2F_V2_FWD_STREAM_G": "2"},
                             softmax="smooth", extreme=10.0))
    # the streamed forward's one-edge step unrolled SU times (E2F_V2_FWD_STREAM_U): the same additions in the same
    # order, so U is bit-for-bit the SU = 1 result, rows shorter than SU and not a multiple of it included; and
    # with the unit vectors staged in scratch by the block (E2F_V2_FWD_R_SCR, session 22): the same values; and with
    # the value rows' L2-only cache hint (E2F_V2_FWD_V_CG, session 24)
    for n, k_, sd, extra in ((7, 17, 65, {"E2F_V2_FWD_BLOCK_T": "2"}), (9, 17, 66, {"E2F_V2_BUCKETS": "1"}),
                             (6, 5, 67, {})):
        cs = make_case(n, k_, **TINY, seed=sd)
        us = {}
        for su in ("1", "2", "3", "8"):     # 8: the App. A launch's default (session 20)
            for rs in ("0", "1"):
                with T_.env_vars(dict(extra, E2F_V2_FWD_AGG="stream", E2F_V2_FWD_STREAM_U=su, E2F_V2_FWD_R_SCR=rs)):
                    us[su, rs] = KM.fused_attention(*args_of(cs), backend="triton_v2", max_degree=k_)
        # the value rows cached in L2 only (E2F_V2_FWD_V_CG, session 24): a cache hint, the same values
        with T_.env_vars(dict(extra, E2F_V2_FWD_AGG="stream", E2F_V2_FWD_STREAM_U="8", E2F_V2_FWD_V_CG="1")):
            us["8", "cg"] = KM.fused_attention(*args_of(cs), backend="triton_v2", max_degree=k_)
        assert all(torch.equal(us["1", "0"], u) for u in us.values()), (n, k_)
        worst = max(worst, rel(us["2", "1"].double(), KM.attention_reference(*args_of(cs)).double()))
    worst = max(worst, check(7, 9, 68, env={"E2F_V2_FWD_STREAM_U": "2"}, softmax="smooth", extreme=10.0))
    # the streamed and split backward with SG edges per step (E2F_V2_BWD_STREAM_G)
    worst = max(worst, check(7, 17, 48, env={"E2F_V2_BWD_AGG": "stream", "E2F_V2_BWD_STREAM_G": "4",
                                             "E2F_V2_BWD_BLOCK_T": "2", "E2F_V2_BUCKETS": "1"}))
    worst = max(worst, check(7, 9, 58, torch.int32, env={"E2F_V2_BWD_AGG": "split", "E2F_V2_BWD_STREAM_G": "2"}))
    # q / k / dq / dk in the model's own [N, H, D] layout (E2F_V2_QK_LAYOUT=hd; the default before session 13,
    # since then [N, D, H] copies, which every other case here runs)
    worst = max(worst, check(7, 17, 62, env={"E2F_V2_QK_LAYOUT": "hd"}))
    worst = max(worst, check(9, 17, 63, torch.int32, env={"E2F_V2_QK_LAYOUT": "hd", "E2F_V2_BUCKETS": "1",
                                                          "E2F_V2_BWD_AGG": "split"}))
    worst = max(worst, check(6, 5, 64, env={"E2F_V2_QK_LAYOUT": "hd", "E2F_V2_FWD_AGG": "tile",
                                            "E2F_V2_BWD_AGG": "stream"}, softmax="smooth", extreme=10.0))
    # a row longer than the edge tile (the padded layout's ghost: max_degree bounds the real atoms only): every
    # aggregation mode reads just the row's first BLOCK_E edges.  The streamed loops once ran over the whole
    # row, past the program's scratch (found on an H200: the ghost's ~10^4 padding edges in one program).
    case = make_case(6, 9, **TINY, seed=49)
    rp = case["row_ptr"].clone()
    extra = 40                                        # row 5 gets 40 more edges than the bound of 9 (tile 16)
    E0 = int(rp[-1])
    rp[-1] += extra
    case["row_ptr"] = rp
    gen = torch.Generator().manual_seed(50)
    case["src"] = torch.cat([case["src"], torch.randint(0, 6, (extra,), generator=gen)])
    case["vec"] = torch.cat([case["vec"], torch.randn(extra, 3, generator=gen)])
    long_row = {}
    for mode, bwd_mode in (("tile", "tile"), ("stream", "stream"), ("split", "split"), ("stream4", "tile")):
        os.environ["E2F_V2_FWD_AGG"] = {"split": "tile", "stream4": "stream"}.get(mode, mode)
        os.environ["E2F_V2_FWD_STREAM_G"] = "4" if mode == "stream4" else "1"
        os.environ["E2F_V2_BWD_AGG"] = bwd_mode
        a = list(args_of(case))
        for n in (2, 3, 4, 5):
            a[n] = a[n].clone().requires_grad_(True)
        U = KM.fused_attention(*a, backend="triton_v2", max_degree=9)
        G = torch.randn(U.shape, generator=torch.Generator().manual_seed(51))
        long_row[mode] = [U] + list(torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G))
    del os.environ["E2F_V2_FWD_AGG"], os.environ["E2F_V2_BWD_AGG"], os.environ["E2F_V2_FWD_STREAM_G"]
    n5 = int(rp[5]) + 16                              # edges of row 5 past its first tile: no gradient
    for mode in ("tile", "stream", "split", "stream4"):
        assert torch.all(long_row[mode][1][n5:] == 0), mode
    for mode in ("stream", "split", "stream4"):
        errs = [rel(x.double(), y.double()) for x, y in zip(long_row[mode], long_row["tile"])]
        print("row longer than the tile,", mode, "vs tile (U, dvec, dq, dk, dv):", ["%.1e" % x for x in errs])
        worst = max(worst, *errs)
    # E2F_V2_DOT_PREC (every edge-MLP dot's input precision; the interpreter computes in fp32 whatever it is
    # told, so this checks the plumbing to both kernels; GPU accuracy: benchmarks/attention_stages.py)
    worst = max(worst, check(6, 5, 55, env={"E2F_V2_DOT_PREC": "tf32x3"}))
    # split backward (E2F_V2_BWD_AGG=split): dalpha, d/dr tiled, dv streamed; buckets, 2 targets per program, DR_ACC
    worst = max(worst, check(6, 5, 52, env={"E2F_V2_BWD_AGG": "split"}))
    worst = max(worst, check(7, 9, 53, torch.int32, env={"E2F_V2_BWD_AGG": "split", "E2F_V2_BWD_BLOCK_T": "2",
                                                         "E2F_V2_BWD_DR_ACC": "1", "E2F_V2_PROGS_PER_SM": "1"}))
    worst = max(worst, check(9, 17, 54, env={"E2F_V2_BWD_AGG": "split", "E2F_V2_BUCKETS": "1"},
                             softmax="smooth", extreme=10.0))
    # dg / dw of each head block through scratch, dx2 as one K = 2H dot after the head loop (E2F_V2_BWD_DX2_SCR):
    # tiled, split and streamed backward, several targets and head blocks per program, buckets, smooth mode
    worst = max(worst, check(7, 9, 56, env={"E2F_V2_BWD_DX2_SCR": "1", "E2F_V2_BWD_BLOCK_T": "2",
                                            "E2F_V2_BWD_HB": "8", "E2F_V2_PROGS_PER_SM": "1"}))
    worst = max(worst, check(9, 17, 57, env={"E2F_V2_BWD_DX2_SCR": "1", "E2F_V2_BWD_AGG": "split",
                                             "E2F_V2_BUCKETS": "1"}, softmax="smooth", extreme=10.0))
    worst = max(worst, check(6, 5, 59, torch.int32, env={"E2F_V2_BWD_DX2_SCR": "1", "E2F_V2_BWD_AGG": "stream"}))
    # ... and the head-loop form it replaced as the default (E2F_V2_BWD_DX2_SCR=0), tiled and split
    worst = max(worst, check(7, 9, 60, env={"E2F_V2_BWD_DX2_SCR": "0", "E2F_V2_BWD_BLOCK_T": "2",
                                            "E2F_V2_BWD_HB": "8", "E2F_V2_PROGS_PER_SM": "1"}))
    worst = max(worst, check(6, 5, 61, env={"E2F_V2_BWD_DX2_SCR": "0", "E2F_V2_BWD_AGG": "split"}))
    # streamed aggregation backward (E2F_V2_BWD_AGG=stream): dalpha / dr through scratch, dv by row atomics
    worst = max(worst, check(6, 5, 45, env={"E2F_V2_BWD_AGG": "stream"}))
    worst = max(worst, check(7, 9, 46, torch.int32, env={"E2F_V2_FWD_AGG": "stream", "E2F_V2_BWD_AGG": "stream",
                                                         "E2F_V2_BWD_BLOCK_T": "2", "E2F_V2_BWD_HB": "8",
                                                         "E2F_V2_PROGS_PER_SM": "1"}))
    worst = max(worst, check(9, 17, 47, env={"E2F_V2_BWD_AGG": "stream", "E2F_V2_BUCKETS": "1"}))
    worst = max(worst, check(6, 5, 48, env={"E2F_V2_BWD_AGG": "stream", "E2F_V2_BWD_DR_ACC": "1"},
                             softmax="smooth", extreme=10.0))
    # training path: grads w.r.t. t and fc params through the reference inside backward (as v1)
    case = make_case(4, 3, **TINY, seed=15)
    args = list(args_of(case))
    p = KM.FCParams(*(x.clone().requires_grad_(True) for x in args[8]))
    args[8] = p
    args[6] = args[6].clone().requires_grad_(True)
    args[2] = args[2].clone().requires_grad_(True)
    U = KM.fused_attention(*args, backend="triton_v2")
    G = torch.randn(U.shape, generator=torch.Generator().manual_seed(16))
    g_t = torch.autograd.grad(U, [args[2], args[6], p.W0, p.W2], G)
    g_r = torch.autograd.grad(KM.attention_reference(*args), [args[2], args[6], p.W0, p.W2], G)
    errs = [rel(a, b) for a, b in zip(g_t, g_r)]
    print("v2 training-path rel errors:", ["%.2e" % x for x in errs])
    worst = max(worst, *errs)

    # smooth softmax: extreme rows (atom 3 logits up to ~40, and with seed 21 one head whose logits are all
    # below ln 1e-3, i.e. the clamped shift; atom 4 all edges at the cutoff), atoms with 0 / 1 edges,
    # BLOCK_E 16 and 32 (partial last block); fused d/d(vec, q, k, v), then every input (t, s, mu and the fc
    # parameters go through the reference backward, which must get the smooth mode as well)
    worst = max(worst, check(6, 5, 21, softmax="smooth", extreme=10.0))
    worst = max(worst, check(7, 17, 22, torch.int32, softmax="smooth", extreme=10.0))
    case = make_case(6, 5, **TINY, seed=23, extreme_rows=10.0)
    c64 = make_case(6, 5, **TINY, seed=23, dtype=torch.float64, extreme_rows=10.0)
    outs = []
    for c_, kw in ((case, dict(backend="triton_v2")), (c64, dict(backend="reference"))):
        args = list(args_of(c_))
        leaves = [args[n].clone().requires_grad_(True) for n in (2, 3, 4, 5, 6, 7, 9)]
        p = KM.FCParams(*(x.clone().requires_grad_(True) for x in args[8]))
        for n, x in zip((2, 3, 4, 5, 6, 7, 9), leaves):
            args[n] = x
        args[8] = p
        U = KM.fused_attention(*args, softmax="smooth", **kw)
        G = torch.randn(U.shape, generator=torch.Generator().manual_seed(24), dtype=torch.float64).to(U.dtype)
        outs.append([U] + list(torch.autograd.grad(U, leaves + list(p), G)))
    assert all(torch.isfinite(x).all() for x in outs[0])
    errs = [rel(a.double(), b) for a, b in zip(*outs)]
    print("v2 smooth all-input rel errors (U, vec, q, k, v, t, s, mu, fc...):", ["%.1e" % x for x in errs])
    worst = max(worst, *errs)
    print("WORST", worst)
    assert worst < 2e-5, worst
""")


def test_triton_v2_interpreter_matches_reference():
    run_under_triton_interpreter(_INTERP_V2_SCRIPT, [KPKG], "Triton v2 interpreter test")


_INTERP_BF16_VALUES_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    KM = import_module(sys.argv[1])
    T_ = import_module(sys.argv[1] + "._testing")

    def run(case, table, bf16_in_kernel, env):
        flag = "1" if bf16_in_kernel else "0"
        with T_.env_vars(dict(env, E2F_V2_BF16_VALUES=flag, E2F_V2_BF16_QK=flag)):
            a = list(T_.args_of(case))
            for n in (3, 4, 5):                               # q, k, v as the bf16 mode's projections make them
                a[n] = a[n].to(torch.bfloat16)
            for n in (2, 3, 4, 5):
                a[n] = a[n].clone().requires_grad_(True)
            U = KM.fused_attention(*a, backend="triton_v2", table=table)
            G = torch.randn(U.shape, generator=torch.Generator().manual_seed(7))
            return [U] + list(torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G))

    V2 = import_module(sys.argv[1] + ".attention_triton_v2")
    seen = []                                                 # what the launches decided (the bf16 path was taken)
    real, real_qk = V2.bf16_values, V2.bf16_qk
    V2.bf16_values = lambda v: seen.append(real(v)) or seen[-1]
    V2.bf16_qk = lambda q, k: seen.append(real_qk(q, k)) or seen[-1]
    n = 0
    for seed, table_on, env in ((71, False, {}), (72, True, {}), (73, False, {"E2F_V2_BWD_AGG": "stream"}),
                                (74, False, {"E2F_V2_BWD_AGG": "split", "E2F_V2_BUCKETS": "1"}),
                                (75, True, {"E2F_V2_FWD_AGG": "tile", "E2F_V2_FWD_STREAM_G": "1"})):
        case = T_.make_case(8, 17, **T_.TINY, seed=seed)
        table = None
        if table_on:
            coef, *rest = T_.random_table(2 * T_.TINY["H"], 8, torch.Generator().manual_seed(seed))
            table = (coef.float(), *rest)
        seen.clear()
        ref = run(case, table, False, env)                    # a float32 copy of the bf16 values (=0)
        assert seen and not any(seen)
        seen.clear()
        got = run(case, table, True, env)                     # the bf16 values as they are (the default)
        assert seen and all(seen)
        assert all(x.dtype == torch.bfloat16 for x in got[2:5] + ref[2:5])      # dq, dk, dv in the inputs' dtype
        for x, y in zip(got, ref):
            assert torch.equal(x, y), (seed, env, (x.float() - y.float()).abs().max())
        n += 1
    print("bit-identical in", n, "cases")
    print("WORST 0.0")
""")


def test_bf16_values_are_bit_identical_under_interpreter():
    """E2F_V2_BF16_VALUES=1 (the default since session 13) and E2F_V2_BF16_QK=1 (the default): bf16 values, queries
    and keys go into the v2 attention kernels as they are and are converted there; U and every gradient equal those
    of =0 (float32 copies made on the host) bit for bit, on the MLP and table paths and in the tiled, streamed and
    split aggregations."""
    out = run_under_triton_interpreter(_INTERP_BF16_VALUES_SCRIPT, [KPKG], "bf16 values in the v2 kernels")
    assert "bit-identical in 5 cases" in out


_INTERP_BF16_MODEL_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""
    from openmm_e2former.kernels import attention_triton_v2 as V2
    m, z, pos, cell, pbc = tiny_kernel_model()
    E2.Attention.use_fused = lambda self, x: True
    E2.EdgeDegreeEmbedding.use_fused = lambda self, x: True
    os.environ["E2FORMER_ATTENTION_BACKEND"] = "triton_v2"
    m.set_precision("bf16")
    seen = []
    real, real_qk = V2.bf16_values, V2.bf16_qk
    V2.bf16_values = lambda v: seen.append((v.dtype, real(v))) or real(v)
    V2.bf16_qk = lambda q, k: seen.append((q.dtype, real_qk(q, k))) or real_qk(q, k)
    out = {}
    for flag in ("0", "1"):
        os.environ["E2F_V2_BF16_VALUES"] = flag
        os.environ["E2F_V2_BF16_QK"] = flag
        seen.clear()
        out[flag] = m.energy_and_forces(z, pos, cell, pbc)
        assert seen and all(dt == torch.bfloat16 and used == (flag == "1") for dt, used in seen), seen
    assert all(torch.equal(a, b) for a, b in zip(out["0"], out["1"]))
    print("WORST 0.0")
""")


def test_bf16_values_model_is_bit_identical_under_interpreter():
    """With set_precision("bf16") the value projection arrives in bf16; E2F_V2_BF16_VALUES=1 (the default) hands it
    to the kernels as it is, and the model's energy and forces are bit-identical to those of =0 (a float32 copy)."""
    run_under_triton_interpreter(_INTERP_BF16_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the bf16 model with bf16 values in the kernels", drop_env=("E2FORMER_ATTENTION_BACKEND",))


def test_degree_buckets_partition():
    """kernels.attention_triton_v2.degree_buckets: a permutation, small-degree targets first, each bucket in
    the original order, counts on the device (no host sync), empty buckets allowed."""
    _need_triton()
    from importlib import import_module

    V2 = import_module(KPKG + ".attention_triton_v2")
    deg = torch.tensor([0, 40, 3, 64, 32, 33, 1, 70, 16])
    rp = torch.zeros(len(deg) + 1, dtype=torch.int32)
    rp[1:] = torch.cumsum(deg, 0)
    perm, seg, small_e = V2.degree_buckets(rp, 128)
    assert small_e == 64
    assert perm.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 7]
    assert seg.tolist() == [[0, 8], [8, 1]]
    perm, seg, small_e = V2.degree_buckets(rp, 64)
    assert small_e == 32
    assert perm.tolist() == [0, 2, 4, 6, 8, 1, 3, 5, 7] and seg.tolist() == [[0, 5], [5, 4]]
    assert sorted(perm.tolist()) == list(range(len(deg)))
    perm, seg, _ = V2.degree_buckets(rp, 16)
    assert seg.tolist() == [[0, 3], [3, 6]] and perm.tolist() == [0, 2, 6, 1, 3, 4, 5, 7, 8]
    rp2 = torch.tensor([0, 20, 50])                    # nothing fits 16: the small bucket is empty
    perm, seg, _ = V2.degree_buckets(rp2, 32)
    assert seg.tolist() == [[0, 0], [0, 2]] and perm.tolist() == [0, 1]
    perm, seg, _ = V2.degree_buckets(torch.zeros(1, dtype=torch.int64), 64)   # no targets
    assert perm.numel() == 0 and seg.tolist() == [[0, 0], [0, 0]]


def test_v2_launch_defaults(monkeypatch):
    """The v2 defaults chosen from the H200 timings (benchmarks/results/session8_speed_h200.md): degree buckets on
    for tiles of >= 32 slots, streamed forward aggregation, tiled backward; each can be switched by its variable."""
    _need_triton()
    V2 = import_module(KPKG + ".attention_triton_v2")
    for key in [k for k in os.environ if k.startswith("E2F_V2_")]:
        monkeypatch.delenv(key)
    assert V2.use_buckets(64) and V2.use_buckets(32) and not V2.use_buckets(16)
    assert V2.launch_config(16, 32, 64, 64, "fwd")["AGG"] == V2._AGG_MODES["stream"]
    assert V2.launch_config(16, 32, 64, 64, "bwd")["AGG"] == V2._AGG_MODES["tile"]
    monkeypatch.setenv("E2F_V2_BUCKETS", "0")
    monkeypatch.setenv("E2F_V2_FWD_AGG", "tile")
    monkeypatch.setenv("E2F_V2_BWD_AGG", "stream")
    assert not V2.use_buckets(64)
    assert V2.launch_config(16, 32, 64, 64, "fwd")["AGG"] == V2._AGG_MODES["tile"]
    assert V2.launch_config(16, 32, 64, 64, "bwd")["AGG"] == V2._AGG_MODES["stream"]
    monkeypatch.setenv("E2F_V2_FWD_AGG", "fastest")
    with pytest.raises(ValueError, match="E2F_V2_FWD_AGG='fastest'"):
        V2.launch_config(16, 32, 64, 64, "fwd")
    monkeypatch.setenv("E2F_V2_DOT_PREC", "bf16")
    with pytest.raises(ValueError, match="E2F_V2_DOT_PREC='bf16'"):
        V2.dot_precision()
    monkeypatch.setenv("E2F_V2_DOT_PREC", "tf32x3")
    assert V2.dot_precision() == "tf32x3"
    monkeypatch.delenv("E2F_V2_DOT_PREC")
    assert V2.dot_precision() is None
    monkeypatch.delenv("E2F_V2_FWD_AGG")
    assert V2.launch_config(16, 32, 64, 64, "fwd")["SG"] == 1   # one edge per streamed step unless asked
    monkeypatch.setenv("E2F_V2_FWD_STREAM_G", "3")
    with pytest.raises(ValueError, match="E2F_V2_FWD_STREAM_G=3"):
        V2.launch_config(16, 32, 64, 64, "fwd")
    monkeypatch.setenv("E2F_V2_FWD_STREAM_G", "4")
    assert V2.launch_config(16, 32, 64, 64, "fwd")["SG"] == 4
    monkeypatch.delenv("E2F_V2_FWD_STREAM_G")
    # the radial-table launch (TABLE) has its own warps: 4 at every size, forward (H200 re-sweep, session 12) and
    # backward (session 18: 8 for H >= 64 from session 12 was slower with the relaxed atomics); the MLP launch keeps
    # its own, and the environment still overrides both
    assert V2.launch_config(16, 32, 64, 64, "fwd")["num_warps"] == 8
    assert V2.launch_config(16, 32, 64, 64, "fwd", table=True)["num_warps"] == 4
    assert V2.launch_config(16, 32, 64, 64, "bwd", table=True)["num_warps"] == 4
    assert V2.launch_config(128, 128, 256, 32, "bwd")["num_warps"] == 4
    assert V2.launch_config(128, 128, 256, 32, "bwd", table=True)["num_warps"] == 4
    assert V2.launch_config(128, 128, 256, 32, "fwd", table=True)["num_warps"] == 4
    # the untuned MLP launch at the App. A size (H 16, hid 128; sessions 19, 20): 8 warps under an 80-register cap, KC
    # 16 and 3 programs per SM both ways (3 resident CTAs); the bundled model's (hid 32) keeps 4 backward warps, 128
    # registers and 8 programs per SM, and the table launch its own
    appa = V2.launch_config(16, 128, 256, 64, "fwd"), V2.launch_config(16, 128, 256, 64, "bwd")
    assert [(c["num_warps"], c["progs_per_sm"], c["maxnreg"], c["KC"]) for c in appa] == [(8, 3, 80, 16)] * 2
    assert [V2.launch_config(16, 32, 64, 64, kind)["maxnreg"] for kind in ("fwd", "bwd")] == [128, 128]
    # every table launch keeps 128 registers: session 21's 64 for the bundled model's table forward lost to 128 once the
    # unit vectors were staged (session 22: 115k 4.51 -> 3.83 ms)
    assert V2.launch_config(16, 128, 256, 64, "fwd", table=True)["maxnreg"] == 128
    assert V2.launch_config(16, 32, 64, 64, "fwd", table=True)["maxnreg"] == 128
    assert V2.launch_config(16, 32, 64, 64, "bwd", table=True)["maxnreg"] == 128
    assert V2.launch_config(128, 128, 256, 32, "fwd", table=True)["maxnreg"] == 128
    assert V2.launch_config(128, 128, 256, 32, "fwd")["maxnreg"] == 128
    monkeypatch.setenv("E2F_V2_FWD_MAXNREG", "0")   # 0: no cap
    assert V2.launch_config(16, 128, 256, 64, "fwd")["maxnreg"] is None
    monkeypatch.delenv("E2F_V2_FWD_MAXNREG")
    # ... and its streamed forward unrolled 8 times (SU); every other forward launch keeps SU 1
    assert appa[0]["SU"] == 8
    # the RBF window's basis values staged in scratch (session 21): on for the tuned (V1.5) launches and (session 22)
    # every forward, off for App. A's backward
    assert [V2.launch_config(128, 128, 256, 32, kind)["PHI_SCR"] for kind in ("fwd", "bwd")] == [True, True]
    assert [c["PHI_SCR"] for c in appa] == [True, False]
    monkeypatch.setenv("E2F_V2_PHI_SCR", "1")
    assert V2.launch_config(16, 128, 256, 64, "bwd")["PHI_SCR"] is True
    monkeypatch.setenv("E2F_V2_PHI_SCR", "0")
    assert V2.launch_config(16, 128, 256, 64, "fwd")["PHI_SCR"] is False
    monkeypatch.delenv("E2F_V2_PHI_SCR")
    # ... and the backward's d/dd over the window staged the same way, on for every backward launch, and the streamed
    # forward's unit vectors, on for every forward launch (session 22)
    assert all(V2.launch_config(h, hid, c, k, "fwd", table=t)["R_SCR"]
               for h, hid, c, k in ((128, 128, 256, 32), (16, 128, 256, 64), (16, 32, 64, 64)) for t in (False, True))
    monkeypatch.setenv("E2F_V2_FWD_R_SCR", "0")
    assert V2.launch_config(16, 32, 64, 64, "fwd", table=True)["R_SCR"] is False
    monkeypatch.delenv("E2F_V2_FWD_R_SCR")
    # the value rows' L2-only cache hint (session 24): opt-in (no launch of the real models moved on the H200)
    assert V2.launch_config(16, 128, 256, 64, "fwd", table=True)["VCACHE"] == ""
    monkeypatch.setenv("E2F_V2_FWD_V_CG", "1")
    assert V2.launch_config(16, 128, 256, 64, "fwd", table=True)["VCACHE"] == ".cg"
    monkeypatch.delenv("E2F_V2_FWD_V_CG")
    assert [V2.launch_config(h, hid, c, k, "bwd")["DD_SCR"]
            for h, hid, c, k in ((128, 128, 256, 32), (16, 128, 256, 64), (16, 32, 64, 64))] == [True] * 3
    monkeypatch.setenv("E2F_V2_BWD_DD_SCR", "0")
    assert V2.launch_config(16, 128, 256, 64, "bwd")["DD_SCR"] is False
    monkeypatch.delenv("E2F_V2_BWD_DD_SCR")
    assert V2.launch_config(16, 32, 64, 64, "fwd")["SU"] == 1
    assert V2.launch_config(16, 128, 256, 64, "fwd", table=True)["SU"] == 1
    assert V2.launch_config(128, 128, 256, 32, "fwd")["SU"] == 1
    monkeypatch.setenv("E2F_V2_FWD_STREAM_U", "2")
    assert V2.launch_config(16, 128, 256, 64, "fwd")["SU"] == 2
    monkeypatch.delenv("E2F_V2_FWD_STREAM_U")
    assert V2.launch_config(16, 32, 64, 64, "bwd")["num_warps"] == 4
    assert V2.launch_config(16, 32, 64, 64, "fwd")["progs_per_sm"] == 8
    assert V2.launch_config(16, 128, 256, 64, "bwd", table=True)["num_warps"] == 4
    assert V2.launch_config(16, 128, 256, 64, "fwd", table=True)["progs_per_sm"] == 8
    monkeypatch.setenv("E2F_V2_PROGS_PER_SM", "6")
    assert V2.launch_config(16, 128, 256, 64, "fwd")["progs_per_sm"] == 6
    monkeypatch.delenv("E2F_V2_PROGS_PER_SM")
    monkeypatch.setenv("E2F_V2_FWD_NUM_WARPS", "8")
    assert V2.launch_config(16, 32, 64, 64, "fwd", table=True)["num_warps"] == 8
    monkeypatch.delenv("E2F_V2_FWD_NUM_WARPS")
    monkeypatch.setenv("E2F_V2_BWD_NUM_WARPS", "8")
    assert V2.launch_config(128, 128, 256, 32, "bwd", table=True)["num_warps"] == 8
    monkeypatch.delenv("E2F_V2_BWD_NUM_WARPS")
    assert V2.launch_config(128, 128, 256, 32, "bwd")["ATOM"] == 0      # atomics unless a stage timing asks
    # the dv / dk atomics are relaxed (acq_rel compiled each to a GPU-wide fence + an L1 invalidation); the old
    # semantics stay reachable for an A/B timing, and a typo is an error
    assert V2.launch_config(128, 128, 256, 32, "bwd")["ASEM"] == "relaxed"
    monkeypatch.setenv("E2F_V2_ATOMIC_SEM", "acq_rel")
    assert V2.launch_config(128, 128, 256, 32, "bwd")["ASEM"] == "acq_rel"
    monkeypatch.setenv("E2F_V2_ATOMIC_SEM", "seq_cst")
    with pytest.raises(ValueError, match="E2F_V2_ATOMIC_SEM='seq_cst'"):
        V2.launch_config(128, 128, 256, 32, "bwd")
    monkeypatch.delenv("E2F_V2_ATOMIC_SEM")
    # session 13 (H200): q / k in the [N, D, H] layout and bf16 values straight into the kernels are the defaults;
    # the old ones stay reachable, and a typo is an error
    monkeypatch.delenv("E2F_V2_QK_LAYOUT", raising=False)
    monkeypatch.delenv("E2F_V2_BF16_VALUES", raising=False)
    assert V2.qk_layout() is True
    bf, f32 = torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2)
    assert V2.bf16_values(bf) is True and V2.bf16_values(f32) is False
    monkeypatch.setenv("E2F_V2_QK_LAYOUT", "hd")
    monkeypatch.setenv("E2F_V2_BF16_VALUES", "0")
    assert V2.qk_layout() is False and V2.bf16_values(bf) is False
    monkeypatch.setenv("E2F_V2_QK_LAYOUT", "nhd")
    monkeypatch.setenv("E2F_V2_BF16_VALUES", "yes")
    with pytest.raises(ValueError, match="E2F_V2_QK_LAYOUT='nhd'"):
        V2.qk_layout()
    with pytest.raises(ValueError, match="E2F_V2_BF16_VALUES='yes'"):
        V2.bf16_values(bf)
    monkeypatch.delenv("E2F_V2_QK_LAYOUT")
    monkeypatch.delenv("E2F_V2_BF16_VALUES")
    assert V2.launch_config(16, 32, 64, 64, "bwd")["maxnreg"] == 128      # the default register cap (H200-timed)
    assert V2.launch_config(128, 128, 256, 32, "fwd")["maxnreg"] == 128
    monkeypatch.setenv("E2F_V2_FWD_MAXNREG", "0")                          # 0 lifts the cap
    assert V2.launch_config(16, 32, 64, 64, "fwd")["maxnreg"] is None
    monkeypatch.setenv("E2F_V2_BWD_MAXNREG", "168")
    cfg = V2.launch_config(16, 32, 64, 64, "bwd")
    assert cfg["maxnreg"] == 168 and V2.launch_config(16, 32, 64, 64, "fwd")["maxnreg"] is None
    monkeypatch.delenv("E2F_V2_FWD_MAXNREG")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert V2._maxnreg(cfg) == {"maxnreg": 168}
    monkeypatch.setattr(V2.torch.version, "hip", "6.0")                   # nor Triton's AMD backend
    assert V2._maxnreg(cfg) == {}
    monkeypatch.setattr(V2.torch.version, "hip", None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")                            # the interpreter takes no such option
    assert V2._maxnreg(cfg) == {}
    monkeypatch.delenv("E2F_V2_BWD_MAXNREG")
    # on by default wherever 2H is a multiple of the K chunk (H200, session 11: faster at V1.5 and bundled sizes)
    assert V2.launch_config(16, 32, 64, 64, "bwd")["DX2_SCR"] is True
    assert V2.launch_config(4, 32, 64, 64, "bwd")["DX2_SCR"] is False      # 2H = 8, KC 16: off, not an error
    monkeypatch.setenv("E2F_V2_BWD_DX2_SCR", "0")
    assert V2.launch_config(16, 32, 64, 64, "bwd")["DX2_SCR"] is False
    monkeypatch.setenv("E2F_V2_BWD_DX2_SCR", "1")
    cfg = V2.launch_config(16, 32, 64, 64, "bwd")
    assert cfg["DX2_SCR"] is True
    assert V2._scratch_floats("bwd", cfg["AGG"], 64, 32, 16, True) == V2._scratch_floats("bwd", cfg["AGG"], 64, 32, 16) \
        + 2 * 64 * 16                                                      # [R, 2H] at the end of the slot
    with pytest.raises(ValueError, match="DX2_SCR"):                       # 2H = 8 is not a multiple of KC 16
        V2.launch_config(4, 32, 64, 64, "bwd")
    monkeypatch.delenv("E2F_V2_BWD_DX2_SCR")
    monkeypatch.setenv("E2F_V2_FWD_AGG", "split")            # the split form exists for the backward only
    with pytest.raises(ValueError, match="E2F_V2_FWD_AGG='split'"):
        V2.launch_config(16, 32, 64, 64, "fwd")


def _need_triton():
    if not K.HAS_TRITON:
        if os.environ.get("E2FORMER_REQUIRE_TRITON") == "1":
            pytest.fail("triton is not installed but E2FORMER_REQUIRE_TRITON=1")
        pytest.skip("triton not importable: Triton dispatch decisions not tested")


def test_dispatch_auto_picks_v2_on_cuda(monkeypatch):
    """auto: v2 where the Triton kernels can run (CUDA-ness mocked by _ok), v1 if v2 failed to import, the
    reference elsewhere; E2FORMER_ATTENTION_BACKEND applies when no backend is passed; unknown names fail."""
    _need_triton()
    monkeypatch.delenv("E2FORMER_ATTENTION_BACKEND", raising=False)
    case = make_case(5, 3, **MICRO, seed=7)
    args = args_of(case)
    sel = lambda backend=None, ok=True: K.select_backend(None, None, None, backend, _ok=ok)
    assert sel() == sel("auto") == "triton_v2"
    assert sel(ok=False) == "reference"
    assert K.select_backend(args[3], args[5], args[8]) == "reference"            # CPU tensors
    assert sel("triton") == "triton" and sel("triton_v2") == "triton_v2" and sel("reference") == "reference"
    for name, want in (("triton", "triton"), ("TRITON_V2", "triton_v2"), ("reference", "reference"),
                       ("auto", "triton_v2")):
        monkeypatch.setenv("E2FORMER_ATTENTION_BACKEND", name)
        assert sel() == want, name
    monkeypatch.setenv("E2FORMER_ATTENTION_BACKEND", "triton")
    assert sel("triton_v2") == "triton_v2"                                       # explicit beats env
    with pytest.raises(RuntimeError, match="not on CUDA"):                       # forced, cannot run
        sel(ok=False)
    monkeypatch.delenv("E2FORMER_ATTENTION_BACKEND")
    monkeypatch.setattr(K, "_attention_triton_v2", None)                         # v2 broken: v1
    assert sel() == "triton"
    with pytest.raises(RuntimeError, match="triton_v2"):
        sel("triton_v2")
    with pytest.raises(ValueError):
        sel("triton_v3")


def test_dispatch_v2_gets_ieee_dots_and_softmax_mode(monkeypatch):
    """fused_attention runs v2 with exact fp32 dots even when TF32 is allowed (v1 honours allow_tf32), passes
    the softmax mode to every backend, and rejects unknown modes."""
    _need_triton()
    calls = []

    def fake(name):
        def fn(*a, **kw):
            calls.append((name, kw))
            return name
        return fn

    import types
    monkeypatch.setattr(K, "_attention_triton_v2", types.SimpleNamespace(attention_triton_v2=fake("v2")))
    monkeypatch.setattr(K, "_attention_triton", types.SimpleNamespace(attention_triton=fake("v1")))
    args = args_of(make_case(5, 3, **MICRO, seed=7))
    for chosen in ("triton_v2", "triton"):
        monkeypatch.setattr(K, "select_backend", lambda *a, _c=chosen, **kw: _c)
        for softmax in ("official", "smooth"):
            K.fused_attention(*args, allow_tf32=True, max_degree=3, softmax=softmax)
    assert calls == [("v2", dict(allow_tf32=False, max_degree=3, softmax="official", table=None)),
                     ("v2", dict(allow_tf32=False, max_degree=3, softmax="smooth", table=None)),
                     ("v1", dict(allow_tf32=True, max_degree=3, softmax="official")),
                     ("v1", dict(allow_tf32=True, max_degree=3, softmax="smooth"))]
    with pytest.raises(ValueError, match="softmax"):
        K.fused_attention(*args, softmax="soft")


def test_dispatch_edge_degree_auto_picks_v2_on_cuda(monkeypatch):
    """select_edge_degree_backend: auto -> "triton_v2" where the kernels can run (CUDA-ness mocked by _ok), v1
    ("triton") if the v2 module failed to import, the reference elsewhere; explicit names win over
    E2FORMER_EDGE_DEGREE_BACKEND, which wins over E2FORMER_ATTENTION_BACKEND; unknown names fail."""
    _need_triton()
    monkeypatch.delenv("E2FORMER_ATTENTION_BACKEND", raising=False)
    monkeypatch.delenv("E2FORMER_EDGE_DEGREE_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    sel = lambda backend=None, ok=True: K.select_edge_degree_backend(None, None, backend, _ok=ok)
    assert sel() == sel("auto") == sel("AUTO") == "triton_v2"                  # v2 is the CUDA default
    assert sel(ok=False) == "reference"
    assert sel("triton") == "triton" and sel("triton_v2") == "triton_v2" and sel("reference") == "reference"
    assert sel("reference", ok=False) == "reference"
    for name, want in (("triton", "triton"), ("TRITON_V2", "triton_v2"), ("reference", "reference"),
                       ("auto", "triton_v2")):
        monkeypatch.setenv("E2FORMER_ATTENTION_BACKEND", name)
        assert sel() == want, name
        for ed_name, ed_want in (("triton", "triton"), ("triton_v2", "triton_v2"), ("reference", "reference"),
                                 ("auto", "triton_v2")):
            monkeypatch.setenv("E2FORMER_EDGE_DEGREE_BACKEND", ed_name)              # edge-degree env wins
            assert sel() == ed_want, (name, ed_name)
            assert sel("triton") == "triton" and sel("reference") == "reference"   # explicit beats env
        monkeypatch.delenv("E2FORMER_EDGE_DEGREE_BACKEND")
    monkeypatch.delenv("E2FORMER_ATTENTION_BACKEND")
    for name in ("triton", "triton_v2"):                                       # forced, cannot run
        with pytest.raises(RuntimeError, match="not on CUDA"):
            sel(name, ok=False)
    with pytest.raises(ValueError):
        sel("triton_v3")
    # real shape test (no _ok): CPU tensors -> reference; kernel-compatible shapes on "CUDA" -> v2; hid or C
    # not a power of two >= 16 -> reference
    import types
    cuda_vec = types.SimpleNamespace(is_cuda=True)                            # only .is_cuda is looked at
    ok_params = [FCParams.random(6, 6, 16, 8) for _ in range(3)]              # hid 16, C 16
    assert K.select_edge_degree_backend(cuda_vec, ok_params) == "triton_v2"
    assert K.select_edge_degree_backend(types.SimpleNamespace(is_cuda=False), ok_params) == "reference"
    assert K.select_edge_degree_backend(cuda_vec, [FCParams.random(6, 6, 16, 4) for _ in range(3)]) == "reference"
    assert K.select_edge_degree_backend(cuda_vec, [FCParams.random(6, 6, 24, 8) for _ in range(3)]) == "reference"
    # the attention v2 module failing does not change the edge-degree choice (and vice versa)
    attention_v2 = K._attention_triton_v2
    monkeypatch.setattr(K, "_attention_triton_v2", None)
    assert sel() == "triton_v2" and K.select_backend(None, None, None, _ok=True) == "triton"
    monkeypatch.setattr(K, "_attention_triton_v2", attention_v2)
    # edge-degree v2 module failed to import: auto falls back to v1, an explicit triton_v2 raises
    monkeypatch.setattr(K, "_edge_degree_triton_v2", None)
    assert sel() == "triton" and sel("triton") == "triton"
    with pytest.raises(RuntimeError, match="triton_v2"):
        sel("triton_v2")
    assert K.select_backend(None, None, None, _ok=True) == "triton_v2"


def test_dispatch_edge_degree_runs_chosen_kernels(monkeypatch):
    """fused_edge_degree calls the chosen implementation: v2 for auto on CUDA, v1 for backend="triton" or
    E2FORMER_EDGE_DEGREE_BACKEND=triton, v2 for "triton_v2", the reference for "reference" / CPU tensors;
    allow_tf32 and max_degree reach both kernels; a requested but unimportable v2 raises."""
    _need_triton()
    import types
    monkeypatch.delenv("E2FORMER_ATTENTION_BACKEND", raising=False)
    monkeypatch.delenv("E2FORMER_EDGE_DEGREE_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kws = []

    def fake(name):
        def fn(*a, **kw):
            kws.append((name, kw))
            return name
        return fn

    monkeypatch.setattr(K, "_edge_degree_triton", types.SimpleNamespace(edge_degree_triton=fake("v1")))
    monkeypatch.setattr(K, "_edge_degree_triton_v2", types.SimpleNamespace(edge_degree_triton_v2=fake("v2")))
    monkeypatch.setattr(K, "edge_degree_reference", lambda *a, **kw: "reference")
    params = [FCParams.random(6, 6, 16, 16) for _ in range(3)]              # hid 16, C 32: kernel-compatible
    # (device: what launch_device switches to around the kernels; a CPU device here, where nothing can switch)
    cuda_vec = types.SimpleNamespace(is_cuda=True, device=torch.device("cpu"))
    run = lambda vec, **kw: K.fused_edge_degree(None, None, vec, None, None, params, None, 0.0, 4.5, **kw)
    assert run(cuda_vec) == "v2"                                            # the default on CUDA
    assert run(cuda_vec, backend="auto") == "v2"
    assert run(types.SimpleNamespace(is_cuda=False, device=torch.device("cpu"))) == "reference"
    assert run(cuda_vec, backend="reference") == "reference"
    assert run(cuda_vec, backend="triton") == "v1"                          # v1 stays reachable
    assert run(cuda_vec, backend="triton_v2") == "v2"
    kws.clear()
    run(cuda_vec, allow_tf32=True, max_degree=7)
    run(cuda_vec, backend="triton", allow_tf32=True, max_degree=7)
    assert kws == [("v2", dict(allow_tf32=True, max_degree=7, table=None)), ("v1", dict(allow_tf32=True, max_degree=7))]
    for name, want in (("triton_v2", "v2"), ("TRITON_V2", "v2"), ("triton", "v1"), ("reference", "reference"),
                       ("auto", "v2")):
        monkeypatch.setenv("E2FORMER_EDGE_DEGREE_BACKEND", name)
        assert run(cuda_vec) == want, name
    monkeypatch.delenv("E2FORMER_EDGE_DEGREE_BACKEND")
    for name, want in (("triton_v2", "v2"), ("triton", "v1"), ("reference", "reference")):
        monkeypatch.setenv("E2FORMER_ATTENTION_BACKEND", name)
        assert run(cuda_vec) == want, name
    monkeypatch.setenv("E2FORMER_EDGE_DEGREE_BACKEND", "reference")          # edge-degree variable wins
    monkeypatch.setenv("E2FORMER_ATTENTION_BACKEND", "triton")
    assert run(cuda_vec) == "reference"
    monkeypatch.setenv("E2FORMER_EDGE_DEGREE_BACKEND", "triton_v2")
    with pytest.raises(RuntimeError, match="not on CUDA"):
        run(types.SimpleNamespace(is_cuda=False))
    monkeypatch.setattr(K, "_edge_degree_triton_v2", None)
    with pytest.raises(RuntimeError, match="triton_v2"):
        run(cuda_vec)
    monkeypatch.delenv("E2FORMER_EDGE_DEGREE_BACKEND")
    monkeypatch.delenv("E2FORMER_ATTENTION_BACKEND")
    assert run(cuda_vec) == "v1"                                            # v2 unimportable: auto -> v1


# ------------------------------------------------------------------------------------------------
# Edge-degree v2 kernels (the CUDA default; E2FORMER_EDGE_DEGREE_BACKEND=triton_v2) under the interpreter: forward and
# gradients w.r.t. every differentiable input vs the float64 reference; atoms with 0 / 1 / K edges, partial
# edge tile, partial last RBF chunk, persistent loop with a partial last round (2 programs, 9 atoms),
# int32 row_ptr, non-default tiles, both d/dd variants (G_FUSED 0 / 1), and the env-var dispatch.
# ------------------------------------------------------------------------------------------------
_INTERP_ED_V2_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    KM = import_module(sys.argv[1])
    T_ = import_module(sys.argv[1] + "._testing")
    ed2 = import_module(sys.argv[1] + ".edge_degree_triton_v2")
    FCParams = KM.FCParams

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()

    worst = 0.0
    # N, K, seed, nb, hid, C, T, row_ptr dtype, env overrides
    cases = ((7, 6, 31, 24, 32, 32, 16, torch.int64, {}),
             (9, 17, 32, 40, 32, 16, 8, torch.int32,
              {"E2F_ED_V2_PROGS_PER_SM": "1", "E2F_ED_V2_KC": "16", "E2F_ED_V2_BLOCK_NB": "16",
               "E2F_ED_V2_G_FUSED": "1"}),
             # degree buckets: degrees in [0, 20] (tile 32) split into <= 16 (tile 16) and the rest
             (9, 20, 33, 24, 32, 32, 16, torch.int64, {"E2F_V2_BUCKETS": "1", "E2F_ED_V2_PROGS_PER_SM": "1"}))
    for N, K, seed, nb, hid, C, T, idx, env in cases:
        os.environ.update(env)
        case = T_.make_case(N, K, **T_.TINY, seed=seed, index_dtype=idx)
        g = torch.Generator().manual_seed(seed)
        vec = case["vec"].float()
        T0, S0 = torch.randn(N, T, generator=g), torch.randn(N, T, generator=g)
        params = [FCParams.random(nb, T, hid, C, generator=g) for _ in range(3)]
        mu = torch.linspace(0, 4.5, nb)
        gam = KM.rbf_gamma(4.5, nb)
        rp, src = case["row_ptr"], case["src"]
        deg = (rp[1:] - rp[:-1]).tolist()
        assert deg[0] == 0 and deg[1] == 1 and deg[2] == K, deg
        # float64 reference on the same (float32-representable) inputs
        leaves64 = [vec.double(), T0.double(), S0.double(), mu.double()] + [x.double() for p in params for x in p]
        leaves64 = [x.clone().requires_grad_(True) for x in leaves64]
        p64 = [FCParams(*leaves64[4 + 10 * n: 14 + 10 * n]) for n in range(3)]
        h64 = KM.edge_degree_reference(rp, src, leaves64[0], leaves64[1], leaves64[2], p64, leaves64[3], gam, 4.5)
        G = torch.randn(h64.shape, generator=g, dtype=torch.float64)
        gr = torch.autograd.grad(h64, leaves64, G)
        # (a) inference / forces: only vec differentiable -> the fused v2 backward kernel
        v32 = vec.clone().requires_grad_(True)
        h = ed2.edge_degree_triton_v2(rp, src, v32, T0, S0, params, mu, gam, 4.5, max_degree=K)
        assert torch.isfinite(h).all() and torch.all(h[0] == 0) and h[1].abs().sum() > 0
        gk, = torch.autograd.grad(h, [v32], G.float())
        errs = [rel(h, h64), rel(gk, gr[0])]
        # (b) training path: every input differentiable (grads via the reference inside backward)
        leaves = [x.clone().requires_grad_(True) for x in [vec, T0, S0, mu] + [x for p in params for x in p]]
        pp = [FCParams(*leaves[4 + 10 * n: 14 + 10 * n]) for n in range(3)]
        h2 = ed2.edge_degree_triton_v2(rp, src, leaves[0], leaves[1], leaves[2], pp, leaves[3], gam, 4.5)
        gt = torch.autograd.grad(h2, leaves, G.float())
        errs_all = [rel(a, b) for a, b in zip(gt, gr)]
        print("N", N, "K", K, "rel errors h, dvec (kernel):", ["%.2e" % x for x in errs],
              "max over all 34 input grads (training path): %.2e" % max(errs_all))
        worst = max(worst, *errs, *errs_all)
        if env.get("E2F_V2_BUCKETS"):   # both bucket launches ran, forward and backward
            assert {"edge_deg_fwd_v2_small", "edge_deg_bwd_v2_small"} <= set(ed2._LAST_COMPILED)
            assert any(d <= 16 for d in deg) and any(d > 16 for d in deg), deg
        for key in env:
            del os.environ[key]
    # env-var dispatch on real kernels (CPU tensors allowed under the interpreter):
    # E2FORMER_EDGE_DEGREE_BACKEND=triton_v2 -> v2; E2FORMER_ATTENTION_BACKEND=triton_v2 (edge-degree variable
    # unset) -> v2; E2FORMER_EDGE_DEGREE_BACKEND=triton -> v1, also when the attention variable says triton_v2
    ed1 = import_module(sys.argv[1] + ".edge_degree_triton")
    calls = []
    orig2, orig1 = ed2.edge_degree_triton_v2, ed1.edge_degree_triton
    ed2.edge_degree_triton_v2 = lambda *a, **kw: (calls.append("v2"), orig2(*a, **kw))[1]
    ed1.edge_degree_triton = lambda *a, **kw: (calls.append("v1"), orig1(*a, **kw))[1]
    os.environ["E2FORMER_EDGE_DEGREE_BACKEND"] = "triton_v2"
    h3 = KM.fused_edge_degree(rp, src, vec, T0, S0, params, mu, gam, 4.5)
    assert calls == ["v2"] and rel(h3, h64) < 1e-5
    del os.environ["E2FORMER_EDGE_DEGREE_BACKEND"]
    os.environ["E2FORMER_ATTENTION_BACKEND"] = "triton_v2"
    h4 = KM.fused_edge_degree(rp, src, vec, T0, S0, params, mu, gam, 4.5)
    assert calls == ["v2", "v2"] and rel(h4, h64) < 1e-5
    os.environ["E2FORMER_EDGE_DEGREE_BACKEND"] = "triton"
    h5 = KM.fused_edge_degree(rp, src, vec, T0, S0, params, mu, gam, 4.5)
    assert calls == ["v2", "v2", "v1"] and rel(h5, h64) < 2e-5
    del os.environ["E2FORMER_EDGE_DEGREE_BACKEND"], os.environ["E2FORMER_ATTENTION_BACKEND"]
    print("WORST", worst)
    assert worst < 1e-5, worst
""")


def test_edge_degree_v2_interpreter_matches_reference():
    run_under_triton_interpreter(_INTERP_ED_V2_SCRIPT, [KPKG], "edge-degree v2 interpreter test",
                                 drop_env=("E2FORMER_EDGE_DEGREE_BACKEND", "E2FORMER_ATTENTION_BACKEND"))


_INTERP_RBF_WIN_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    KM = import_module(sys.argv[1])
    T_ = import_module(sys.argv[1] + "._testing")
    V2 = import_module(sys.argv[1] + ".attention_triton_v2")
    ED2 = import_module(sys.argv[1] + ".edge_degree_triton_v2")
    # nb 128: a window of 32 centres (a quarter); hid 32: the attention kernels stage the window's basis values in
    # scratch (E2F_V2_PHI_SCR, needs WIN <= hid)
    size = dict(C=32, H=8, D=4, nb=128, T=16, hid=32)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()

    def short_edges(case, n):
        # the first n edges at 0.05 .. 0.5 A: their windows clamp at centre 0 (make_case draws d >= 0.7 A, and
        # up to 1.05 R, where the window clamps at the last centre)
        v = case["vec"].clone()
        d = torch.linspace(0.05, 0.5, n, dtype=v.dtype)
        v[:n] = v[:n] / v[:n].norm(dim=1, keepdim=True) * d[:, None]
        case["vec"] = v
        return case

    worst = 0.0
    for seed, env in ((61, {}), (62, {"E2F_V2_BUCKETS": "0", "E2F_V2_FWD_AGG": "tile"}),
                      (63, {"E2F_V2_FWD_BLOCK_T": "2", "E2F_V2_BWD_BLOCK_T": "2", "E2F_V2_BUCKETS": "1"})):
        os.environ.update(env, E2F_V2_RBF_WIN="auto")
        c32 = short_edges(T_.make_case(9, 20, **size, seed=seed), 6)
        c64 = short_edges(T_.make_case(9, 20, **size, seed=seed, dtype=torch.float64), 6)
        assert V2.rbf_window(c32["mu"], c32["gamma"], c32["cutoff"]) == 32
        a64 = list(T_.args_of(c64))
        for n in (2, 3, 4, 5):
            a64[n] = a64[n].clone().requires_grad_(True)
        U64 = KM.attention_reference(*a64)
        G = torch.randn(U64.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref = [U64] + list(torch.autograd.grad(U64, [a64[n] for n in (2, 3, 4, 5)], G))
        got = {}
        for win, phi, dd in (("auto", "1", "0"), ("auto", "0", "0"), ("0", "1", "0"), ("auto", "1", "1")):
            os.environ["E2F_V2_RBF_WIN"] = win
            os.environ["E2F_V2_PHI_SCR"] = phi
            os.environ["E2F_V2_BWD_DD_SCR"] = dd
            a = list(T_.args_of(c32))
            for n in (2, 3, 4, 5):
                a[n] = a[n].clone().requires_grad_(True)
            U = KM.fused_attention(*a, backend="triton_v2", max_degree=20)
            got[win, phi, dd] = [U] + list(torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G.float()))
            errs = [rel(x, y) for x, y in zip(got[win, phi, dd], ref)]
            print("attention RBF_WIN", win, "PHI_SCR", phi, "BWD_DD_SCR", dd, env, ["%.1e" % e for e in errs])
            worst = max(worst, max(errs))
        # window on vs every centre: the same function up to fp32 rounding
        worst = max(worst, max(rel(x, y.double()) for x, y in zip(got["auto", "1", "0"], got["0", "1", "0"])))
        # the window's basis values staged in scratch once per block (the tuned launches' default), or computed in
        # every term, and the backward's d/dd with them staged too (E2F_V2_BWD_DD_SCR, default since session 22) or not: the same expressions,
        # so U and every gradient are bit-for-bit equal
        for other in (("auto", "0", "0"), ("auto", "1", "1")):
            for x, y in zip(got["auto", "1", "0"], got[other]):
                assert torch.equal(x, y), (seed, other, (x - y).abs().max())
        del os.environ["E2F_V2_PHI_SCR"], os.environ["E2F_V2_BWD_DD_SCR"]
        for key in env:
            del os.environ[key]
    # the edge-degree kernels (both d/dd forms: G accumulated beside h0, or recomputed chunk by chunk)
    c32 = short_edges(T_.make_case(9, 20, **size, seed=64), 6)
    c64 = short_edges(T_.make_case(9, 20, **size, seed=64, dtype=torch.float64), 6)
    gen = torch.Generator().manual_seed(65)
    params = [KM.FCParams.random(128, 16, 16, 8, dtype=torch.float64, generator=gen) for _ in range(3)]
    T0 = torch.randn(9, 16, generator=gen, dtype=torch.float64)
    S0 = torch.randn(9, 16, generator=gen, dtype=torch.float64)

    def ed(fn, case, dt, **kw):
        v = case["vec"].to(dt).clone().requires_grad_(True)
        h = fn(case["row_ptr"], case["src"], v, T0.to(dt), S0.to(dt), [KM.FCParams(*(x.to(dt) for x in p)) for p in params],
               case["mu"].to(dt), case["gamma"], case["cutoff"], **kw)
        Gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(66), dtype=torch.float64).to(dt)
        return [h, torch.autograd.grad(h, v, Gh)[0]]
    ref = ed(KM.edge_degree_reference, c64, torch.float64)
    for win in ("auto", "0"):
        for gf in ("0", "1"):
            os.environ["E2F_V2_RBF_WIN"] = win
            os.environ["E2F_ED_V2_G_FUSED"] = gf
            got = ed(ED2.edge_degree_triton_v2, c32, torch.float32, max_degree=20)
            errs = [rel(x, y) for x, y in zip(got, ref)]
            print("edge degree RBF_WIN", win, "G_FUSED", gf, ["%.1e" % e for e in errs])
            worst = max(worst, max(errs))
    print("WORST", worst)
    assert worst < 1e-5, worst
""")


def test_rbf_window_interpreter_matches_reference():
    """The RBF window of the first edge-MLP Linear (``attention_triton_v2.rbf_window``: 32 of 128 centres here):
    attention v2 forward / backward (streamed and tiled aggregation, buckets, 2 targets per program) and the
    edge-degree v2 kernels against the float64 reference, with edges whose windows clamp at either end of the
    centre grid, and window on against window off; the window's basis values staged in scratch (the V1.5 default; in
    the backward's d/dd too with E2F_V2_BWD_DD_SCR) give bit-for-bit what computing them in every term gives."""
    run_under_triton_interpreter(_INTERP_RBF_WIN_SCRIPT, [KPKG], "RBF window interpreter test",
                                 drop_env=("E2FORMER_EDGE_DEGREE_BACKEND", "E2FORMER_ATTENTION_BACKEND",
                                           "E2F_V2_RBF_WIN", "E2F_ED_V2_G_FUSED", "E2F_V2_PHI_SCR",
                                           "E2F_V2_BWD_DD_SCR"))


def test_rbf_window_width(monkeypatch):
    """Window widths: 32 of the V1.5 model's 256 centres (the official gamma = -1/(8 Delta^2)); none where it would
    keep more than a quarter of the centres (the bundled model's 64), for a grid that is not linspace(0, R, nb), or
    with E2F_V2_RBF_WIN=0; wider for a narrower gamma.  Every centre left out is below exp(-30) for every d."""
    _need_triton()
    V2 = import_module(KPKG + ".attention_triton_v2")
    from openmm_e2former.kernels import rbf_gamma
    monkeypatch.delenv("E2F_V2_RBF_WIN", raising=False)
    R = 5.0
    mu = torch.linspace(0, R, 256)
    assert V2.rbf_window(mu, rbf_gamma(R, 256), R) == 32
    assert V2.rbf_window(torch.linspace(0, R, 64), rbf_gamma(R, 64), R) == 0
    assert V2.rbf_window(mu, rbf_gamma(R, 256) / 4, R) == 64           # wider Gaussians: a wider window
    assert V2.rbf_window(mu, rbf_gamma(R, 256) / 16, R) == 0           # 128 of 256: not worth it
    assert V2.rbf_window(mu * 0.9, rbf_gamma(R, 256), R) == 0           # not the uniform grid the kernel assumes
    assert V2.rbf_window(mu.clone(), 0.5, R) == 0                         # not a decaying Gaussian
    with torch.inference_mode():                                         # no version counter: still works
        assert V2.rbf_window(torch.linspace(0, R, 256), rbf_gamma(R, 256), R) == 32
    monkeypatch.setenv("E2F_V2_RBF_WIN", "0")
    assert V2.rbf_window(mu.clone(), rbf_gamma(R, 256), R) == 0
    # the host mirror of _rbf_window_start: for d across [0, 1.2 R], every centre outside the window has phi < e^-30
    gamma, nb, W = rbf_gamma(R, 256), 256, 32
    d = torch.linspace(0, 1.2 * R, 20001, dtype=torch.float64)
    kc = torch.clamp(d * ((nb - 1) / R) + 0.5, 0, nb).to(torch.int64)
    k0 = torch.clamp(kc - (W // 2 - 1), 0, nb - W)
    k = torch.arange(nb)
    outside = (k[None, :] < k0[:, None]) | (k[None, :] >= k0[:, None] + W)
    phi = torch.exp(gamma * (d[:, None] - mu.double()[None, :]) ** 2)
    assert phi[outside].max() < math.exp(-30)


# ------------------------------------------------------------------------------------------------
# benchmarks/mlp_phase_probe.py (session 24): its edge-MLP kernel in every mode against the float64 MLP, under the
# interpreter, so the probe that dropped the tensor-core plan stays runnable and correct
# ------------------------------------------------------------------------------------------------
_MLP_PROBE_SCRIPT = textwrap.dedent(r"""
    import sys
    import torch
    sys.path.insert(0, "benchmarks")
    import mlp_phase_probe as P
    host, dev = P.make_inputs(3, 16, device="cpu")      # 48 edges: one full and one partial 32-row tile
    E = 48
    rows = torch.arange(E)
    worst = 0.0
    for mode, win in (("l1", 32), ("l1", 24), ("simt", 32), ("tc3", 32), ("tc3h", 32), ("tc1", 32)):
        out = P.run(dev, E, mode, 32, 16, 4, 1, win=win)()
        ref = P.reference(host, rows, mode)
        err = float((out[:, :ref.shape[1]].double() - ref).abs().max() / ref.abs().max())
        print(mode, win, err)
        worst = max(worst, err)
    # the grouped first layer (rows sorted by d, groups walking the union of their windows; session 24): bit-for-bit
    # the per-row window's sums, in the original row order
    base = P.run(dev, E, "l1", 32, 16, 4, 1)()[:, :1].clone()
    for mode in ("l1g", "l1gs"):
        for rg in (4, 8):
            assert torch.equal(P.run(dev, E, mode, 32, 16, 4, 1, rg=rg)()[:, :1], base), (mode, rg)
    # without the RBF term the function differs: the check must see it
    out = P.run(dev, E, "l1", 32, 16, 4, 1, win=0)()
    ref = P.reference(host, rows, "l1")
    assert float((out[:, :1].double() - ref).abs().max() / ref.abs().max()) > 1e-3
    print("WORST", worst)
    assert worst < 2e-6, worst
""")


def test_mlp_phase_probe_matches_float64_under_interpreter():
    run_under_triton_interpreter(_MLP_PROBE_SCRIPT, [], "mlp_phase_probe interpreter test")
