"""The equivariant RMS norm kernels (``kernels.rmsnorm_triton``, opt-in ``E2F_RMSNORM_KERNEL=1``) against their
PyTorch reference (``kernels.rmsnorm_reference``) under the Triton interpreter on the CPU: both output layouts,
with and without the l = 0 extra, channel counts that are not powers of two, forward, backward (weight / bias /
extra gradients summed over atoms) and double backward; and the model with the kernel against its PyTorch form."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from helpers import assert_env_switch, kernels_package, node_kernel_model_script, run_under_triton_interpreter

KPKG = kernels_package()


def test_reference_is_the_models_norm():
    """rms_norm_reference is EquivariantRMSNorm (and, with extra, Block.attn_input's norm + system row)."""
    from importlib import import_module

    R = import_module(KPKG + ".rmsnorm_reference")
    from openmm_e2former.model.layers import EquivariantRMSNorm

    torch.manual_seed(0)
    norm = EquivariantRMSNorm(12).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(7, 9, 12, dtype=torch.float64)
    torch.testing.assert_close(R.rms_norm_reference(x, norm.weight, norm.bias, norm.eps), norm(x), rtol=1e-14, atol=1e-14)
    e = torch.randn(1, 12, dtype=torch.float64)
    want = norm(x) + torch.cat([e[:, None], torch.zeros(1, 8, 12, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(R.rms_norm_reference(x, norm.weight, norm.bias, norm.eps, e), want, rtol=1e-14,
                               atol=1e-14)


_INTERP_RMSNORM_SCRIPT = textwrap.dedent(r"""
    import os, sys
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import torch
    from importlib import import_module
    K = import_module(sys.argv[1] + ".rmsnorm_triton")
    R = import_module(sys.argv[1] + ".rmsnorm_reference")
    worst = 0.0

    def rel(a, b):
        a, b = a.detach(), b.detach()
        return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))

    for N, C, seed in ((4, 16, 0), (7, 24, 1), (1, 8, 2), (5, 64, 3)):
        for parts in (False, True):
            for with_extra in (False, True):
                g = torch.Generator().manual_seed(seed)
                x64 = 2.0 * torch.randn(N, 9, C, generator=g, dtype=torch.float64) + 0.5
                w64 = torch.randn(3, C, generator=g, dtype=torch.float64)
                b64 = torch.randn(C, generator=g, dtype=torch.float64)
                e64 = torch.randn(1, C, generator=g, dtype=torch.float64) if with_extra else None
                ins64 = [x64, w64, b64] + ([e64] if with_extra else [])
                ins = [t.float().requires_grad_(True) for t in ins64]
                ref_in = [t.clone().requires_grad_(True) for t in ins64]
                y = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, ins[3] if with_extra else None, parts=parts)
                yr = R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5, ref_in[3] if with_extra else None)
                if parts:
                    assert [tuple(t.shape) for t in y] == [(N, 1, C), (N, 3, C), (N, 5, C)]
                    assert all(t.is_contiguous() for t in y)
                    yf = torch.cat(y, dim=1)
                else:
                    assert tuple(y.shape) == (N, 9, C)
                    yf = y
                worst = max(worst, rel(yf, yr))
                dy = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
                dys = list(torch.split(dy.float(), [1, 3, 5], dim=1)) if parts else [dy.float()]
                outs = list(y) if parts else [y]
                grads = torch.autograd.grad(outs, ins, dys)
                rgrads = torch.autograd.grad(yr, ref_in, dy)
                for a, b in zip(grads, rgrads):
                    assert a.shape == b.shape
                    worst = max(worst, rel(a, b))
                # double backward (a force loss) against the reference's
                W = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ins]
                y2 = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, ins[3] if with_extra else None, parts=parts)
                gr = torch.autograd.grad(list(y2) if parts else [y2], ins, dys, create_graph=True)
                gg = torch.autograd.grad(sum((a * w.float()).sum() for a, w in zip(gr, W)), ins, allow_unused=True)
                yr2 = R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5, ref_in[3] if with_extra else None)
                rr = torch.autograd.grad(yr2, ref_in, dy, create_graph=True)
                rgg = torch.autograd.grad(sum((a * w).sum() for a, w in zip(rr, W)), ref_in, allow_unused=True)
                for a, b in zip(gg, rgg):               # (the bias enters no gradient: None on both sides)
                    assert (a is None) == (b is None)
                    if a is not None:
                        worst = max(worst, rel(a, b))
    empty = K.rms_norm(torch.zeros(0, 9, 16), torch.ones(3, 16), torch.zeros(16), 1e-5, parts=True)
    assert [tuple(t.shape) for t in empty] == [(0, 1, 16), (0, 3, 16), (0, 5, 16)]
    print("WORST", worst)
    assert worst < 5e-6, worst
""")


def test_rmsnorm_kernels_match_the_reference_under_interpreter():
    run_under_triton_interpreter(_INTERP_RMSNORM_SCRIPT, [KPKG], "the RMS norm kernels")


_INTERP_RMSNORM_MODEL_SCRIPT = node_kernel_model_script(
    "rmsnorm_triton", "rms_norm", "E2F_RMSNORM_KERNEL", record="(a[4] is not None, bool(a[5]))", checks="""
        # each block: attn_input (with the system row, one tensor) and norm_ffn (parts); the final norm (one tensor)
        L = len(m.blocks)
        assert sorted(set(calls)) == [(False, False), (False, True), (True, False)], calls
        assert calls.count((True, False)) >= L and calls.count((False, True)) >= L
    """)


def test_model_with_the_rmsnorm_kernel_under_interpreter():
    """E2F_RMSNORM_KERNEL=1: every norm of the model takes the kernel (attn_input with its system row, the FFN's
    pre-norm as parts, the final norm), with the same energy and forces as the PyTorch form to float32 rounding."""
    run_under_triton_interpreter(_INTERP_RMSNORM_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the model with the RMS norm kernel",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_RMSNORM_KERNEL"))


def test_rmsnorm_switch_and_input_errors(monkeypatch):
    pytest.importorskip("triton")
    from importlib import import_module

    K = import_module(KPKG + ".rmsnorm_triton")
    # on by default since session 14 (timed on an H200)
    assert_env_switch(monkeypatch, K.rmsnorm_kernel_enabled, "E2F_RMSNORM_KERNEL", default=True, bad="true")
    with pytest.raises(ValueError, match=r"x \[N, 9, C\]"):
        K.rms_norm(torch.zeros(2, 8, 4), torch.ones(3, 4), torch.zeros(4), 1e-5)
    with pytest.raises(ValueError, match="extra must have C = 4"):
        K.rms_norm(torch.zeros(2, 9, 4), torch.ones(3, 4), torch.zeros(4), 1e-5, torch.zeros(5))
    with pytest.raises(ValueError, match="float32"):
        K.rms_norm(torch.zeros(2, 9, 4, dtype=torch.float64), torch.ones(3, 4), torch.zeros(4), 1e-5)
