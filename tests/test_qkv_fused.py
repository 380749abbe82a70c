"""The attention's query / key / value projections as one consumer of each degree part (``Attention._qkv_fused``,
``E2F_QKV_FUSED``: ``layers.qkv_project`` + ``pairdot_triton.pairdot_groups``), session 17: the same numbers as the
three separate projections, and no gradient sums of the parts left to autograd."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from helpers import TRITON_MODEL_SCRIPT_HEAD, run_under_triton_interpreter


def test_qkv_project_matches_the_separate_projections_first_and_second_order():
    """``qkv_project`` against the plain per-degree products (float64): outputs, the summed input gradients of all
    four outputs, and a double backward (through its differentiable branch)."""
    from openmm_e2former.model.layers import qkv_project

    g = torch.Generator().manual_seed(0)
    N, C, P, Cv = 7, 12, 20, 10
    xs = [torch.randn(N, M, C, generator=g, dtype=torch.float64, requires_grad=True) for M in (1, 3, 5)]
    wp = [torch.randn(P, C, generator=g, dtype=torch.float64) for _ in range(3)]
    wv = torch.randn(3, Cv, C, generator=g, dtype=torch.float64)
    bv = torch.randn(Cv, generator=g, dtype=torch.float64)

    def plain(xs):
        p = [torch.einsum("nmc,pc->nmp", x, w) for x, w in zip(xs, wp)]
        v = torch.cat([torch.einsum("nmc,oc->nmo", x, wv[i]) for i, x in enumerate(xs)], dim=1)
        v = v + torch.cat([bv[None], torch.zeros(8, Cv, dtype=torch.float64)])[None]
        return p[0][:, 0], p[1], p[2], v

    got, want = qkv_project(xs, wp, wv, bv), plain(xs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    seeds = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    for create in (False, True):
        ga = torch.autograd.grad(got, xs, seeds, retain_graph=True, create_graph=create)
        gb = torch.autograd.grad(want, xs, seeds, retain_graph=True, create_graph=create)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # a second order term: d/d(seed) of <grad, W> is linear in the seeds; through the differentiable branch
    seeds = [s.requires_grad_(True) for s in seeds]
    W = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in xs]

    def second_order(out):
        gr = torch.autograd.grad(out, xs, seeds, create_graph=True, retain_graph=True)
        return torch.autograd.grad(sum((a * w).sum() for a, w in zip(gr, W)), seeds)

    for a, b in zip(second_order(got), second_order(want)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # only some outputs used (the others' gradients are zeros)
    ga = torch.autograd.grad(got[3].sum(), xs, retain_graph=True)
    gb = torch.autograd.grad(want[3].sum(), xs)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


_MODEL_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""
    from helpers import fused_route_on_reference
    from torch.profiler import profile, ProfilerActivity
    for key in ("E2F_RMSNORM_KERNEL", "E2F_PAIRDOT_KERNEL", "E2F_DEGREE_LINEAR"):
        os.environ[key] = "1"
    m, z, pos, cell, pbc = tiny_kernel_model(num_layers=2)
    fused_route_on_reference(m)
    calls = []
    real = E2.Attention._qkv_fused
    E2.Attention._qkv_fused = lambda self, xs: calls.append(len(xs)) or real(self, xs)

    def part_sums():
        # autograd's sums of the attention input's degree-part gradients ([N, 2l+1, C] adds in the backward)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            out = m.energy_and_forces(z, pos, cell, pbc)
        n = sum(1 for e in prof.events() if e.name in ("aten::add_", "aten::add") and e.input_shapes
                and len(e.input_shapes[0]) == 3 and e.input_shapes[0][0] == len(z)
                and e.input_shapes[0][1] in (1, 3, 5))
        return out, n

    out, sums = {}, {}
    worst = 0.0
    for mode, ckpt in (("fp32", False), ("fp32", "block"), ("bf16", False)):
        m.set_precision(mode)
        m.checkpoint_blocks = ckpt
        for flag in ("0", "1"):
            os.environ["E2F_QKV_FUSED"] = flag
            calls.clear()
            out[flag], sums[flag] = part_sums()
            # float32: every block's qkv fused (again in the recomputation under "block"); bf16 keeps its casts
            want = 0 if flag == "0" or mode == "bf16" else {False: 1, "block": 2}[ckpt] * len(m.blocks)
            assert len(calls) == want, (mode, ckpt, flag, calls)
        e0, e1 = float(out["0"][1]), float(out["1"][1])
        f0, f1 = out["0"][2], out["1"][2]
        err = float((f1 - f0).abs().max() / f0.abs().max())
        print(mode, ckpt, "energy", e0, e1, "forces", err, "part-gradient sums", sums["0"], sums["1"])
        assert abs(e1 - e0) <= 1e-6 * abs(e0), (mode, e0, e1)
        assert err < 1e-5, (mode, err)
        if mode == "fp32" and not ckpt:
            # three consumers of each part: two sums per part and block without, none with
            assert sums["0"] >= 2 * 3 * len(m.blocks) and sums["1"] == 0, sums
        worst = max(worst, err)
    # the switch off where it cannot run: weights that require grad (training), recomputed projections
    m.set_precision("fp32")
    m.checkpoint_blocks = False
    os.environ["E2F_QKV_FUSED"] = "1"
    xs = [torch.zeros(3, k, m.blocks[0].attn.value.weight.shape[2]) for k in (1, 3, 5)]
    attn = m.blocks[0].attn
    assert attn._qkv_fused_usable(xs)
    attn.query.recompute = True
    assert not attn._qkv_fused_usable(xs)
    attn.query.recompute = False
    attn.value.weight.requires_grad_(True)
    assert not attn._qkv_fused_usable(xs)
    attn.value.weight.requires_grad_(False)
    assert not attn._qkv_fused_usable([x.double() for x in xs])
    print("WORST", worst)
""")


def test_model_with_the_fused_qkv_under_interpreter():
    """E2F_QKV_FUSED=1: the blocks' queries, keys and values from ``_qkv_fused`` (float32; under "block"
    checkpointing in the recomputation too; not under bf16 autocast), the same energy and forces as the separate
    projections, and none of autograd's sums of the attention input's part gradients left in the backward."""
    pytest.importorskip("triton")
    run_under_triton_interpreter(_MODEL_SCRIPT, [Path(__file__).resolve().parent], "the fused q / k / v projection",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2F_QKV_FUSED", "E2F_RMSNORM_KERNEL",
                                           "E2F_PAIRDOT_KERNEL", "E2F_DEGREE_LINEAR"))
