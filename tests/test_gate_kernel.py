"""The gated FFN's gate kernels (``kernels.gate_triton``, on by default on CUDA, ``E2F_GATE_KERNEL``) against their PyTorch
reference (``kernels.gate_reference``), under the Triton interpreter on the CPU: forward, backward and double
backward against float64, bf16 inputs (as under autocast) and bf16 outputs, sizes that are not multiples of the
kernel's tiles; and the model's FFN with the kernel against its PyTorch form."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from helpers import (assert_env_switch, kernel_test_script, kernels_package, node_kernel_model_script,
                     run_under_triton_interpreter)

KPKG = kernels_package()


def test_reference_is_the_models_gated_ffn():
    """gate_reference + lin2 is GatedFFN.parts (float64)."""
    from openmm_e2former.model.layers import GatedFFN
    from importlib import import_module

    R = import_module(KPKG + ".gate_reference")
    torch.manual_seed(0)
    ffn = GatedFFN(8).double()
    x = torch.randn(5, 9, 8, dtype=torch.float64)
    xs = list(torch.split(x, [1, 3, 5], dim=1))
    zs = ffn.lin1.parts(xs)
    g = ffn.gate(zs[0].reshape(5, 8))
    ys = R.gate_reference(g, zs[1], zs[2], ffn.c_silu, ffn.c_sigmoid)
    torch.testing.assert_close(torch.cat(ffn.lin2.parts(list(ys)), dim=1), ffn.parts(xs), rtol=1e-14, atol=1e-14)


_INTERP_GATE_SCRIPT = kernel_test_script("gate", r"""
    cs, cg = 1.6791767923989418, 1.8467055342154763

    for N, C, seed in ((3, 16, 0), (6, 48, 1), (1, 160, 2), (9, 32, 3)):
        g = torch.Generator().manual_seed(seed)
        ins64 = [3 * torch.randn(N, 3 * C, generator=g, dtype=torch.float64),
                 torch.randn(N, 3, C, generator=g, dtype=torch.float64),
                 torch.randn(N, 5, C, generator=g, dtype=torch.float64)]
        ins = [x.float().requires_grad_(True) for x in ins64]
        ys = K.gate(*ins, cs, cg)
        ref = R.gate_reference(*[x.clone().requires_grad_(True) for x in ins64], cs, cg)
        for a, b in zip(ys, ref):
            assert a.shape == b.shape and a.dtype == torch.float32
            worst = max(worst, rel(a, b))
        d64 = [torch.randn(y.shape, generator=g, dtype=torch.float64) for y in ref]
        gk = torch.autograd.grad(ys, ins, [d.float() for d in d64], create_graph=True)
        ins64r = [x.clone().requires_grad_(True) for x in ins64]
        gr = torch.autograd.grad(R.gate_reference(*ins64r, cs, cg), ins64r, d64, create_graph=True)
        for a, b in zip(gk, gr):
            worst = max(worst, rel(a, b))
        # double backward (through the reference): d/d(inputs) of <grads, W>
        W = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in ins64]
        ggk = torch.autograd.grad(sum((a * w.float()).sum() for a, w in zip(gk, W)), ins)
        ggr = torch.autograd.grad(sum((a * w).sum() for a, w in zip(gr, W)), ins64r)
        for a, b in zip(ggk, ggr):
            worst = max(worst, rel(a, b))
        # bf16 inputs (the GEMM outputs under autocast), bf16 outputs: within bf16 rounding of float64
        ib = [x.to(torch.bfloat16).requires_grad_(True) for x in ins64]
        yb = K.gate(*ib, cs, cg)
        assert all(y.dtype == torch.bfloat16 for y in yb)
        rb = R.gate_reference(*[x.double() for x in ib], cs, cg)
        for a, b in zip(yb, rb):
            assert rel(a, b) < 8e-3, rel(a, b)
        gb = torch.autograd.grad(yb, ib, [d.to(torch.bfloat16) for d in d64])
        ibr = [x.detach().double().requires_grad_(True) for x in ib]
        gbr = torch.autograd.grad(R.gate_reference(*ibr, cs, cg), ibr, [d.to(torch.bfloat16).double() for d in d64])
        for a, b in zip(gb, gbr):
            assert a.dtype == torch.bfloat16 and rel(a, b) < 8e-3, rel(a, b)
        # float32 inputs, bf16 outputs: the float32 result rounded once
        y16 = K.gate(*[x.detach() for x in ins], cs, cg, torch.bfloat16)
        y32 = K.gate(*[x.detach() for x in ins], cs, cg)
        for a, b in zip(y16, y32):
            assert torch.equal(a, b.to(torch.bfloat16))
    empty = K.gate(torch.zeros(0, 48), torch.zeros(0, 3, 16), torch.zeros(0, 5, 16), cs, cg)
    assert [tuple(y.shape) for y in empty] == [(0, 1, 16), (0, 3, 16), (0, 5, 16)]
    print("WORST", worst)
    assert worst < 2e-6, worst
""")


def test_gate_kernels_match_the_reference_under_interpreter():
    run_under_triton_interpreter(_INTERP_GATE_SCRIPT, [KPKG], "the gate kernels")


_INTERP_GATE_MODEL_SCRIPT = node_kernel_model_script("gate_triton", "gate", "E2F_GATE_KERNEL")


def test_model_ffn_with_the_gate_kernel_under_interpreter():
    """E2F_GATE_KERNEL=1: the FFN takes the kernel (and only then), with the same energy and forces as the PyTorch
    form to float32 rounding."""
    run_under_triton_interpreter(_INTERP_GATE_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the model with the gate kernel", drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_GATE_KERNEL"))


def test_gate_switch_and_shape_errors(monkeypatch):
    pytest.importorskip("triton")
    from importlib import import_module

    K = import_module(KPKG + ".gate_triton")
    S = import_module(KPKG + "._node_switch")
    assert_env_switch(monkeypatch, K.gate_kernel_enabled, "E2F_GATE_KERNEL", default=True)   # default on (session 15)
    import types
    cuda_t = types.SimpleNamespace(is_cuda=True)
    monkeypatch.delenv("E2F_GATE_KERNEL", raising=False)
    assert S.node_kernel_usable(cuda_t, "E2F_GATE_KERNEL") is True
    monkeypatch.setenv("E2F_GATE_KERNEL", "0")
    assert S.node_kernel_usable(cuda_t, "E2F_GATE_KERNEL") is False
    with pytest.raises(ValueError, match="expected g"):
        K.gate(torch.zeros(2, 12), torch.zeros(2, 3, 4), torch.zeros(2, 4, 4), 1.0, 1.0)
    with pytest.raises(ValueError, match="share a dtype"):
        K.gate(torch.zeros(2, 12), torch.zeros(2, 3, 4), torch.zeros(2, 5, 4, dtype=torch.bfloat16), 1.0, 1.0)
    with pytest.raises(ValueError, match="out_dtype"):
        K.gate(torch.zeros(2, 12), torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), 1.0, 1.0, torch.float16)


_INTERP_GATE_BF16_MODEL_SCRIPT = __import__("helpers").TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""
    m, z, pos, cell, pbc = tiny_kernel_model()
    ref = m.energy_and_forces(z, pos, cell, pbc)[2]            # float32
    m.set_precision("bf16")
    err = {}
    for flag in ("0", "1"):
        os.environ["E2F_GATE_KERNEL"] = flag
        f = m.energy_and_forces(z, pos, cell, pbc)[2]
        err[flag] = float((f - ref).abs().max() / ref.abs().max())
    print("bf16 force error against float32: PyTorch gates", err["0"], "kernel", err["1"])
    # not bit-identical in bf16 (the PyTorch form rounds after each op, the kernel once): as accurate or better
    assert err["1"] <= 1.05 * err["0"], err
    print("WORST", err["1"])
""")


def test_bf16_model_with_the_gate_kernel_is_as_accurate_under_interpreter():
    """In bf16 mode the kernel is not bit-identical to the PyTorch gates (which round to bf16 after every op; the
    kernel computes in float32 and rounds once): its forces are at least as close to the float32 model's."""
    run_under_triton_interpreter(_INTERP_GATE_BF16_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the bf16 model with the gate kernel",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_GATE_KERNEL"))
