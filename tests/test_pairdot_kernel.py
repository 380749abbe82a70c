"""The query / key invariant kernels (``kernels.pairdot_triton``, opt-in ``E2F_PAIRDOT_KERNEL=1``) against their
PyTorch reference (``kernels.pairdot_reference``) under the Triton interpreter on the CPU: forward, backward (with
the bias gradient) and double backward, float32 and bf16 inputs, sizes that are not multiples of the kernel's
blocks; and the model with the kernel against its PyTorch form.  The GPU timing is ``benchmarks/bench_cg.py``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import (assert_env_switch, kernel_test_script, kernels_package, node_kernel_model_script,
                     run_under_triton_interpreter)

KPKG = kernels_package()


def test_reference_is_the_models_formula():
    """pairdot_reference computes SO3ToScalar.scalars' invariants from the three projections."""
    from importlib import import_module

    R = import_module(KPKG + ".pairdot_reference")
    from openmm_e2former.model.layers import SO3ToScalar

    torch.manual_seed(0)
    mod = SO3ToScalar(8, 12).double()
    with torch.no_grad():
        mod.bias.normal_()
    x = torch.randn(5, 9, 8, dtype=torch.float64)
    h = mod.weight.shape[1]
    xs = torch.split(x, [1, 3, 5], dim=1)
    p = [torch.einsum("nmc,oc->nmo", xs[l], torch.cat([mod.weight[l], mod.weight2[l]])) for l in range(3)]
    got = R.pairdot_reference(p[0][:, 0], p[1], p[2], mod.bias)
    torch.testing.assert_close(got, mod.scalars(x), rtol=1e-13, atol=1e-13)
    assert got.shape == (5, 3 * h)


_INTERP_PAIRDOT_SCRIPT = kernel_test_script("pairdot", r"""

    for N, h, seed in ((3, 16, 0), (6, 150, 1), (1, 8, 2), (9, 64, 3)):
        g = torch.Generator().manual_seed(seed)
        ins64 = [torch.randn(*shape, generator=g, dtype=torch.float64)
                 for shape in ((N, 2 * h), (N, 3, 2 * h), (N, 5, 2 * h), (h,))]
        for dt, tol in ((torch.float32, 2e-6), (torch.bfloat16, 2e-2)):
            ins = [t.to(dt if i < 3 else torch.float32).requires_grad_(True) for i, t in enumerate(ins64)]
            s = K.pairdot(*ins)
            # the PyTorch form's dtype: with the float32 bias, bf16 projections give float32 invariants
            assert s.dtype == torch.promote_types(dt, torch.float32) == R.pairdot_reference(*ins).dtype
            assert s.shape == (N, 3 * h)
            # reference of the inputs as the kernel saw them (bf16 inputs rounded), in float64
            ref_in = [t.detach().double().requires_grad_(True) for t in ins]
            ref = R.pairdot_reference(*ref_in)
            e = rel(s, ref)
            ds = torch.randn(N, 3 * h, generator=g, dtype=torch.float64)
            grads = torch.autograd.grad(s, ins, ds.to(s.dtype))
            rgrads = torch.autograd.grad(ref, ref_in, ds.to(s.dtype).double())
            for a, b in zip(grads, rgrads):
                assert a.dtype == (dt if a.dim() > 1 else torch.float32)
                e = max(e, rel(a, b))
            assert e < tol, (dt, e)
            if dt == torch.float32:
                worst = max(worst, e)
                # double backward (a force loss): d/d(inputs) <grad(s), W> against the reference's
                W = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ins]
                gr = torch.autograd.grad(K.pairdot(*ins), ins, ds.float(), create_graph=True)
                gg = torch.autograd.grad(sum((a * w.float()).sum() for a, w in zip(gr, W)), ins)
                rr = torch.autograd.grad(R.pairdot_reference(*ref_in), ref_in, ds, create_graph=True)
                rgg = torch.autograd.grad(sum((a * w).sum() for a, w in zip(rr, W)), ref_in)
                for a, b in zip(gg, rgg):
                    worst = max(worst, rel(a, b))
    print("WORST", worst)
    assert worst < 2e-6, worst
""")


def test_pairdot_kernels_match_the_reference_under_interpreter():
    run_under_triton_interpreter(_INTERP_PAIRDOT_SCRIPT, [KPKG], "the query / key invariant kernels")


_INTERP_PAIRDOT_MODEL_SCRIPT = node_kernel_model_script("pairdot_triton", "pairdot", "E2F_PAIRDOT_KERNEL")


def test_model_with_the_pairdot_kernel_under_interpreter():
    """E2F_PAIRDOT_KERNEL=1: the query / key projections take the kernel (and only then), with the same energy and
    forces as the PyTorch form to float32 rounding."""
    run_under_triton_interpreter(_INTERP_PAIRDOT_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the model with the pairdot kernel",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_PAIRDOT_KERNEL"))


_INTERP_PAIRDOT_GROUPS_SCRIPT = kernel_test_script("pairdot", r"""

    for N, h, G, seed in ((3, 16, 2, 0), (6, 40, 3, 1), (1, 8, 1, 2), (5, 64, 2, 3)):
        g = torch.Generator().manual_seed(seed)
        a64 = [torch.randn(N, M, 2 * h * G, generator=g, dtype=torch.float64) for M in (1, 3, 5)]
        a64[0] = a64[0][:, 0]
        b64 = [torch.randn(h, generator=g, dtype=torch.float64) for _ in range(G)]
        for dt, tol in ((torch.float32, 2e-6), (torch.bfloat16, 2e-2)):
            a = [t.to(dt).requires_grad_(True) for t in a64]
            b = [t.float().requires_grad_(True) for t in b64]
            outs = K.pairdot_groups(*a, b)
            assert len(outs) == G and all(o.shape == (N, 3 * h) for o in outs)
            assert all(o.dtype == torch.promote_types(dt, torch.float32) for o in outs)
            # reference: each group's columns through pairdot_reference, in float64 of the inputs the kernel saw
            ra = [t.detach().double().requires_grad_(True) for t in a]
            rb = [t.detach().double().requires_grad_(True) for t in b]
            cols = [slice(i * 2 * h, (i + 1) * 2 * h) for i in range(G)]
            refs = [R.pairdot_reference(ra[0][:, c], ra[1][:, :, c], ra[2][:, :, c], rb[i]) for i, c in enumerate(cols)]
            e = max(rel(o, r) for o, r in zip(outs, refs))
            # backward with a gradient for every group, then with the first group's output unused (None)
            for used in (list(range(G)), list(range(1, G))):
                if not used:
                    continue
                ds = [torch.randn(N, 3 * h, generator=g, dtype=torch.float64) for _ in used]
                grads = torch.autograd.grad([outs[i] for i in used], a + b, [d.to(outs[0].dtype) for d in ds],
                                            retain_graph=True, allow_unused=True)
                rgrads = torch.autograd.grad([refs[i] for i in used], ra + rb, [d.to(outs[0].dtype).double() for d in ds],
                                             retain_graph=True, allow_unused=True)
                for x, y in zip(grads, rgrads):
                    if y is None:            # an unused group's bias
                        assert x is None or float(x.abs().max()) == 0.0
                        continue
                    assert x.dtype == (dt if x.dim() > 1 else torch.float32)
                    e = max(e, rel(x, y))
            assert e < tol, (dt, G, e)
            if dt == torch.float32:
                worst = max(worst, e)
                # double backward (a force loss) against the reference's
                ds = [torch.randn(N, 3 * h, generator=g, dtype=torch.float64) for _ in range(G)]
                W = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in a + b]
                gr = torch.autograd.grad(K.pairdot_groups(*a, b), a + b, [d.float() for d in ds], create_graph=True)
                gg = torch.autograd.grad(sum((x * w.float()).sum() for x, w in zip(gr, W)), a + b)
                refs = [R.pairdot_reference(ra[0][:, c], ra[1][:, :, c], ra[2][:, :, c], rb[i])
                        for i, c in enumerate(cols)]
                rr = torch.autograd.grad(refs, ra + rb, ds, create_graph=True)
                rgg = torch.autograd.grad(sum((x * w).sum() for x, w in zip(rr, W)), ra + rb)
                for x, y in zip(gg, rgg):
                    worst = max(worst, rel(x, y))
    print("WORST", worst)
    assert worst < 2e-6, worst
""")


def test_pairdot_groups_match_the_reference_under_interpreter():
    """``pairdot_groups`` (the query's and key's invariants from one projection tensor per degree): each group as
    ``pairdot_reference`` of its columns, forward, backward (every group's gradient written into one tensor, an
    unused group's columns zero) and double backward, float32 and bf16, G = 1, 2, 3."""
    run_under_triton_interpreter(_INTERP_PAIRDOT_GROUPS_SCRIPT, [KPKG], "the grouped query / key invariant kernels")


def test_pairdot_switch_and_shape_errors(monkeypatch):
    pytest.importorskip("triton")
    from importlib import import_module

    K = import_module(KPKG + ".pairdot_triton")
    # on by default since session 14 (timed on an H200)
    assert_env_switch(monkeypatch, K.pairdot_kernel_enabled, "E2F_PAIRDOT_KERNEL", default=True, bad="on")
    with pytest.raises(ValueError, match="expected a0"):
        K.pairdot(torch.zeros(2, 8), torch.zeros(2, 3, 8), torch.zeros(2, 4, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="share a dtype"):
        K.pairdot(torch.zeros(2, 8), torch.zeros(2, 3, 8, dtype=torch.float64), torch.zeros(2, 5, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="pairdot_groups: expected"):
        K.pairdot_groups(torch.zeros(2, 8), torch.zeros(2, 3, 8), torch.zeros(2, 5, 8), [torch.zeros(4)] * 2)
    with pytest.raises(ValueError, match="pairdot_groups: a0, a1, a2 must share"):
        K.pairdot_groups(torch.zeros(2, 8), torch.zeros(2, 3, 8, dtype=torch.float64), torch.zeros(2, 5, 8),
                         [torch.zeros(2)] * 2)
