"""Under bf16 autocast (``set_precision("bf16")``) the CG-contraction kernel, the FFN's RMS norm and the q / k
invariant kernel write their outputs in bf16 themselves, since their only consumers are matrix products that would
cast them to bf16 anyway.
This saves one cast pass each way.

The claim to check is bit-identity, under the Triton interpreter on the CPU:
- the kernels' bf16 outputs equal their float32 outputs cast by torch;
- the backward given bf16 gradients equals the backward given those gradients upcast to float32;
- the bf16 model's energy and forces with the kernels' bf16 outputs equal those with float32 outputs (the old path).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from helpers import TRITON_MODEL_SCRIPT_HEAD, kernels_package, run_under_triton_interpreter

KPKG = kernels_package()

_KERNELS_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    KC = import_module(sys.argv[1] + ".cg_triton")
    KN = import_module(sys.argv[1] + ".rmsnorm_triton")
    from openmm_e2former.model.so3 import first_order_cg
    cg = first_order_cg(torch.float64)
    bf = torch.bfloat16
    for N, C, seed in ((3, 16, 0), (5, 48, 1)):
        g = torch.Generator().manual_seed(seed)
        # CG contraction: forward outputs and the backward from bf16 gradients
        U = torch.randn(N, 3, 9, C, generator=g).requires_grad_(True)
        o32 = KC.cg_contract(U, cg)
        o16 = KC.cg_contract(U, cg, bf)
        for a, b in zip(o32, o16):
            assert b.dtype == bf and torch.equal(a.to(bf), b)
        d16 = [torch.randn(x.shape, generator=g).to(bf) for x in o16]
        (gU16,) = torch.autograd.grad(o16, U, d16)
        (gU32,) = torch.autograd.grad(o32, U, [d.float() for d in d16])
        assert gU16.dtype == torch.float32 and torch.equal(gU16, gU32)
        # RMS norm as degree parts
        x = torch.randn(N, 9, C, generator=g).requires_grad_(True)
        w = (1 + 0.1 * torch.randn(3, C, generator=g)).requires_grad_(True)
        b = (0.1 * torch.randn(C, generator=g)).requires_grad_(True)
        p32 = KN.rms_norm(x, w, b, 1e-6, parts=True)
        p16 = KN.rms_norm(x, w, b, 1e-6, parts=True, out_dtype=bf)
        for a, c in zip(p32, p16):
            assert c.dtype == bf and torch.equal(a.to(bf), c)
        d16 = [torch.randn(p.shape, generator=g).to(bf) for p in p16]
        g16 = torch.autograd.grad(p16, (x, w, b), d16)
        g32 = torch.autograd.grad(p32, (x, w, b), [d.float() for d in d16])
        for a, c in zip(g32, g16):
            assert c.dtype == torch.float32 and torch.equal(a, c)
        # q / k invariants (bf16 projections, as under autocast; float32 bias)
        KP = import_module(sys.argv[1] + ".pairdot_triton")
        h = 24
        a = [(torch.randn(shape, generator=g)).to(bf).requires_grad_(True) for shape in ((N, 2 * h), (N, 3, 2 * h), (N, 5, 2 * h))]
        bias = torch.randn(h, generator=g)
        s32 = KP.pairdot(*a, bias)
        s16 = KP.pairdot(*a, bias, bf)
        assert s32.dtype == torch.float32 and s16.dtype == bf and torch.equal(s32.to(bf), s16)
        ds = torch.randn(s16.shape, generator=g).to(bf)
        ga16 = torch.autograd.grad(s16, a, ds)
        ga32 = torch.autograd.grad(s32, a, ds.float())
        for x16, x32 in zip(ga16, ga32):
            assert torch.equal(x16, x32)
        # the bf16 gradients are the float32 ones rounded to nearest even, as torch's cast rounds them
        KPR = import_module(sys.argv[1] + ".pairdot_reference")
        a32 = [t.detach().float().requires_grad_(True) for t in a]
        gr = torch.autograd.grad(KPR.pairdot_reference(*a32, bias), a32, ds.float())
        for x16, r in zip(ga16, gr):
            assert x16.dtype == bf and torch.equal(x16, r.to(bf)), float((x16.float() - r).abs().max())
    for bad in (torch.float16, torch.float64):
        for call in (lambda: KC.cg_contract(U, cg, bad), lambda: KN.rms_norm(x, w, b, 1e-6, parts=True, out_dtype=bad),
                     lambda: KP.pairdot(*a, bias, bad)):
            try:
                call()
            except ValueError as e:
                assert "out_dtype" in str(e), e
            else:
                raise AssertionError(f"{bad} accepted")
    # the rounding helper on ties, carries into the exponent, overflow, subnormals and signed zeros
    import triton, triton.language as tl
    B = import_module(sys.argv[1] + "._node_jit")

    @triton.jit
    def _round(X, Y, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(Y + i, B.to_out(tl.load(X + i, mask=i < n), True), mask=i < n)

    x = torch.tensor([1.00390625, 1.01171875, 1.0078125 + 2 ** -9, -(1 + 2 ** -8), 1.9999999, 3.4e38, 3.3895e38,
                      float("inf"), -float("inf"), 1e-40, -1e-40, 0.0, -0.0, 65504.0, 1e-3, -7.5e-21])
    x = torch.cat([x, torch.randn(200, generator=torch.Generator().manual_seed(5)) * 10.0 ** torch.randint(-30, 30, (200,))])
    y = torch.empty(x.shape, dtype=bf)
    _round[(1,)](x, y, x.numel(), BLOCK=256)
    assert torch.equal(y.view(torch.int16), x.to(bf).view(torch.int16)), (x, y, x.to(bf))
    nan = torch.tensor([float("nan"), -float("nan")])
    yn = torch.empty(2, dtype=bf)
    _round[(1,)](nan, yn, 2, BLOCK=256)
    assert torch.isnan(yn.float()).all(), yn
    print("WORST 0")
""")


def test_bf16_outputs_of_the_cg_and_norm_kernels_are_the_casts_of_their_float32_outputs():
    run_under_triton_interpreter(_KERNELS_SCRIPT, [KPKG], "the CG / RMS-norm kernels' bf16 outputs")


_MODEL_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""
    from openmm_e2former.kernels import cg_triton, rmsnorm_triton
    os.environ["E2F_CG_KERNEL"] = "1"
    os.environ["E2F_RMSNORM_KERNEL"] = "1"
    os.environ["E2F_PAIRDOT_KERNEL"] = "1"
    from openmm_e2former.kernels import pairdot_triton
    m, z, pos, cell, pbc = tiny_kernel_model()
    m.set_precision("bf16")
    # the attention on its PyTorch route (the fused one under the interpreter would take most of the time) gives
    # U in bf16 under autocast, where the fused kernel gives float32: hand node_part float32 U, as on the GPU
    attn = m.blocks[0].attn
    real_edge = attn.edge_part
    attn.edge_part = lambda x, z, g: real_edge(x, z, g).float()
    dtypes = []
    real_cg, real_norm = cg_triton.cg_contract, rmsnorm_triton.rms_norm
    def spy_cg(U, cg, out_dtype=torch.float32):
        dtypes.append(("cg", out_dtype))
        return real_cg(U, cg, out_dtype)
    def spy_norm(x, w, b, eps, extra=None, parts=False, out_dtype=torch.float32, **kw):   # kw: passthrough
        dtypes.append(("norm", out_dtype))
        return real_norm(x, w, b, eps, extra, parts, out_dtype, **kw)
    real_pd = pairdot_triton.pairdot
    def spy_pd(a0, a1, a2, bias, out_dtype=None):
        dtypes.append(("pairdot", out_dtype or torch.float32))
        return real_pd(a0, a1, a2, bias, out_dtype)
    cg_triton.cg_contract, rmsnorm_triton.rms_norm, pairdot_triton.pairdot = spy_cg, spy_norm, spy_pd
    out = {}
    for label in ("bf16 outputs", "float32 outputs"):
        if label == "float32 outputs":          # the path before: the kernels write float32, autocast casts
            os.environ["E2F_BF16_NODE_OUT"] = "0"
        dtypes.clear()
        out[label] = m.energy_and_forces(z, pos, cell, pbc)
        kinds = {(k, d) for k, d in dtypes}
        want = torch.bfloat16 if label == "bf16 outputs" else torch.float32
        assert ("cg", want) in kinds and ("norm", want) in kinds and ("pairdot", want) in kinds, (label, kinds)
    e1, f1 = out["bf16 outputs"][1], out["bf16 outputs"][2]
    e0, f0 = out["float32 outputs"][1], out["float32 outputs"][2]
    assert torch.equal(torch.as_tensor(e1), torch.as_tensor(e0)), (e0, e1)
    assert torch.equal(f1, f0), float((f1 - f0).abs().max())
    # and the float32 model is untouched: no bf16 anywhere without autocast
    m.set_precision("fp32")
    dtypes.clear()
    m.energy_and_forces(z, pos, cell, pbc)
    assert dtypes and all(d == torch.float32 for _, d in dtypes), dtypes
    # with the gate kernel and the in-place degree-wise linears on (their CUDA defaults), every degree-wise linear of
    # the bf16 model runs in bf16: the FFN's second linear takes the gate kernel's bf16 parts as they are (sessions
    # 16-17 promoted them to float32: +3 GiB and -4 % at 100k atoms, found in session 18)
    from openmm_e2former.model import layers as L
    os.environ["E2F_BF16_NODE_OUT"] = "1"
    os.environ["E2F_GATE_KERNEL"] = "1"
    os.environ["E2F_DEGREE_LINEAR"] = "1"
    linear_dtypes, where = [], ["elsewhere"]
    real_dl = L._DegreeLinear.apply
    L._DegreeLinear.apply = lambda *a: linear_dtypes.append((where[0], tuple(t.dtype for t in a[:3]))) or real_dl(*a)
    for b in m.blocks:
        def ffn_lin2(xs, _real=b.ffn.lin2.cat_parts):
            where[0] = "ffn.lin2"
            try:
                return _real(xs)
            finally:
                where[0] = "elsewhere"
        b.ffn.lin2.cat_parts = ffn_lin2
    m.set_precision("bf16")
    e2, f2 = m.energy_and_forces(z, pos, cell, pbc)[1:3]
    assert [w for w, _ in linear_dtypes].count("ffn.lin2") == len(m.blocks), linear_dtypes
    assert all(d == (torch.bfloat16,) * 3 for _, d in linear_dtypes), linear_dtypes
    assert abs(float(e2) - float(e1)) <= 1e-2 * abs(float(e1)) and torch.isfinite(f2).all(), (e1, e2)
    print("WORST 0")
""")


def test_bf16_model_with_bf16_kernel_outputs_is_bit_identical():
    run_under_triton_interpreter(_MODEL_SCRIPT, [Path(__file__).resolve().parent], "the bf16 model's node kernels",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_CG_KERNEL", "E2F_RMSNORM_KERNEL",
                                           "E2F_PAIRDOT_KERNEL", "E2F_BF16_NODE_OUT", "E2F_GATE_KERNEL",
                                           "E2F_DEGREE_LINEAR"))


def test_qkv_projections_share_one_bf16_cast(monkeypatch):
    """Under bf16 autocast the q / k / v projections take one shared bf16 cast of each degree part of the attention
    input (``gemm_input_parts``) instead of one cast each.  The forward is bit-identical. The gradient sums the same three bf16
    products in float32, as before, so forces agree to float32 rounding. This runs through the whole model on the
    fused route's code path (``edge_part`` -> ``qkv`` -> ``fused_U_rows``); the attention itself runs on its
    reference backend on the CPU."""
    import torch

    from helpers import fused_route_on_reference, tiny_kernel_model
    from openmm_e2former.model import layers as L

    m, z, pos, cell, pbc = tiny_kernel_model(num_layers=2)
    m.set_precision("bf16")
    fused_route_on_reference(m, lambda *a: monkeypatch.setattr(*a, raising=False))
    calls = []
    real = L._SharedBF16.apply
    monkeypatch.setattr(L._SharedBF16, "apply", lambda *a: calls.append(a[1]) or real(*a))
    out = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("E2F_BF16_NODE_OUT", flag)
        calls.clear()
        out[flag] = m.energy_and_forces(z, pos, cell, pbc)
        assert calls == ([3] * 6 if flag == "1" else []), (flag, calls)     # 3 parts x 2 layers
    assert float(out["1"][1]) == float(out["0"][1])
    f1, f0 = out["1"][2], out["0"][2]
    assert torch.allclose(f1, f0, rtol=0, atol=1e-6 * float(f0.abs().max())), float((f1 - f0).abs().max())
    # without autocast nothing is shared or cast
    m.set_precision("fp32")
    calls.clear()
    xs = [torch.randn(5, k, 32) for k in (1, 3, 5)]
    assert all(t is x for parts in L.gemm_input_parts(xs, 3) for t, x in zip(parts, xs)) and not calls
    # view parts (a split): one contiguous copy each, shared by the three consumers
    x = torch.randn(5, 9, 32)
    res = L.gemm_input_parts(list(torch.split(x, [1, 3, 5], dim=1)), 3)
    assert all(r[i] is res[0][i] and r[i].is_contiguous() for r in res for i in range(3)) and not calls
    assert torch.equal(torch.cat(res[2], dim=1), x)


def test_shared_bf16_cast_gradient_is_the_float32_sum():
    import torch

    from openmm_e2former.model import layers as L

    x0 = torch.randn(7, 9, 16, requires_grad=True)
    x = x0 * 1.0
    W = [torch.randn(12, 16) for _ in range(3)]
    xs = list(torch.split(x, [1, 3, 5], dim=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ys = L.gemm_input_parts(xs, 3)
        assert all(y.dtype == torch.bfloat16 and y.is_contiguous() for parts in ys for y in parts)
        shared = [torch.nn.functional.linear(y, w) for parts, w in zip(ys, W) for y in parts]
        separate = [torch.nn.functional.linear(p, w) for w in W for p in xs]
    for a, b in zip(shared, separate):
        assert torch.equal(a, b)
    d = [torch.randn(a.shape).to(torch.bfloat16) for a in shared]
    (g1,) = torch.autograd.grad(shared, x0, d, retain_graph=True)
    (g0,) = torch.autograd.grad(separate, x0, d)
    assert g1.dtype == torch.float32
    torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-6)


def test_bf16_node_out_switch_and_autocast_query(monkeypatch):
    import pytest
    import torch

    from openmm_e2former.model import layers as L

    x = torch.zeros(2, 9, 4)
    monkeypatch.delenv("E2F_BF16_NODE_OUT", raising=False)
    assert L.autocast_dtype(x) == torch.float32                    # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert L.autocast_dtype(x) == torch.bfloat16
        monkeypatch.setenv("E2F_BF16_NODE_OUT", "0")
        assert L.autocast_dtype(x) == torch.float32
        monkeypatch.setenv("E2F_BF16_NODE_OUT", "yes")
        with pytest.raises(ValueError, match="E2F_BF16_NODE_OUT='yes'"):
            L.autocast_dtype(x)
    monkeypatch.setenv("E2F_BF16_NODE_OUT", "1")
    with torch.autocast("cpu", dtype=torch.float16):               # only bf16 autocast counts
        assert L.autocast_dtype(x) == torch.float32
