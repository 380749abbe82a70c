"""Queries and keys made as [N, D, H] (``SO3ToScalar.from_parts_dh``) for the v2 attention kernels, which read that
layout (``attention_triton_v2.qk_layout``): the projection's last Linear runs with its output rows permuted, the
kernels take the result without a transposing copy, and hand their gradients back as [N, H, D] views of their
[N, D, H] sums.  Against the [N, H, D] projection: values and gradients (float64), the cached permuted weights, the
kernel inputs' storage, and the model's energy and forces on the fused route's code path."""
from __future__ import annotations

import pytest
import torch


def _projection(seed=0, in_features=12, heads=4, head_dim=3, dtype=torch.float64):
    from openmm_e2former.model.layers import SO3ToScalar

    torch.manual_seed(seed)
    p = SO3ToScalar(in_features, heads * head_dim).to(dtype)
    with torch.no_grad():
        for prm in p.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    g = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(7, n, in_features, generator=g, dtype=dtype) for n in (1, 3, 5)]
    return p, xs


def test_from_parts_dh_is_from_parts_stored_as_d_h():
    p, xs = _projection()
    heads, D = 4, 3
    xs = [x.requires_grad_(True) for x in xs]
    got = p.from_parts_dh(xs, heads)
    want = p.from_parts(xs).view(7, heads, D)
    assert got.shape == (7, heads, D)
    assert got.transpose(1, 2).is_contiguous() and not got.is_contiguous()     # stored as [N, D, H]
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    # gradients to the inputs and to every parameter (the permuted weight is differentiable while training)
    G = torch.randn(7, heads, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = list(p.parameters())
    g1 = torch.autograd.grad((got * G).sum(), xs + params)
    g2 = torch.autograd.grad((want * G).sum(), xs + params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_permuted_weights_are_cached_for_frozen_weights_only():
    p, xs = _projection()
    w1, b1 = p._lin2_dh(4)          # weights that require grad: made anew, differentiable
    assert w1.requires_grad and p.__dict__.get("_lin2_dh_cache") is None
    p.requires_grad_(False)
    w2, b2 = p._lin2_dh(4)
    w3, b3 = p._lin2_dh(4)
    assert w3 is w2 and b3 is b2                                  # cached
    torch.testing.assert_close(w2, p.lin2.weight.view(4, 3, -1).transpose(0, 1).reshape(12, -1))
    torch.testing.assert_close(b2, p.lin2.bias.view(4, 3).t().reshape(12))
    with torch.no_grad():                                         # an in-place change of the weights: made anew
        p.lin2.weight.mul_(2.0)
        p.lin2.bias.add_(1.0)
    w4, b4 = p._lin2_dh(4)
    assert w4 is not w2
    torch.testing.assert_close(w4, 2.0 * w2)
    torch.testing.assert_close(b4, b2 + 1.0)
    # and the result follows the new weights
    torch.testing.assert_close(p.from_parts_dh(xs, 4), p.from_parts(xs).view(7, 4, 3), rtol=1e-13, atol=1e-13)
    # a dtype / device move drops the cache (no stale copy kept alive)
    assert "_lin2_dh_cache" in p.__dict__
    p.float()
    assert "_lin2_dh_cache" not in p.__dict__


def test_kernel_inputs_take_a_d_h_query_without_a_copy():
    pytest.importorskip("triton")
    from openmm_e2former.kernels import attention_triton_v2 as V2

    N, H, D, C = 6, 4, 3, 8
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(10, 3, generator=g)
    v = torch.randn(N, 9, C, generator=g)
    q_dh = torch.randn(N, D, H, generator=g)
    k_dh = torch.randn(N, D, H, generator=g)
    q, k = q_dh.transpose(1, 2), k_dh.transpose(1, 2)             # [N, H, D] views, as from_parts_dh makes them
    _, qc, kc, _ = V2._kernel_inputs(vec, q, k, v, True)
    assert qc.data_ptr() == q_dh.data_ptr() and kc.data_ptr() == k_dh.data_ptr()
    # an [N, H, D] tensor (the other callers): one transposing copy, as before
    qn = q.contiguous()
    _, qc2, _, _ = V2._kernel_inputs(vec, qn, k, v, True)
    assert qc2.data_ptr() != qn.data_ptr() and torch.equal(qc2, q_dh)
    # bf16 queries / keys the kernels take as they are (``bf16_qk``): also no copy
    qb, kb = q_dh.bfloat16(), k_dh.bfloat16()
    _, qc3, kc3, _ = V2._kernel_inputs(vec, qb.transpose(1, 2), kb.transpose(1, 2), v, True)
    assert qc3.dtype == torch.bfloat16 and qc3.data_ptr() == qb.data_ptr() and kc3.data_ptr() == kb.data_ptr()
    # the model's own layout ("hd"): the [N, H, D] view is made contiguous
    _, qc4, _, _ = V2._kernel_inputs(vec, q, k, v, False)
    assert qc4.is_contiguous() and torch.equal(qc4, q)


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_model_energy_and_forces_with_d_h_queries(monkeypatch, mode):
    """The tiny model on the fused route's code path (attention on its reference backend): E2F_V2_QK_LAYOUT=dh
    (queries and keys from ``from_parts_dh``) against =hd (``from_parts``)."""
    pytest.importorskip("triton")
    from helpers import fused_route_on_reference, tiny_kernel_model
    from openmm_e2former.model.layers import SO3ToScalar

    m, z, pos, cell, pbc = tiny_kernel_model(num_layers=2)
    fused_route_on_reference(m, lambda *a: monkeypatch.setattr(*a, raising=False))
    m.set_precision(mode)
    calls = []
    real = SO3ToScalar.from_parts_dh
    monkeypatch.setattr(SO3ToScalar, "from_parts_dh", lambda self, xs, h: calls.append(h) or real(self, xs, h))
    out = {}
    for layout in ("hd", "dh"):
        monkeypatch.setenv("E2F_V2_QK_LAYOUT", layout)
        calls.clear()
        out[layout] = m.energy_and_forces(z, pos, cell, pbc)
        assert len(calls) == (0 if layout == "hd" else 2 * len(m.blocks)), (layout, calls)
    e0, f0, e1, f1 = float(out["hd"][1]), out["hd"][2], float(out["dh"][1]), out["dh"][2]
    tol = 1e-6 if mode == "fp32" else 1e-2
    assert abs(e1 - e0) <= tol * abs(e0), (e0, e1)
    assert float((f1 - f0).abs().max() / f0.abs().max()) <= (1e-5 if mode == "fp32" else 3e-2)
