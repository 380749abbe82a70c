"""The CG-contraction kernels (``kernels.cg_triton``, opt-in ``E2F_CG_KERNEL=1``) against their PyTorch reference
(``kernels.cg_reference``), under the Triton interpreter on the CPU: forward, backward and double backward, sizes
whose (atom, channel) count is not a multiple of the kernel's block; and the model's node_part with the kernel
against its einsum form.  The GPU timing is ``benchmarks/bench_cg.py``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import (assert_env_switch, kernel_test_script, kernels_package, node_kernel_model_script,
                     run_under_triton_interpreter)

KPKG = kernels_package()


def test_reference_matches_the_models_einsum_and_its_adjoint_is_the_transpose():
    """cg_contract_reference is node_part's einsum + split + cats; cg_adjoint_reference is its transpose:
    <contract(U), dT> = <U, adjoint(dT)> in float64."""
    from importlib import import_module

    R = import_module(KPKG + ".cg_reference")
    from openmm_e2former.model.so3 import first_order_cg

    cg = first_order_cg(torch.float64)
    g = torch.Generator().manual_seed(0)
    U = torch.randn(7, 3, 9, 5, generator=g, dtype=torch.float64)
    T0, T1, T2 = R.cg_contract_reference(U, cg)
    T = torch.einsum("krm,nkmc->nrc", cg, U)
    assert torch.equal(T0, T[:, 0]) and torch.equal(T1[:, :, 5:10], T[:, 4:7]) and torch.equal(T2[:, :, :5], T[:, 10:15])
    torch.testing.assert_close(R.cg_matrix(cg) @ U.reshape(7, 27, 5), T, rtol=1e-14, atol=1e-14)
    d = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in (T0, T1, T2)]
    lhs = sum((a * b).sum() for a, b in zip((T0, T1, T2), d))
    rhs = (U * R.cg_adjoint_reference(*d, cg)).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * float(lhs.abs() + 1)


_INTERP_CG_SCRIPT = kernel_test_script("cg", r"""
    from openmm_e2former.model.so3 import first_order_cg
    cg = first_order_cg(torch.float64)

    for N, C, seed in ((3, 16, 0), (5, 48, 1), (1, 64, 2), (11, 32, 3)):      # N C = 48, 240, 64, 352 pairs
        g = torch.Generator().manual_seed(seed)
        U64 = torch.randn(N, 3, 9, C, generator=g, dtype=torch.float64)
        U = U64.float().requires_grad_(True)
        out = K.cg_contract(U, cg)
        ref = R.cg_contract_reference(U64, cg)
        for a, b in zip(out, ref):
            assert a.shape == b.shape and a.dtype == torch.float32, (a.shape, b.shape)
            worst = max(worst, rel(a, b))
        d = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in ref]
        (dU,) = torch.autograd.grad(out, U, [x.float() for x in d], create_graph=True)
        worst = max(worst, rel(dU, R.cg_adjoint_reference(*d, cg)))
        # double backward: d/d(dT) <dU, W> = contract(W)
        W = torch.randn(U.shape, generator=g, dtype=torch.float64)
        dd = [x.float().requires_grad_(True) for x in d]
        (dU2,) = torch.autograd.grad(out, U, dd, create_graph=True)
        gg = torch.autograd.grad((dU2 * W.float()).sum(), dd)
        for a, b in zip(gg, R.cg_contract_reference(W, cg)):
            worst = max(worst, rel(a, b))
    empty = K.cg_contract(torch.zeros(0, 3, 9, 16), cg)
    assert [tuple(x.shape) for x in empty] == [(0, 16), (0, 3, 48), (0, 5, 32)]
    print("WORST", worst)
    assert worst < 2e-6, worst
""")


def test_cg_kernels_match_the_reference_under_interpreter():
    run_under_triton_interpreter(_INTERP_CG_SCRIPT, [KPKG], "the CG-contraction kernels")


_INTERP_CG_MODEL_SCRIPT = node_kernel_model_script("cg_triton", "cg_contract", "E2F_CG_KERNEL")


def test_model_node_part_with_the_cg_kernel_under_interpreter():
    """E2F_CG_KERNEL=1: the model's node_part takes the kernel (and only then), with the same energy and forces as
    the einsum to float32 rounding."""
    run_under_triton_interpreter(_INTERP_CG_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the model with the CG kernel", drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_CG_KERNEL"))


def test_cg_kernel_switch(monkeypatch):
    pytest.importorskip("triton")
    from importlib import import_module

    K = import_module(KPKG + ".cg_triton")
    # on by default since session 14 (timed on an H200)
    assert_env_switch(monkeypatch, K.cg_kernel_enabled, "E2F_CG_KERNEL", default=True)
    with pytest.raises(ValueError, match=r"\[N, 3, 9, C\]"):
        K.cg_contract(torch.zeros(2, 9, 3, 4), torch.zeros(3, 20, 9))


def test_node_kernel_usable_defaults(monkeypatch):
    """On by default only for CUDA tensors: a CPU tensor takes the kernel only under the Triton interpreter with the
    switch set to "1" explicitly (the interpreter tests of the other kernels keep the PyTorch form), and "0" turns
    it off everywhere."""
    pytest.importorskip("triton")
    from importlib import import_module

    S = import_module(KPKG + "._node_switch")
    x = torch.zeros(2, 3)
    monkeypatch.delenv("E2F_CG_KERNEL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert S.node_kernel_usable(x, "E2F_CG_KERNEL") is False
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert S.node_kernel_usable(x, "E2F_CG_KERNEL") is False
    monkeypatch.setenv("E2F_CG_KERNEL", "1")
    assert S.node_kernel_usable(x, "E2F_CG_KERNEL") is True
    monkeypatch.setenv("E2F_CG_KERNEL", "0")
    assert S.node_kernel_usable(x, "E2F_CG_KERNEL") is False
    monkeypatch.setenv("E2F_CG_KERNEL", "on")
    with pytest.raises(ValueError, match="E2F_CG_KERNEL='on'"):
        S.node_kernel_usable(x, "E2F_CG_KERNEL")
    # the CUDA branch (a stand-in: only .is_cuda is looked at): on by default, "0" off
    import types

    cuda_t = types.SimpleNamespace(is_cuda=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("E2F_CG_KERNEL", raising=False)
    assert S.node_kernel_usable(cuda_t, "E2F_CG_KERNEL") is True
    monkeypatch.setenv("E2F_CG_KERNEL", "0")
    assert S.node_kernel_usable(cuda_t, "E2F_CG_KERNEL") is False
