"""The equivariant RMS norm kernels (``kernels.rmsnorm_triton``, on by default on CUDA, ``E2F_RMSNORM_KERNEL``)
against their PyTorch reference (``kernels.rmsnorm_reference``) under the Triton interpreter on the CPU: both output
layouts, with and without the l = 0 extra, channel counts that are not powers of two, forward, backward (weight /
bias / extra gradients summed over atoms) and double backward; the model with the kernel against its PyTorch form;
and q / k / v from the kernel's degree parts on the fused route."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from helpers import (TRITON_MODEL_SCRIPT_HEAD, assert_env_switch, kernel_test_script, kernels_package,
                     node_kernel_model_script, run_under_triton_interpreter)

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


#: the interpreter scripts' common start: the kernels (K) and reference (R) of the package named by argv[1], the
#: relative error, and seeded float64 inputs (x, weight, bias[, extra]) with their float32 / reference leaves
_INTERP_HEAD = kernel_test_script("rmsnorm", r"""
    import itertools

    def make_inputs(N, C, seed, with_extra):
        g = torch.Generator().manual_seed(seed)
        ins64 = [2.0 * torch.randn(N, 9, C, generator=g, dtype=torch.float64) + 0.5,
                 torch.randn(3, C, generator=g, dtype=torch.float64),
                 torch.randn(C, generator=g, dtype=torch.float64)]
        if with_extra:
            ins64.append(torch.randn(1, C, generator=g, dtype=torch.float64))
        return (g, [t.float().requires_grad_(True) for t in ins64],
                [t.clone().requires_grad_(True) for t in ins64])

    def residual_cases():
        # the passthrough's and the addend's cases: (N, C, parts, with_extra, dtype, g, ins, ref_in, extra) for two
        # sizes, the single norm and its degree parts, without and with the extra l = 0 input, and the residual
        # gradient's / addend's dtype float32 and bf16
        for (N, C, seed), parts, with_extra, dtype in itertools.product(
                ((4, 16, 0), (6, 24, 1)), (False, True), (False, True), (torch.float32, torch.bfloat16)):
            g, ins, ref_in = make_inputs(N, C, seed, with_extra)
            yield N, C, parts, with_extra, dtype, g, ins, ref_in, (ins[3] if with_extra else None)
""")

_INTERP_RMSNORM_SCRIPT = _INTERP_HEAD + textwrap.dedent(r"""

    for N, C, seed in ((4, 16, 0), (7, 24, 1), (1, 8, 2), (5, 64, 3)):
        for parts in (False, True):
            for with_extra in (False, True):
                g, ins, ref_in = make_inputs(N, C, seed, with_extra)
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
        # each block: attn_input (with the system row, one tensor) and norm_ffn (parts); the final norm (parts: the
        # energy reads its l = 0 row only, session 17)
        L = len(m.blocks)
        assert sorted(set(calls)) == [(False, True), (True, False)], calls
        assert calls.count((True, False)) >= L and calls.count((False, True)) >= L + 1
        # the energy reads only the final norm's l = 0 row: its backward reads no l > 0 gradient (HAS_DY12 off once
        # per evaluation, every other norm reads all rows), and node_features(l0_only=True) is that row, [N, 1, C]
        dy12 = []
        real_bwd = rmsnorm_triton._launch_bwd
        def spy_bwd(*a, **k):
            dy12.append(a[7] if len(a) > 7 else k.get("has_dy12", True))
            return real_bwd(*a, **k)
        rmsnorm_triton._launch_bwd = spy_bwd
        m.energy_and_forces(z, pos, cell, pbc)
        assert dy12.count(False) == 1 and dy12.count(True) == 2 * L, dy12
        g = m.build_graph(pos, cell, pbc, True)
        x0 = m.node_features(z, g, 0, 1, l0_only=True)
        x = m.node_features(z, g, 0, 1)
        assert x0.shape == (len(z), 1, x.shape[2]) and x.shape == (len(z), 9, x.shape[2]), (x0.shape, x.shape)
        assert torch.allclose(x0[:, 0], x[:, 0], rtol=0, atol=1e-6)
    """)


def test_model_with_the_rmsnorm_kernel_under_interpreter():
    """E2F_RMSNORM_KERNEL=1: every norm of the model takes the kernel (attn_input with its system row, the FFN's
    pre-norm as parts, the final norm), with the same energy and forces as the PyTorch form to float32 rounding; the
    energy reads only the final norm's l = 0 row (``node_features(..., l0_only=True)``, [N, 1, C], its backward
    reading no l > 0 gradient: no [N, 9, C] gradient made of a row selection)."""
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


_INTERP_QKV_PARTS_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""
    from openmm_e2former.kernels import rmsnorm_triton
    from helpers import fused_route_on_reference
    m, z, pos, cell, pbc = tiny_kernel_model()
    fused_route_on_reference(m)
    calls = []
    real = rmsnorm_triton.rms_norm
    rmsnorm_triton.rms_norm = lambda *a, **k: calls.append((a[4] is not None, bool(a[5]))) or real(*a, **k)
    shared = []          # per call of gemm_input_parts: whether each consumer got the parts themselves, contiguous
    real_gip = E2.gemm_input_parts
    def spy_gip(xs, n):
        res = real_gip(xs, n)
        shared.append(all(r[i] is xs[i] and xs[i].is_contiguous() for r in res for i in range(3)))
        return res
    E2.gemm_input_parts = spy_gip
    out = {}
    for mode in ("fp32", "bf16"):
        m.set_precision(mode)
        for flag in ("0", "1"):
            os.environ["E2F_RMSNORM_KERNEL"] = flag
            calls.clear()
            out[mode, flag] = m.energy_and_forces(z, pos, cell, pbc)
            # the attention input's norm writes contiguous degree parts with the system row added, and in float32
            # the three projections read those very tensors (no copies)
            assert (calls.count((True, True)) == len(m.blocks)) == (flag == "1"), (mode, flag, calls)
            assert len(shared) == len(m.blocks), shared
            if mode == "fp32":
                assert all(shared) == (flag == "1"), (flag, shared)     # a split's views are copied once
            shared.clear()
    worst = 0.0
    for mode, tol in (("fp32", 1e-5), ("bf16", 2e-2)):
        e0, f0 = out[mode, "0"][1], out[mode, "0"][2]
        e1, f1 = out[mode, "1"][1], out[mode, "1"][2]
        err = float((f1 - f0).abs().max() / f0.abs().max())
        print(mode, "energy", float(e0), float(e1), "forces", err)
        assert abs(float(e1) - float(e0)) <= 1e-5 * abs(float(e0)) + (0 if mode == "fp32" else 1e-3), (mode, e0, e1)
        assert err < tol, (mode, err)
        if mode == "fp32":
            worst = err
    print("WORST", worst)
""")


def test_qkv_from_the_norm_kernels_degree_parts_under_interpreter():
    """On the fused route the attention input's norm writes its three degree parts as contiguous tensors, with the
    system row added (``Block.attn_input_parts``), and q / k / v read them without copies (``Attention.qkv``,
    ``gemm_input_parts``): the same energy and forces as the PyTorch norm's split, float32 to float32 rounding and
    bf16 (shared casts per part) to bf16 rounding."""
    run_under_triton_interpreter(_INTERP_QKV_PARTS_SCRIPT, [Path(__file__).resolve().parent],
                                 "q / k / v from the norm kernel's parts",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_RMSNORM_KERNEL"))


_INTERP_PASSTHROUGH_SCRIPT = _INTERP_HEAD + textwrap.dedent(r"""

    for N, C, parts, with_extra, res_dtype, g, ins, ref_in, extra in residual_cases():
        out = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, extra, parts=parts, passthrough=True)
        xp, ys = out[0], list(out[1:])
        # the passthrough is x (a view of it, with the norm's grad_fn)
        assert xp.data_ptr() == ins[0].data_ptr() and torch.equal(xp, ins[0]) and xp.grad_fn is not None
        assert len(ys) == (3 if parts else 1)
        yr = R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5, ref_in[3] if with_extra else None)
        worst = max(worst, rel(torch.cat(ys, dim=1), yr))
        # the residual's gradient (float32, or bf16 from a bf16 consumer) and the norm's, summed in dx
        G = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
        Gr = G.to(res_dtype)
        dy = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
        dys = list(torch.split(dy.float(), [1, 3, 5], dim=1)) if parts else [dy.float()]
        grads = torch.autograd.grad([xp] + ys, ins, [Gr] + dys)
        rgrads = list(torch.autograd.grad(yr, ref_in, dy))
        rgrads[0] = rgrads[0] + Gr.double()
        for a, b in zip(grads, rgrads):
            assert a.shape == b.shape and a.dtype == torch.float32
            worst = max(worst, rel(a, b))
        # double backward (a force loss) through the reference, with the passthrough's gradient in dx
        out2 = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, extra, parts=parts, passthrough=True)
        gr = torch.autograd.grad(list(out2), ins, [Gr] + dys, create_graph=True)
        W = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ins]
        gg = torch.autograd.grad(sum((a * w.float()).sum() for a, w in zip(gr, W)), ins,
                                 allow_unused=True)
        rr = torch.autograd.grad(R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5,
                                                      ref_in[3] if with_extra else None),
                                 ref_in, dy, create_graph=True)
        rgg = torch.autograd.grad(sum((a * w).sum() for a, w in zip(rr, W)), ref_in, allow_unused=True)
        for a, b in zip(gg, rgg):
            assert (a is None) == (b is None)
            if a is not None:
                worst = max(worst, rel(a, b))
    print("WORST", worst)
    assert worst < 5e-6, worst
""")


def test_rmsnorm_passthrough_sums_the_residual_gradient_under_interpreter():
    """``rms_norm(passthrough=True)``: x comes back first (a view, with the norm's grad_fn), the parts as without it,
    and the backward kernel writes dx = the norm's gradient + the passthrough's (float32 or bf16), first and second
    order, against the reference plus the residual gradient."""
    run_under_triton_interpreter(_INTERP_PASSTHROUGH_SCRIPT, [KPKG], "the RMS norm passthrough")


_INTERP_ADDEND_SCRIPT = _INTERP_HEAD + textwrap.dedent(r"""

    for N, C, parts, with_extra, add_dtype, g, ins, ref_in, extra in residual_cases():
        a64 = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
        a = a64.to(add_dtype).requires_grad_(True)
        ar = a.detach().double().requires_grad_(True)     # the addend as the kernel sees it
        out = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, extra, parts=parts, passthrough=True, addend=a)
        xs, ys = out[0], list(out[1:])
        # the sum first: float32, the bits of torch's x + a
        assert xs.dtype == torch.float32 and torch.equal(xs, ins[0] + a) and xs.grad_fn is not None
        xr = ref_in[0] + ar
        ex = ref_in[3] if with_extra else None
        yr = R.rms_norm_reference(xr, ref_in[1], ref_in[2], 1e-5, ex)
        worst = max(worst, rel(torch.cat(ys, dim=1), yr))
        # first order: the sum's own gradient (the residual stream's) plus the norm's, for x and a alike
        G = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
        dy = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
        dys = list(torch.split(dy.float(), [1, 3, 5], dim=1)) if parts else [dy.float()]
        targets = ins + [a]
        grads = torch.autograd.grad([xs] + ys, targets, [G.float()] + dys)
        rt = ref_in + [ar]
        rgrads = torch.autograd.grad([xr, yr], rt, [G, dy])
        for u, v in zip(grads, rgrads):
            assert u.shape == v.shape
            assert u.dtype == (add_dtype if u is grads[-1] else torch.float32)
            worst = max(worst, rel(u, v) if u.dtype == torch.float32 else 0.0)
            if u.dtype == torch.bfloat16:
                assert rel(u, v) < 1e-2
        # double backward (a force loss): the second-order terms reach x and a through the sum
        out2 = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, extra, parts=parts, passthrough=True, addend=a)
        gr = torch.autograd.grad(list(out2), targets, [G.float()] + dys, create_graph=True)
        W = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in targets]
        gg = torch.autograd.grad(sum((u * w.to(u.dtype)).float().sum() for u, w in zip(gr, W)), targets,
                                 allow_unused=True)
        rr = torch.autograd.grad([xr, R.rms_norm_reference(xr, ref_in[1], ref_in[2], 1e-5, ex)], rt,
                                 [G, dy], create_graph=True)
        rgg = torch.autograd.grad(sum((u * w.to(u.dtype).double()).sum() for u, w in zip(rr, W)), rt,
                                  allow_unused=True)
        for u, v, t in zip(gg, rgg, targets):
            # (a target the second-order terms do not reach: None on one side, zeros on the other)
            u = torch.zeros_like(t) if u is None else u
            v = torch.zeros_like(t, dtype=torch.float64) if v is None else v
            e2 = float((u.double() - v).abs().max()) if float(v.abs().max()) == 0 else rel(u, v)
            if add_dtype == torch.float32:
                worst = max(worst, e2)
            else:            # the bf16 addend's own gradient is rounded to bf16
                assert e2 < 2e-2, e2
    print("WORST", worst)
    assert worst < 5e-6, worst
""")


def test_rmsnorm_addend_sums_the_residual_under_interpreter():
    """``rms_norm(passthrough=True, addend=a)``: the norm of x + a with the sum first (the bits of torch's x + a,
    float32 for a float32 or bf16 addend), and one gradient for x and a (the sum's plus the norm's), first and second
    order, against the reference of x + a."""
    run_under_triton_interpreter(_INTERP_ADDEND_SCRIPT, [KPKG], "the RMS norm's residual addend")


def _model_norm_spy_script(record: str, body: str) -> str:
    """An interpreter model script: the two-block tiny model on the fused route's code path with the RMS-norm
    kernel on, each ``rms_norm`` call appending ``record`` (an expression of its keyword arguments ``k``) to
    ``calls``; then ``body``."""
    return TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""
        from openmm_e2former.kernels import rmsnorm_triton
        from helpers import fused_route_on_reference
        m, z, pos, cell, pbc = tiny_kernel_model(num_layers=2)
        fused_route_on_reference(m)
        os.environ["E2F_RMSNORM_KERNEL"] = "1"
        calls = []
        real = rmsnorm_triton.rms_norm
        rmsnorm_triton.rms_norm = lambda *a, **k: calls.append(@RECORD@) or real(*a, **k)
    """).replace("@RECORD@", record) + textwrap.dedent(body)


_INTERP_PASSTHROUGH_MODEL_SCRIPT = _model_norm_spy_script('bool(k.get("passthrough"))', r"""
    out = {}
    for mode, ckpt in (("fp32", False), ("bf16", False), ("fp32", "block")):
        m.set_precision(mode)
        m.checkpoint_blocks = ckpt
        for flag in ("0", "1"):
            os.environ["E2F_RMS_RESIDUAL"] = flag
            calls.clear()
            out[(mode, ckpt), flag] = m.energy_and_forces(z, pos, cell, pbc)
            # per block: the attention norm and the FFN norm take the passthrough with the switch on (and the
            # blocks' recomputation under checkpointing again)
            want = {False: 2, "block": 4}[ckpt] * len(m.blocks) if flag == "1" else 0
            assert calls.count(True) == want, (mode, ckpt, flag, calls)
    worst = 0.0
    for mode, tol in ((("fp32", False), 1e-6), (("bf16", False), 1e-6), (("fp32", "block"), 1e-6)):
        e0, f0 = out[mode, "0"][1], out[mode, "0"][2]
        e1, f1 = out[mode, "1"][1], out[mode, "1"][2]
        err = float((f1 - f0).abs().max() / f0.abs().max())
        print(mode, "energy", float(e0), float(e1), "forces", err)
        # the same sums in the same order (dx_norm + the residual's gradient): the same numbers
        assert float(e1) == float(e0), (mode, e0, e1)
        assert err < tol, (mode, err)
        worst = max(worst, err)
    print("WORST", worst)
""")


def test_model_with_the_residual_passthrough_under_interpreter():
    """E2F_RMS_RESIDUAL=1 (the default): each block's residual stream goes through its two norms' passthrough (attention
    norm with the system row, FFN norm), on the fused route's code path; the same energy and forces as without,
    float32 and bf16, and with "block" checkpointing (the recomputed blocks take it too)."""
    run_under_triton_interpreter(_INTERP_PASSTHROUGH_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the residual passthrough in the model",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_RMSNORM_KERNEL", "E2F_RMS_RESIDUAL"))


_INTERP_ADDEND_MODEL_SCRIPT = _model_norm_spy_script('k.get("addend") is not None', r"""
    from torch.profiler import profile, ProfilerActivity
    L = len(m.blocks)
    out = {}
    for mode, ckpt in (("fp32", False), ("bf16", False), ("fp32", "block")):
        m.set_precision(mode)
        m.checkpoint_blocks = ckpt
        for flag in ("0", "1"):
            os.environ["E2F_RMS_ADD"] = flag
            calls.clear()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                out[(mode, ckpt), flag] = m.energy_and_forces(z, pos, cell, pbc)
            sums = sum(1 for e in prof.events() if e.name == "aten::add" and e.input_shapes
                       and e.input_shapes[0] == [len(z), 9, m.config.channels])
            # the plain loop (float32, no checkpointing): every residual sum in a norm kernel but the last one, before
            # the final norm; the Python loop (bf16, checkpointing): the FFN norm's (and again in the recomputation)
            want = 0 if flag == "0" else {("fp32", False): 2 * L - 1, ("bf16", False): L, ("fp32", "block"): 2 * L}[
                (mode, ckpt)]
            assert calls.count(True) == want, (mode, ckpt, flag, calls)
            if (mode, ckpt) == ("fp32", False):
                assert sums == (2 * L if flag == "0" else 1), (flag, sums)
    worst = 0.0
    for key in (("fp32", False), ("bf16", False), ("fp32", "block")):
        e0, f0 = out[key, "0"][1], out[key, "0"][2]
        e1, f1 = out[key, "1"][1], out[key, "1"][2]
        err = float((f1 - f0).abs().max() / f0.abs().max())
        print(key, "energy", float(e0), float(e1), "forces", err)
        assert abs(float(e1) - float(e0)) <= 1e-6 * abs(float(e0)), (key, e0, e1)
        assert err < 1e-5, (key, err)
        worst = max(worst, err)
    # the blocks keep neither the attention's U [N, 3, 9, C] nor its output [N, 9, C] alive while their FFN runs
    # (neither is saved for the backward): not the plain loop's (forward_pending; session 17's refactor kept U: +0.5
    # GiB at the V1.5 20k graphed peak) nor the Python loop's (Block.forward, bf16: node_part(x, U) held U as its
    # caller's argument, and the attention output was a local through the FFN)
    import weakref
    m.checkpoint_blocks = False
    os.environ["E2F_RMS_ADD"] = "1"
    alive, last = [], {}
    for b in m.blocks:
        def U_spy(*a, _real=b.attn.fused_U_graph):
            U = _real(*a)
            last["U"] = weakref.ref(U)
            return U
        def out_spy(*a, _real=b.attn.node_part):
            y = _real(*a)
            last["y"] = weakref.ref(y)
            return y
        def ffn_spy(parts, _real=b.ffn.parts):
            alive.append((last.pop("U")() is not None, last.pop("y")() is not None))
            return _real(parts)
        b.attn.fused_U_graph, b.attn.node_part, b.ffn.parts = U_spy, out_spy, ffn_spy
    for mode, adds in (("fp32", 2 * L - 1), ("bf16", L)):
        m.set_precision(mode)
        calls.clear()
        alive.clear()
        m.energy_and_forces(z, pos, cell, pbc)
        assert calls.count(True) == adds and alive == [(False, False)] * L, (mode, calls, alive)
    m.set_precision("fp32")
    for b in m.blocks:
        del b.attn.fused_U_graph, b.attn.node_part, b.ffn.parts
    # a force loss (training: weights that require grad, second order), the weights' gradients with the sums in the
    # norm kernels against the separate adds
    m.set_precision("fp32")
    m.checkpoint_blocks = False
    m.requires_grad_(True)
    grads = {}
    for flag in ("0", "1"):
        os.environ["E2F_RMS_ADD"] = flag
        calls.clear()
        p = pos.clone().requires_grad_(True)
        e = m.energy_terms(z, p, cell, pbc)[0].sum()
        f = -torch.autograd.grad(e, p, create_graph=True)[0]
        grads[flag] = torch.autograd.grad((f ** 2).sum() + e, [q for q in m.parameters()], allow_unused=True)
        assert calls.count(True) == (2 * L - 1 if flag == "1" else 0), calls
    for a, b in zip(grads["0"], grads["1"]):
        if a is None or b is None:
            assert a is None and b is None
            continue
        err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
        worst = max(worst, err)
    print("WORST", worst)
    assert worst < 1e-4, worst
""")


def test_model_with_the_residual_sums_in_the_norm_kernels_under_interpreter():
    """E2F_RMS_ADD=1 (the default): the residual sums before the norms run inside the norm kernels (the plain block
    loop: all but the last, each block handing its FFN output to the next; bf16 and checkpointed blocks: the FFN
    norm's), with the same energy and forces as the separate adds, and the same weight gradients of a force loss
    (second order, through the kernels' double-backward path)."""
    run_under_triton_interpreter(_INTERP_ADDEND_MODEL_SCRIPT, [Path(__file__).resolve().parent],
                                 "the residual sums in the norm kernels",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_RMSNORM_KERNEL", "E2F_RMS_RESIDUAL",
                                           "E2F_RMS_ADD"))


_INTERP_ROW0_SCRIPT = _INTERP_HEAD + textwrap.dedent(r"""

    for N, C, seed in ((4, 16, 0), (6, 24, 1)):
        for passthrough in (False, True):
            g, ins, ref_in = make_inputs(N, C, seed, False)
            out = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, None, parts=True, passthrough=passthrough)
            y0 = out[1] if passthrough else out[0]
            # only y0 used (the final norm before the energy): the other outputs' gradients never made
            dy0 = torch.randn(N, 1, C, generator=g, dtype=torch.float64)
            grads = torch.autograd.grad(y0, ins, dy0.float())
            yr = R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5)
            rgrads = torch.autograd.grad(yr[:, :1], ref_in, dy0)
            for u, v in zip(grads, rgrads):
                worst = max(worst, rel(u, v))
            # and y0 with the passthrough's gradient only, or y1 alone
            if passthrough:
                G = torch.randn(N, 9, C, generator=g, dtype=torch.float64)
                out = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, None, parts=True, passthrough=True)
                gx = torch.autograd.grad(out[0], ins[0], G.float())[0]
                worst = max(worst, rel(gx, G))
            out = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, None, parts=True)
            dy1 = torch.randn(N, 3, C, generator=g, dtype=torch.float64)
            grads = torch.autograd.grad(out[1], ins, dy1.float())
            rgrads = torch.autograd.grad(R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5)[:, 1:4], ref_in,
                                         dy1)
            for u, v in zip(grads, rgrads):
                worst = max(worst, rel(u, v))
            # second order with y0 alone (a force loss through the final norm)
            out = K.rms_norm(ins[0], ins[1], ins[2], 1e-5, None, parts=True)
            gr = torch.autograd.grad(out[0], ins, dy0.float(), create_graph=True)
            W = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ins]
            gg = torch.autograd.grad(sum((u * w.float()).sum() for u, w in zip(gr, W)), ins, allow_unused=True)
            rr = torch.autograd.grad(R.rms_norm_reference(ref_in[0], ref_in[1], ref_in[2], 1e-5)[:, :1], ref_in, dy0,
                                     create_graph=True)
            rgg = torch.autograd.grad(sum((u * w).sum() for u, w in zip(rr, W)), ref_in, allow_unused=True)
            for u, v, t in zip(gg, rgg, ins):
                # (a target the second-order terms do not reach: None on one side, zeros on the other)
                u = torch.zeros_like(t) if u is None else u
                v = torch.zeros_like(t, dtype=torch.float64) if v is None else v
                worst = max(worst, float((u.double() - v).abs().max()) if float(v.abs().max()) == 0 else rel(u, v))
    # no atoms: no program runs, and the weight / bias gradients are zeros (not the sums buffer's garbage)
    x0 = torch.zeros(0, 9, 16, requires_grad=True)
    w0, b0 = torch.randn(3, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    gw, gb = torch.autograd.grad(K.rms_norm(x0, w0, b0, 1e-5).sum(), [w0, b0])
    assert float(gw.abs().max()) == 0.0 and float(gb.abs().max()) == 0.0, (gw, gb)
    print("WORST", worst)
    assert worst < 5e-6, worst
""")


def test_rmsnorm_gradients_of_some_outputs_only_under_interpreter():
    """Outputs whose gradients never come (``set_materialize_grads(False)``): y0 alone (the final norm's l = 0 row,
    the backward kernel reading no l > 0 gradient), the passthrough alone, y1 alone; first and second order against
    the reference."""
    run_under_triton_interpreter(_INTERP_ROW0_SCRIPT, [KPKG], "the RMS norm with some outputs' gradients")


def test_residual_passthrough_switch(monkeypatch):
    pytest.importorskip("triton")
    from importlib import import_module

    K = import_module(KPKG + ".rmsnorm_triton")
    # on by default since session 17 (timed on an H200: benchmarks/results/graphed_rms_res_*_s17_h200.json)
    assert_env_switch(monkeypatch, K.residual_passthrough_enabled, "E2F_RMS_RESIDUAL", default=True, bad="on")
    # the residual sums in the norm kernels: on by default (session 17)
    assert_env_switch(monkeypatch, K.residual_add_enabled, "E2F_RMS_ADD", default=True, bad="yes")
