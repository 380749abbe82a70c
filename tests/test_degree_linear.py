"""``layers.degree_linear`` (``_DegreeLinear``): the degree-wise linear maps whose three outputs were concatenated
(the value projection, the attention's output linear, the FFN's second linear) as GEMMs that write the [N, 9, C]
output's rows in place and read the gradient's rows in place.  Against the cat of three ``F.linear``: float64
gradcheck (and double backward), float32 and bf16 autocast, the switch, and the model's energy and forces."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _parts(N=29, A=16, B=24, D=8, Co=12, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(N, A, generator=g, dtype=dtype), torch.randn(N, 3, B, generator=g, dtype=dtype),
          torch.randn(N, 5, D, generator=g, dtype=dtype)]
    ws = [torch.randn(Co, k, generator=g, dtype=dtype) for k in (A, B, D)]
    return xs, ws, torch.randn(Co, generator=g, dtype=dtype)


def _cat(xs, ws, b):
    N = xs[0].shape[0]
    return torch.cat([F.linear(xs[0], ws[0], b)[:, None],
                      F.linear(xs[1].reshape(N * 3, -1), ws[1]).view(N, 3, -1),
                      F.linear(xs[2].reshape(N * 5, -1), ws[2]).view(N, 5, -1)], dim=1)


def test_degree_linear_matches_the_cat_and_its_gradients(monkeypatch):
    from openmm_e2former.model import layers as L

    monkeypatch.setenv("E2F_DEGREE_LINEAR", "1")
    xs, ws, b = _parts()
    xs = [x.requires_grad_(True) for x in xs]
    for bias in (b, None):
        y = L.degree_linear(*xs, *ws, bias)
        assert y is not None and y.shape == (29, 9, 12)
        torch.testing.assert_close(y, _cat(xs, ws, bias), rtol=1e-12, atol=1e-12)
    # gradients and the double backward (smaller sizes: gradgradcheck's cost grows with the square of them)
    xg, wg, bg = _parts(N=5, A=4, B=6, D=3, Co=5, seed=1)
    xg = [x.requires_grad_(True) for x in xg]
    for bias in (bg, None):
        assert torch.autograd.gradcheck(lambda a, c, d: L.degree_linear(a, c, d, *wg, bias), xg)
        assert torch.autograd.gradgradcheck(lambda a, c, d: L.degree_linear(a, c, d, *wg, bias), xg)
    # float32: the same products (each row's dot product in the same order up to the BLAS blocking)
    x32 = [x.detach().float().requires_grad_(True) for x in xs]
    w32 = [w.float() for w in ws]
    y = L.degree_linear(*x32, *w32, b.float())
    G = torch.randn(y.shape)
    g1 = torch.autograd.grad(y, x32, G)
    y0 = _cat(x32, w32, b.float())
    g0 = torch.autograd.grad(y0, x32, G)
    torch.testing.assert_close(y, y0, rtol=1e-6, atol=1e-5)
    for a, c in zip(g1, g0):
        assert a.is_contiguous()
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-5)


def test_degree_linear_under_bf16_autocast_computes_in_bf16(monkeypatch):
    from openmm_e2former.model import layers as L

    monkeypatch.setenv("E2F_DEGREE_LINEAR", "1")
    xs, ws, b = _parts(dtype=torch.float32)
    xs = [x.requires_grad_(True) for x in xs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = L.degree_linear(*xs, *ws, b)
        y0 = _cat(xs, ws, b)
    assert y.dtype == y0.dtype == torch.bfloat16
    # the same bf16 products: equal up to one bf16 rounding of differently accumulated float32 sums
    torch.testing.assert_close(y.float(), y0.float(), rtol=1e-2, atol=1e-2)
    G = torch.randn(y.shape).to(torch.bfloat16)
    for a, c in zip(torch.autograd.grad(y, xs, G), torch.autograd.grad(y0, xs, G)):
        assert a.dtype == c.dtype == torch.float32
        torch.testing.assert_close(a, c, rtol=2e-2, atol=5e-2)
    # parts already in bf16 (the gate kernel writes them so under bf16 autocast) stay bf16, as autocast keeps them:
    # session 17's promotion to float32 here ran the FFN's second linear in float32 (+1.3 GiB at 100k atoms)
    xb = [x.detach().to(torch.bfloat16).requires_grad_(True) for x in xs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = L.degree_linear(*xb, *ws, b)
        y0 = _cat(xb, ws, b)
    assert y.dtype == y0.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y0.float(), rtol=1e-2, atol=1e-2)
    for a, c in zip(torch.autograd.grad(y, xb, G), torch.autograd.grad(y0, xb, G)):
        assert a.dtype == c.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), c.float(), rtol=2e-2, atol=5e-2)
    # float64 is left alone by autocast, and so here
    x64, w64 = [x.detach().double() for x in xs], [w.double() for w in ws]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = L.degree_linear(*x64, *w64, b.double())
        y0 = _cat(x64, w64, b.double())
    assert y.dtype == y0.dtype == torch.float64
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)


def test_degree_linear_switch_and_when_it_steps_aside(monkeypatch):
    from openmm_e2former.model import layers as L

    xs, ws, b = _parts(dtype=torch.float32)
    monkeypatch.delenv("E2F_DEGREE_LINEAR", raising=False)
    assert L.degree_linear(*xs, *ws, b) is None                   # the CPU: only with "1"
    monkeypatch.setenv("E2F_DEGREE_LINEAR", "1")
    assert L.degree_linear(*xs, *ws, b) is not None
    assert L.degree_linear(*xs, ws[0].clone().requires_grad_(True), ws[1], ws[2], b) is None   # training
    assert L.degree_linear(*xs, *ws, b.clone().requires_grad_(True)) is None
    monkeypatch.setenv("E2F_DEGREE_LINEAR", "0")
    assert L.degree_linear(*xs, *ws, b) is None
    monkeypatch.setenv("E2F_DEGREE_LINEAR", "yes")
    with pytest.raises(ValueError, match="E2F_DEGREE_LINEAR='yes'"):
        L.degree_linear(*xs, *ws, b)


@pytest.mark.parametrize("fused_route", [False, True])
def test_model_with_degree_linear(monkeypatch, fused_route):
    """The tiny model's energy and forces with E2F_DEGREE_LINEAR=1 (value projection, attention output linear and
    FFN output linear as ``_DegreeLinear``) against =0, float32 and bf16, on the PyTorch route and on the fused
    route's code path (attention on its reference backend)."""
    from helpers import fused_route_on_reference, tiny_kernel_model
    from openmm_e2former.model import layers as L

    m, z, pos, cell, pbc = tiny_kernel_model(num_layers=2)
    if fused_route:
        fused_route_on_reference(m, lambda *a: monkeypatch.setattr(*a, raising=False))
    calls = []
    real = L._DegreeLinear.apply
    monkeypatch.setattr(L._DegreeLinear, "apply", lambda *a: calls.append(a[1].shape[1]) or real(*a))
    for mode, tol in (("fp32", 1e-5), ("bf16", 3e-2)):
        m.set_precision(mode)
        out = {}
        for flag in ("0", "1"):
            monkeypatch.setenv("E2F_DEGREE_LINEAR", flag)
            calls.clear()
            out[flag] = m.energy_and_forces(z, pos, cell, pbc)
            # per block: the attention's output linear and the FFN's second one, and on the fused route the value
            assert len(calls) == (0 if flag == "0" else (3 if fused_route else 2) * len(m.blocks)), (flag, calls)
        e0, f0, e1, f1 = float(out["0"][1]), out["0"][2], float(out["1"][1]), out["1"][2]
        assert abs(e1 - e0) <= (1e-5 if mode == "fp32" else 1e-2) * abs(e0), (mode, e0, e1)
        err = float((f1 - f0).abs().max() / f0.abs().max())
        assert err < tol, (mode, err)
