"""Radial tables of the edge MLPs (``E2FormerV2.set_radial_tables``, ``model/radial_table.py``; experimental,
inference only): each edge MLP sees an edge only through (d, Z_i, Z_j), so a cubic Hermite table per pair of
elements reproduces it up to an interpolation error far below float32 rounding."""
from __future__ import annotations

import copy
import pickle
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import (TRITON_MODEL_SCRIPT_HEAD, case as load_case, count_calls, model as fixture_model,
                     run_under_triton_interpreter, water_box)

from openmm_e2former.model.radial_table import RadialTable

REPO = Path(__file__).resolve().parents[1]


def _frozen(variant="tiny_qk", dtype="float64"):
    m = fixture_model(variant, dtype=dtype)
    m.requires_grad_(False)
    return m


def _ethanol(dtype=torch.float64):
    c = load_case("tiny_qk", "ethanol")
    return torch.tensor(c["atomic_numbers"]), torch.tensor(c["positions"], dtype=dtype)


def test_table_matches_the_mlp_and_its_slope():
    """Per edge: the table against the attention's edge MLP (values and d-derivatives, float64) on random
    distances for every pair of ethanol's elements, including both ends of the grid."""
    m = _frozen()
    a = m.blocks[0].attn
    offsets = m.rbf_offsets

    def fn(mod, d, zi, zj):
        return mod.radial_fn(offsets, m.rbf_coeff, d, zi, zj)

    tab = RadialTable(a, fn, m.cutoff, 2048, torch.float64)
    z, _ = _ethanol()
    tab.ensure(z)
    assert tab.elements == [1, 6, 8] and tab.builds == 1
    gen = torch.Generator().manual_seed(0)
    n = 3000
    d = torch.cat([torch.rand(n - 2, generator=gen, dtype=torch.float64) * m.cutoff,
                   torch.tensor([0.0, m.cutoff], dtype=torch.float64)]).requires_grad_(True)
    zi = torch.tensor([1, 6, 8])[torch.randint(0, 3, (n,), generator=gen)]
    zj = torch.tensor([1, 6, 8])[torch.randint(0, 3, (n,), generator=gen)]
    got = tab(d, zi, zj)
    want = fn(a, d, zi, zj)
    assert float((got - want).abs().max().detach()) <= 1e-7 * float(want.abs().max().detach())
    G = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    (dg,) = torch.autograd.grad((got * G).sum(), d)
    (dw,) = torch.autograd.grad((want * G).sum(), d)
    assert float((dg - dw).abs().max()) <= 1e-5 * float(dw.abs().max())
    tab.ensure(z)                    # nothing new: no rebuild
    assert tab.builds == 1


@pytest.mark.parametrize("variant", ["tiny_qk", "tiny_qkdot", "tiny_direct"])
def test_model_with_tables_matches_exact(variant):
    """Energy and forces with every edge MLP read from tables (the attention's of each block and the
    edge-degree embedding's) against the exact model, float64 and float32; the scripted model keeps the exact
    MLPs; switching the tables off restores the exact function."""
    m = _frozen(variant)
    z, pos = _ethanol()
    e0, _, f0 = m.energy_and_forces(z, pos)
    m.set_radial_tables(True)
    assert m.radial_tables
    e1, _, f1 = m.energy_and_forces(z, pos)
    assert abs(float(e1 - e0)) <= 1e-9 * abs(float(e0))
    assert float((f1 - f0).abs().max()) <= 1e-6 * float(f0.abs().max())
    assert m.edge_degree.__dict__["_radial_table"].builds == 1
    assert all(b.attn.__dict__["_radial_table"].builds == 1 for b in m.blocks)
    s = torch.jit.script(m)
    assert float(s(z, pos, None, None)) == pytest.approx(float(m.forward(z, pos, None, None)), rel=1e-9)
    # a model with tables pickles and deep-copies: the copy sets its tables up again and rebuilds them, identically
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert c.radial_tables and c.edge_degree.__dict__["_radial_table"].builds == 0
        ec, _, fc = c.energy_and_forces(z, pos)
        assert float(ec) == float(e1) and torch.equal(fc, f1)
    m.set_radial_tables(False)
    assert not m.radial_tables
    e2, _, f2 = m.energy_and_forces(z, pos)
    assert float(e2) == float(e0) and torch.equal(f2, f0)
    # float32: the tables are built in float64 and stored as per-interval cubic coefficients, so they add no
    # error beyond float32 rounding.  Through the whole network a different float32 rounding pattern moves the
    # forces by a multiple of the exact float32 model's own distance to float64 (the random tiny models amplify
    # 1e-7 changes of the first features ~100x): within 10x of it here (a wrong table or slope would be 1e-3+);
    # per component, test_edge_degree_table_is_as_accurate_as_exact_float32, within 3x
    m32 = _frozen(variant, "float32")
    z32, pos32 = z, pos.float()
    _, _, g0 = m32.energy_and_forces(z32, pos32)
    m32.set_radial_tables(True)
    _, _, g1 = m32.energy_and_forces(z32, pos32)
    scale = float(f0.abs().max())
    noise = float((g0.double() - f0).abs().max()) / scale
    assert float((g1.double() - f0).abs().max()) / scale <= max(10 * noise, 1e-6)


def test_edge_degree_table_is_as_accurate_as_exact_float32():
    """Per component, float32: the edge-degree embedding and its position gradient with the table against
    float64 are within 3x the exact float32 embedding's own error (measured: 0.7x and 0.9x)."""
    ze, pe = _ethanol()
    m64 = _frozen()
    m32 = _frozen(dtype="float32")
    G = torch.randn(len(ze), 9, m32.config.channels, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def h_and_grad(model, p):
        p = p.clone().requires_grad_(True)
        g = model.build_graph(p, None, None)
        h = model.edge_degree(ze, g)
        (gr,) = torch.autograd.grad((h * G.to(h.dtype)).sum(), p)
        return h.detach().double(), gr.double()

    h64, g64 = h_and_grad(m64, pe)
    h32, g32 = h_and_grad(m32, pe.float())
    m32.set_radial_tables(True)
    ht, gt = h_and_grad(m32, pe.float())
    err = lambda a, b: float((a - b).abs().max() / b.abs().max())
    assert err(ht, h64) <= 3 * err(h32, h64)
    assert err(gt, g64) <= 3 * err(g32, g64)


def test_tables_grow_with_new_elements_and_refuse_training():
    m = _frozen()
    m.set_radial_tables(True)
    z, pos, cell = (torch.tensor(x) for x in water_box(2, 3.1, seed=0))
    m.energy_and_forces(z, pos, cell, torch.tensor([True] * 3))
    tab = m.edge_degree.__dict__["_radial_table"]
    assert tab.elements == [1, 8] and tab.builds == 1
    ze, pe = _ethanol()
    e_tab, _, f_tab = m.energy_and_forces(ze, pe)           # carbon is new: one rebuild over H, C, O
    assert tab.elements == [1, 6, 8] and tab.builds == 2
    m.set_radial_tables(False)
    e_ex, _, f_ex = m.energy_and_forces(ze, pe)
    assert float((f_tab - f_ex).abs().max()) <= 1e-6 * float(f_ex.abs().max())
    # training: parameters that require grad are refused, at build and at use
    m2 = copy.deepcopy(m)
    m2.set_radial_tables(False)
    m2.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen weights"):
        m2.set_radial_tables(True)
    m.set_radial_tables(True)
    m.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference with frozen weights"):
        m.energy_and_forces(ze, pe)


_INTERP_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""

    m, z, pos, cell, pbc = tiny_kernel_model()
    from openmm_e2former.kernels import attention_triton_v2 as V2

    def spy(module, name, record):      # wrap module.name: each call appends record(args, kwargs) to the log
        log, real = [], getattr(module, name)
        def wrapper(*a, **kw):
            log.append(record(a, kw))
            return real(*a, **kw)
        setattr(module, name, wrapper)
        return log

    has_table = lambda a, kw: kw.get("table") is not None
    seen = spy(K, "fused_attention", has_table)
    seen_ed = spy(K, "fused_edge_degree", has_table)
    # (kind, table) of each v2 attention launch
    launched = spy(V2, "launch_config",
                   lambda a, kw: (a[4] if len(a) > 4 else kw.get("kind", "fwd"), kw.get("table", False)))

    def run(mode, fused):
        E2.Attention.use_fused = (lambda self, x: True) if fused else (lambda self, x: False)
        E2.EdgeDegreeEmbedding.use_fused = (lambda self, x: True) if fused else (lambda self, x: False)
        m.checkpoint_blocks = mode
        m.checkpoint_chunk_atoms = 8                     # "fine": slices of 8, 8, 5 target atoms
        e, em, f = m.energy_and_forces(z, pos, cell, pbc)
        return em, f

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    exact_e, exact_f = run(False, False)               # the MLP, PyTorch
    m.set_radial_tables(True)
    ref_e, ref_f = run(False, False)                   # the table, PyTorch
    os.environ["E2FORMER_ATTENTION_BACKEND"] = "triton_v2"
    worst = 0.0
    for mode in (False, "fine"):
        seen.clear()
        seen_ed.clear()
        launched.clear()
        e1, f1 = run(mode, True)                       # the tables inside the v2 kernels
        assert seen and all(seen) and seen_ed == [True], (seen, seen_ed)
        # both kernels launched with the TABLE launch configuration (its own warps, session 12)
        assert {k for k, _ in launched} == {"fwd", "bwd"} and all(t for _, t in launched), launched
        errs = [rel(e1, ref_e), rel(f1, ref_f)]
        print("table kernels,", mode or "whole graph", "vs table reference (E, F):", ["%.1e" % x for x in errs])
        worst = max(worst, *errs)
    print("table vs MLP (PyTorch): E %.1e F %.1e" % (rel(ref_e, exact_e), rel(ref_f, exact_f)))
    assert rel(ref_f, exact_f) < 1e-4
    print("WORST", worst)
    assert worst < 2e-5, worst
""")


def test_table_in_the_fused_kernels_under_interpreter():
    """The v2 attention and edge-degree kernels with their MLPs read from the radial tables (TABLE: no MLP
    forward or backward in the kernels), on the whole graph and per slice of targets ("fine"), against the
    PyTorch route with the same tables; the tables against the MLPs."""
    run_under_triton_interpreter(_INTERP_SCRIPT, [REPO / "tests"], "the radial table in the fused kernels",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND",))


def test_table_kernels_every_aggregation_mode_under_interpreter(tmp_path):
    """tests/gpu/check_table.py (the GPU check of the TABLE kernels) under the interpreter at small sizes: U and
    the gradients to vec, q, k, v of the default, split and streamed launches against the float64 reference."""
    script = (f"import sys; sys.argv = ['check_table', {str(tmp_path / 'out.json')!r}, '--device', 'cpu']; "
              f"exec(open({str(REPO / 'tests' / 'gpu' / 'check_table.py')!r}).read())")
    out = run_under_triton_interpreter(script, [], "the TABLE kernels' check", drop_env=("E2FORMER_ATTENTION_BACKEND",))
    assert "PASS" in out


def test_tables_on_the_padded_path_and_inside_a_capture(monkeypatch):
    """The padded / CUDA-graph path (its ghost atom, element 0, and padding edges of length 2 cutoff beyond the
    grid, which read the grid's end and are enveloped to zero) with tables gives the eager result with tables;
    inside a CUDA-graph capture a table is used as built (no host sync), and one never built is a clear error."""
    from openmm_e2former.graphed import GraphedEnergyForces

    m = _frozen(dtype="float64")
    z, pos, cell = (torch.tensor(x) for x in water_box(2, 3.1, seed=1))
    pbc = torch.tensor([True] * 3)
    m.set_radial_tables(True)
    e0, _, f0 = m.energy_and_forces(z, pos, cell, pbc)
    G = GraphedEnergyForces(m, z.tolist(), periodic=True)
    e1, f1 = G(pos, cell, cell.numpy())
    assert abs(float(e1) - float(e0)) <= 1e-9 * abs(float(e0))
    assert float((f1 - f0).abs().max()) <= 1e-9 * float(f0.abs().max())
    tab = m.blocks[0].attn.__dict__["_radial_table"]
    assert 0 in tab.elements and torch.isfinite(f1).all()           # the ghost's element
    fresh = RadialTable(m.blocks[0].attn, lambda mod, d, a, b: mod.radial_fn(m.rbf_offsets, m.rbf_coeff, d, a, b),
                        m.cutoff)
    zc = type("CudaLike", (), {"is_cuda": True})()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="inside a CUDA-graph capture"):
        fresh.ensure(zc)
    builds = tab.builds
    tab.ensure(zc)                      # built: used as it is, no unique() / host sync
    assert tab.builds == builds


def test_ensure_skips_the_same_tensor_only(monkeypatch):
    """ensure() asks for the unique elements (a host sync) once per z tensor object and version: the same z
    again is free, a changed or different z is looked at again."""
    m = _frozen()
    a = m.blocks[0].attn
    tab = RadialTable(a, lambda mod, d, zi, zj: mod.radial_fn(m.rbf_offsets, m.rbf_coeff, d, zi, zj), m.cutoff, 16,
                      torch.float64)
    calls = count_calls(monkeypatch, torch, "unique")
    z = torch.tensor([1, 8, 1])
    tab.ensure(z)
    tab.ensure(z)
    assert calls["n"] == 1 and tab.elements == [1, 8]
    z[0] = 6                                    # modified in place: looked at again, carbon added
    tab.ensure(z)
    assert calls["n"] == 2 and tab.elements == [1, 6, 8]
    tab.ensure(torch.tensor([1, 8, 1]))         # another tensor: looked at again
    assert calls["n"] == 3 and tab.builds == 2


def test_tables_build_from_two_threads_at_once():
    """Two models built into tables from two threads at once (two MD replicas in one process, one per GPU): the
    builds' forward-mode AD levels are process-wide, and without the build lock one thread's jvp found the other's
    level gone ("no level exists", H200 x2 in session 16; reproduced on the CPU with these loops)."""
    import threading

    models = [_frozen() for _ in range(2)]
    z = torch.tensor([1, 6, 8])
    errors, tables = [], {}

    def work(i, m):
        try:
            a = m.blocks[0].attn
            fn = lambda mod, d, zi, zj: mod.radial_fn(m.rbf_offsets, m.rbf_coeff, d, zi, zj)  # noqa: E731
            for _ in range(10):
                tab = RadialTable(a, fn, m.cutoff, 64, torch.float64)
                tab.ensure(z)
            tables[i] = tab
        except Exception as exc:        # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # and what each thread built is the table a build on its own gives
    m = models[0]
    alone = RadialTable(m.blocks[0].attn, lambda mod, d, zi, zj: mod.radial_fn(m.rbf_offsets, m.rbf_coeff, d, zi, zj),
                        m.cutoff, 64, torch.float64)
    alone.ensure(z)
    assert torch.equal(tables[0].coef, alone.coef) and torch.equal(tables[1].coef, alone.coef)


def test_one_table_grown_from_two_threads_keeps_both_elements():
    """Two threads sharing one model (one table; the OpenMM force caches one model per device) each bring a new
    element at once: the union is decided under the build lock, so neither build throws the other's element
    away (with the union decided before the lock, one thread's slot stayed -1)."""
    import threading
    import time

    m = _frozen()
    tab = RadialTable(m.blocks[0].attn, lambda mod, d, zi, zj: mod.radial_fn(m.rbf_offsets, m.rbf_coeff, d, zi, zj),
                      m.cutoff, 64, torch.float64)
    real = tab._build_locked

    def slow(elements, device):
        time.sleep(0.2)                  # both threads pass their own check before either build finishes
        real(elements, device)

    tab._build_locked = slow
    threads = [threading.Thread(target=tab.ensure, args=(torch.tensor([e]),)) for e in (1, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tab.elements == [1, 8]
    assert int(tab.slot[1]) >= 0 and int(tab.slot[8]) >= 0
