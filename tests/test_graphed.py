"""The padded static-shape path (``E2FormerV2.padded_energy_terms`` + ``pad_edges``) and its CUDA-graph wrapper
``openmm_e2former.graphed.GraphedEnergyForces`` on the CPU, where the wrapper runs the padded path eagerly
(the CUDA capture itself needs a GPU: ``benchmarks/gpu_graphed_check.py``).

The padding (ghost -> ghost edges beyond the cutoff, one ghost node) must not change the energy or the forces:
float64 results equal ``model.energy_and_forces`` to 1e-10 for several edge capacities and degree bounds, a
capacity increase between calls, periodic / gas-phase / triclinic systems, the bundled default model (smooth
softmax) and the tiny official-format fixtures (official softmax, QKdot logits, direct forces); the OpenMM
force with the opt-in gives the forces of the default path; and with the fused Triton kernels (interpreter)
padding changes nothing either.
"""
from __future__ import annotations

import math
import pickle
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ALA2_PDB
from helpers import (TRITON_MODEL_SCRIPT_HEAD, count_calls, model as fixture_model, run_under_triton_interpreter,
                     water_box)

from openmm_e2former import load_model
from openmm_e2former.graphed import (AUTO_MAX_ATOMS, ENV_VAR, GraphedEnergyForces, cuda_graphs_requested,
                                     use_cuda_graphs)
from openmm_e2former.model.e2former import pad_edges

REPO = Path(__file__).resolve().parents[1]
PBC = torch.tensor([True, True, True])


def _default_model(dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the bundled model's preview note
        return load_model(dtype=dtype)


@pytest.fixture(scope="module")
def default64():
    return _default_model("float64")


def _tensors(z, pos, cell, dtype=torch.float64):
    return torch.tensor(z), torch.tensor(pos, dtype=dtype), None if cell is None else torch.tensor(cell, dtype=dtype)


def _ala2():
    rows = [ln for ln in ALA2_PDB.splitlines() if ln.startswith(("ATOM", "HETATM"))]
    z = [{"C": 6, "H": 1, "N": 7, "O": 8}[ln[76:78].strip()] for ln in rows]
    pos = [[float(ln[30:38]), float(ln[38:46]), float(ln[46:54])] for ln in rows]
    return np.array(z), np.array(pos), None


def _assert_close(got, want, rtol):
    (e1, f1), (e0, f0) = got, want
    assert abs(float(e1) - float(e0)) <= rtol * max(1.0, abs(float(e0))), (float(e1), float(e0))
    scale = float(f0.abs().max())
    assert scale > 0
    assert float((f1 - f0).abs().max()) <= rtol * scale, float((f1 - f0).abs().max()) / scale


def _padded(m, z, pos, cell, pbc, capacity, degree_bound):
    """Energy (incl. reference energies) and forces through pad_edges + padded_energy_terms directly."""
    c, nb, sh = m.neighbor_edges(pos, cell, pbc)
    edges = pad_edges(c, nb, sh, len(z), capacity, m.cutoff)
    system = m.system_embedding(torch.tensor([0]), torch.tensor([1]))
    p = pos.clone().requires_grad_(True)
    e, _ = m.padded_energy_terms(torch.cat([z, z.new_zeros(1)]), p, *edges, system, 0, degree_bound)
    (g,) = torch.autograd.grad(e, p)
    return e.detach().double() + m.reference(z, 0), -g


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_padded_path_equals_eager_water_box(default64, dtype, rtol):
    m = default64 if dtype == torch.float64 else _default_model("float32")
    z, pos, cell = _tensors(*water_box(4, 3.1, seed=0), dtype=dtype)      # 64 waters, periodic
    total, _, f = m.energy_and_forces(z, pos, cell, PBC)
    c = m.neighbor_edges(pos, cell, PBC)[0]
    E = c.numel()
    degree = int(torch.bincount(c).max())
    # exact fit, one padding edge, a large capacity; degree bound exact, the model's cap, exact + 1
    for capacity, bound in ((E, degree), (E + 1, m.max_neighbors), (math.ceil(1.7 * E), degree + 1)):
        _assert_close(_padded(m, z, pos, cell, PBC, capacity, bound), (total, f), rtol)
    with pytest.raises(ValueError, match="capacity"):
        pad_edges(c, c, torch.zeros(E, 3), len(z), E - 1, m.cutoff)


def test_graphed_eager_fallback_gas_triclinic_and_capacity_growth(default64):
    m = default64
    # gas phase (alanine dipeptide)
    z, pos, _ = _tensors(*_ala2())
    G = GraphedEnergyForces(m, z.tolist())
    assert not G.capture and G.captures == 0                         # CPU: the padded path, eagerly
    total, _, f = m.energy_and_forces(z, pos)
    _assert_close(G(pos), (total, f), 1e-10)
    assert G.edge_capacity >= 1.2 * m.neighbor_edges(pos, None, None)[0].numel()
    # triclinic periodic water (27 waters): first dilated by 12 % (fewer edges), then at full density, so
    # the edge capacity must grow between the calls
    z, pos, cell = _tensors(*water_box(3, 3.1, seed=2))
    cell = cell + torch.tensor([[0.0, 0.0, 0.0], [2.1, 0.0, 0.0], [-1.3, 1.7, 0.0]])
    G = GraphedEnergyForces(m, z, periodic=True)
    capacities = []
    for scale in (1.12, 1.0):
        p, c = pos * scale, cell * scale
        total, _, f = m.energy_and_forces(z, p, c, PBC, validate=False)
        _assert_close(G(p, c), (total, f), 1e-10)
        capacities.append((G.edge_capacity, m.neighbor_edges(p, c, PBC)[0].numel()))
    (cap0, e0), (cap1, e1) = capacities
    assert e1 > cap0 and cap1 > cap0 >= e0, capacities


@pytest.mark.parametrize("variant", ["tiny_qk", "tiny_qkdot", "tiny_direct"])
def test_tiny_fixture_models(variant):
    """Official softmax (its max shift would see padding on a real atom), QKdot logits, direct forces."""
    m = fixture_model(variant, dtype="float64")
    z, pos, cell = _tensors(*water_box(2, 3.1, seed=4))
    G = GraphedEnergyForces(m, z, periodic=True)
    for step in range(2):
        p = pos + 0.03 * step * torch.randn(pos.shape, dtype=pos.dtype, generator=torch.Generator().manual_seed(step))
        total, _, f = m.energy_and_forces(z, p, cell, PBC)
        _assert_close(G(p, cell), (total, f), 1e-10)


def test_so2_route_is_refused():
    m = fixture_model("tiny_qk", eaas="so2", dtype="float64")
    z, pos, cell = _tensors(*water_box(2, 3.1, seed=4))
    with pytest.raises(ValueError, match="relative"):
        GraphedEnergyForces(m, z, periodic=True)(pos, cell)


def test_opt_in_flag(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert cuda_graphs_requested() is None
    for value, want in (("1", True), ("true", True), ("on", True), ("0", False), ("off", False), ("", None)):
        monkeypatch.setenv(ENV_VAR, value)
        assert cuda_graphs_requested() is want
    assert cuda_graphs_requested(False) is False and cuda_graphs_requested(True) is True


def test_default_choice_of_the_graphed_path(monkeypatch):
    """On by default for small CUDA systems only; the variable overrides on CUDA; the argument everywhere."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert use_cuda_graphs(None, True, 1800) and use_cuda_graphs(None, True, AUTO_MAX_ATOMS)
    assert not use_cuda_graphs(None, True, AUTO_MAX_ATOMS + 1)
    assert not use_cuda_graphs(None, False, 100)                      # never on the CPU by default
    assert not use_cuda_graphs(None, True, 100, float32=False)        # nor for float64 (slower padded)
    assert not use_cuda_graphs(None, True, 100, fits=False)           # nor where the step would not fit
    monkeypatch.setenv(ENV_VAR, "0")
    assert not use_cuda_graphs(None, True, 100)
    monkeypatch.setenv(ENV_VAR, "1")
    assert use_cuda_graphs(None, True, 10 * AUTO_MAX_ATOMS) and not use_cuda_graphs(None, False, 100)
    assert use_cuda_graphs(True, False, 100) and not use_cuda_graphs(False, True, 100)


@pytest.mark.usefixtures("one_torch_thread")
def test_openmm_force_opt_in_gives_the_same_forces(monkeypatch):
    openmm = pytest.importorskip("openmm")
    from openmm import unit

    from openmm_e2former import force as F

    z, pos, cell = water_box(3, 3.1, seed=5)                            # 27 waters, periodic
    rng = np.random.default_rng(0)
    positions = [pos / 10, (pos + rng.normal(scale=0.03, size=pos.shape)) / 10]   # nm

    def run(cuda_graphs):
        system = openmm.System()
        for _ in z:
            system.addParticle(1.0)
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in cell / 10])
        force = F.create_python_force(z.tolist(), periodic=True, device="cpu", precision="double",
                                      cuda_graphs=cuda_graphs)
        system.addForce(force)
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        out = []
        for p in positions:            # the first evaluation is the validated eager one, the second padded
            ctx.setPositions(p)
            st = ctx.getState(getEnergy=True, getForces=True)
            out.append((st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                        st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))
        return out

    calls = []
    original = GraphedEnergyForces.__call__
    monkeypatch.setattr(GraphedEnergyForces, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
    monkeypatch.delenv(ENV_VAR, raising=False)
    ref = run(None)
    assert not calls
    monkeypatch.setenv(ENV_VAR, "1")
    run(None)
    assert not calls                                                    # the environment variable: CUDA only
    got = run(True)                                                     # the argument forces it on the CPU
    assert len(calls) == 1                                              # the second evaluation
    for (e1, f1), (e0, f0) in zip(got, ref):
        assert e1 == pytest.approx(e0, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-9 * np.abs(f0).max())
    comp = F.E2FormerForceComputation(z.tolist(), periodic=True, device="cpu", precision="double", cuda_graphs=False)
    assert pickle.loads(pickle.dumps(comp)).cuda_graphs is False


# ------------------------------------------------------------------------------------------------
# the padded path with the fused Triton kernels (v2 attention and edge degree) under the interpreter; a
# subprocess, since TRITON_INTERPRET must be set before triton is imported
# ------------------------------------------------------------------------------------------------
_INTERP_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""

    # the smallest shapes the kernels take; smooth softmax, as the default model
    m, z, pos, cell, pbc = tiny_kernel_model(attention_softmax="smooth")
    calls = []
    for name in ("fused_attention", "fused_edge_degree"):
        def spy(*a, _orig=getattr(K, name), _name=name, **kw):
            calls.append((_name, a[0].numel() - 1, kw.get("max_degree")))
            return _orig(*a, **kw)
        setattr(K, name, spy)

    def use_fused(flag):
        E2.Attention.use_fused = lambda self, x: flag
        E2.EdgeDegreeEmbedding.use_fused = lambda self, x: flag

    def padded(capacity, bound):
        c, nb, sh = m.neighbor_edges(pos, cell, pbc)
        edges = E2.pad_edges(c, nb, sh, len(z), capacity, m.cutoff)
        system = m.system_embedding(torch.tensor([0]), torch.tensor([1]))
        p = pos.clone().requires_grad_(True)
        e, _ = m.padded_energy_terms(torch.cat([z, z.new_zeros(1)]), p, *edges, system, 0, bound)
        return e.detach(), -torch.autograd.grad(e, p)[0]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    E = m.neighbor_edges(pos, cell, pbc)[0].numel()
    use_fused(False)
    _, ref_e, ref_f = m.energy_and_forces(z, pos, cell, pbc)          # PyTorch everywhere
    os.environ["E2FORMER_ATTENTION_BACKEND"] = "triton_v2"            # (also the edge-degree kernels' choice)
    use_fused(True)
    _, e0, f0 = m.energy_and_forces(z, pos, cell, pbc)                 # the kernels, no padding
    calls.clear()
    # capacity 2E: the ghost's CSR row holds E padding edges, far more than the 16-edge tile of bound 10
    e1, f1 = padded(2 * E, 10)
    assert sorted(calls) == [("fused_attention", 22, 10), ("fused_edge_degree", 22, 10)], calls
    errs = [abs(float(e1 - e0)) / abs(float(e0)), rel(f1, f0), abs(float(e1 - ref_e)) / abs(float(ref_e)),
            rel(f1, ref_f)]
    print("padded vs unpadded kernels (E, F), padded kernels vs PyTorch (E, F):", ["%.1e" % x for x in errs])
    assert max(errs[:2]) < 1e-6 and max(errs[2:]) < 1e-5, errs
    # degree buckets (E2F_V2_BUCKETS=1) on the padded layout: bound 20 -> tiles of 32, the real atoms (<= 10
    # edges) in the 16-slot bucket, the ghost (E padding edges) alone in the 32-slot one
    os.environ["E2F_V2_BUCKETS"] = "1"
    eb1, fb1 = padded(2 * E, 20)
    del os.environ["E2F_V2_BUCKETS"]
    from importlib import import_module
    V2 = import_module("openmm_e2former.kernels.attention_triton_v2")
    assert {"fwd_small", "bwd_small"} <= set(V2._LAST_COMPILED), V2._LAST_COMPILED.keys()
    eb_errs = [abs(float(eb1 - e0)) / abs(float(e0)), rel(fb1, f0)]
    print("padded + degree buckets vs unpadded kernels (E, F):", ["%.1e" % x for x in eb_errs])
    assert max(eb_errs) < 1e-6, eb_errs
    # the batched class (in-graph neighbour list, per-node system embedding, per-system energies) through the
    # kernels: two gas-phase copies with total charges 0 and +1, each against the kernels' unpadded result alone
    from openmm_e2former.graphed import BatchedGraphedEnergyForces
    p2 = pos + torch.tensor([0.3, -0.2, 0.1])
    G = BatchedGraphedEnergyForces(m, [z, z], [False, False], [0, 1])
    calls.clear()
    eb, fb = G(torch.cat([pos, p2]), None)
    assert G.mode == "device" and {c[0] for c in calls} == {"fused_attention", "fused_edge_degree"}, calls
    for k, (pk, q) in enumerate(((pos, 0), (p2, 1))):
        tot, _, fk = m.energy_and_forces(z, pk, None, None, q)
        errs += [abs(float(eb[k]) - float(tot)) / abs(float(tot)), rel(fb[21 * k:21 * (k + 1)], fk)]
    print("batched (E, F) per system:", ["%.1e" % x for x in errs[4:]])
    print("WORST", max(errs))
    assert max(errs[4:]) < 1e-6, errs
""")


def test_padded_path_with_triton_kernels_under_interpreter():
    run_under_triton_interpreter(_INTERP_SCRIPT, [REPO / "tests"], "the padded path with the Triton kernels",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2FORMER_EDGE_DEGREE_BACKEND"))


# ------------------------------------------------------------------------------------------------
# the in-graph neighbour list (model.neighbors.dense_neighbor_edges) and the batched class
# ------------------------------------------------------------------------------------------------
def _dense(pos, cells, periodic, sizes, cutoff, k, capacity, min_dist=1e-4):
    from openmm_e2former.model.neighbors import dense_neighbor_edges
    M, B = pos.shape[0], len(sizes)
    slots = torch.full((B, max(sizes)), M, dtype=torch.long)
    off = 0
    for b, n in enumerate(sizes):
        slots[b, :n] = off + torch.arange(n)
        off += n
    box = torch.stack([torch.diagonal(c) if p else torch.ones(3, dtype=pos.dtype) for c, p in zip(cells, periodic)])
    out = (torch.empty(capacity + 1, dtype=torch.long), torch.empty(capacity + 1, dtype=torch.long),
           torch.empty(capacity + 1, 3, dtype=pos.dtype), torch.zeros(3, dtype=torch.long))
    dense_neighbor_edges(pos, slots, box, torch.tensor(periodic), cutoff, min_dist, k, capacity, M, out)
    return out


def _edge_sets(center, neighbor, shift):
    return sorted(zip(center.tolist(), neighbor.tolist(), [tuple(round(v, 9) for v in r) for r in shift.tolist()]))


def test_dense_neighbor_list_equals_the_cell_list():
    """Same edges (centre, neighbour, image shift), sorted by centre, as neighbor_list for two periodic boxes
    (unwrapped positions) and a gas-phase molecule in one call; the nearest-k cut; overflow reporting."""
    from openmm_e2former.model.neighbors import neighbor_list

    rng = np.random.default_rng(3)
    parts = []
    for nw, seed in ((4, 1), (5, 2)):
        z, pos, cell = water_box(nw, 3.1, seed=seed)
        pos = pos + rng.normal(scale=0.1, size=pos.shape) + rng.integers(-2, 3, size=(len(z), 1)) * np.diag(cell)
        parts.append((torch.tensor(pos), torch.tensor(cell), True))
    parts.append((torch.tensor(_ala2()[1]), torch.zeros(3, 3, dtype=torch.float64), False))
    sizes = [p[0].shape[0] for p in parts]
    pos = torch.cat([p[0] for p in parts])
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for k in (128, 12):
        want = []
        for (p, c, per), o in zip(parts, offs):
            ce, nb, sh = neighbor_list(p, c if per else None, PBC if per else None, 5.0, k + 1, 0.0)
            keep = (ce != nb) | (sh != 0).any(dim=1)
            ce, nb, sh = ce[keep], nb[keep], sh[keep]
            rank = torch.arange(ce.numel()) - torch.searchsorted(ce, ce)
            keep = rank < k
            want.append((ce[keep] + int(o), nb[keep] + int(o), sh[keep]))
        ce, nb, sh = (torch.cat([w[i] for w in want]) for i in range(3))
        E = ce.numel()
        c_out, n_out, s_out, stats = _dense(pos, [p[1] for p in parts], [p[2] for p in parts], sizes, 5.0, k, E + 7)
        assert stats[0] == E
        assert torch.equal(c_out[:E], ce)                                   # sorted by centre, same counts
        assert _edge_sets(c_out[:E], n_out[:E], s_out[:E]) == _edge_sets(ce, nb, sh)
        # distances ascending within every centre's row (nearest first, as the cell list)
        d = (pos[c_out[:E]] - pos[n_out[:E]] - s_out[:E]).norm(dim=1)
        same = c_out[1:E] == c_out[:E - 1]
        assert bool((d[1:][same] >= d[:-1][same] - 1e-12).all())
        # the padding after them: ghost -> ghost at 2 cutoff
        assert bool((c_out[E:-1] == pos.shape[0]).all()) and bool((s_out[E:-1, 0] == 10.0).all())
    assert int(stats[1]) > 12                                              # the largest count before the cut
    # too small a capacity: reported (E > capacity), nothing written past it
    c_out, _, _, stats = _dense(pos, [p[1] for p in parts], [p[2] for p in parts], sizes, 5.0, 128, 100)
    assert int(stats[0]) > 100 and c_out.numel() == 101


def test_graphed_in_graph_neighbour_list_modes_and_growth(default64):
    m = default64
    z, pos, cell = _tensors(*water_box(4, 3.1, seed=6))                  # 64 waters, 12.4 Å box
    G = GraphedEnergyForces(m, z, periodic=True)
    got = []
    for scale in (1.1, 1.0):                                            # denser second step: the buffers grow
        p, c = pos * scale, cell * scale
        total, _, f = m.energy_and_forces(z, p, c, PBC, validate=False)
        _assert_close(G(p, c), (total, f), 1e-10)
        got.append((G.mode, G.edge_capacity, int(G._stats[0])))
    (mode0, cap0, e0), (mode1, cap1, e1) = got
    assert mode0 == mode1 == "device" and e1 > cap0 and cap1 >= e1 > e0, got
    # a triclinic cell: the Verlet list (auto), or an error naming the problem (device)
    tri = cell + torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    total, _, f = m.energy_and_forces(z, pos, tri, PBC, validate=False)
    _assert_close(G(pos, tri), (total, f), 1e-10)
    assert G.mode == "verlet"
    _assert_close(G(pos, cell), m.energy_and_forces(z, pos, cell, PBC)[::2], 1e-10)
    assert G.mode == "device"
    with pytest.raises(ValueError, match="orthorhombic"):
        GraphedEnergyForces(m, z, periodic=True, neighbors="device")(pos, tri)
    # a box edge not longer than 2 cutoffs: the Verlet list (several images of one atom), or eager on request
    small = _tensors(*water_box(3, 3.1, seed=6))                         # 9.3 Å < 10 Å
    for neighbors, mode in ((None, "verlet"), ("host", "host")):
        G3 = GraphedEnergyForces(m, small[0], periodic=True, neighbors=neighbors)
        _assert_close(G3(small[1], small[2]), m.energy_and_forces(small[0], small[1], small[2], PBC)[::2], 1e-10)
        assert G3.mode == mode


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 2e-5)])
def test_batched_graphed_equals_each_system_alone(dtype, rtol):
    """Three periodic boxes of different sizes and total charges 0, +1, -1 and a gas-phase molecule in one
    padded call: each system's energy and forces as it gets them alone."""
    from openmm_e2former.graphed import BatchedGraphedEnergyForces

    m = _default_model(dtype)
    dt = torch.float64 if dtype == "float64" else torch.float32
    gen = torch.Generator().manual_seed(0)
    systems = []
    for (nw, seed), q in zip(((4, 1), (4, 2), (5, 3)), (0, 1, -1)):
        z, pos, cell = _tensors(*water_box(nw, 3.1, seed=seed), dtype=dt)
        systems.append((z, pos + 0.05 * torch.randn(pos.shape, generator=gen, dtype=dt), cell, True, q))
    z, pos, _ = _tensors(*_ala2(), dtype=dt)
    systems.append((z, pos, None, False, 0))
    G = BatchedGraphedEnergyForces(m, [s[0] for s in systems], [s[3] for s in systems], [s[4] for s in systems])
    cells = torch.stack([s[2] if s[3] else torch.zeros(3, 3, dtype=dt) for s in systems])
    e, f = G(torch.cat([s[1] for s in systems]), cells)
    assert e.shape == (4,) and e.dtype == torch.float64 and G.mode == "device"
    for k, (s, fk) in enumerate(zip(systems, f.split([len(s[0]) for s in systems]))):
        total, _, fr = m.energy_and_forces(s[0], s[1], s[2], PBC if s[3] else None, charge=s[4])
        _assert_close((e[k], fk), (total, fr), rtol)
    # the charge matters (so the per-system embedding is really per system)
    G0 = BatchedGraphedEnergyForces(m, [s[0] for s in systems], [s[3] for s in systems])
    assert abs(float(G0(torch.cat([s[1] for s in systems]), cells)[0][1] - e[1])) > 1e-4


def test_empty_systems_get_a_clear_error(default64):
    """Zero atoms, as in the eager path's check_inputs (the padded buffers failed with 'selected index k out of
    range'), for one system, an empty batch and a batch with an empty member."""
    from openmm_e2former.graphed import BatchedGraphedEnergyForces

    with pytest.raises(ValueError, match="no atoms: the system is empty"):
        GraphedEnergyForces(default64, [], periodic=False)
    with pytest.raises(ValueError, match="no systems"):
        BatchedGraphedEnergyForces(default64, [], [])
    with pytest.raises(ValueError, match=r"no atoms in system\(s\) \[1\] of the batch"):
        BatchedGraphedEnergyForces(default64, [[8, 1, 1], []], [False, False])


def test_neighbour_list_placement_from_the_environment(default64, monkeypatch):
    from openmm_e2former.graphed import NEIGHBORS_ENV_VAR
    z, pos, cell = _tensors(*water_box(4, 3.1, seed=6))
    monkeypatch.setenv(NEIGHBORS_ENV_VAR, "host")
    G = GraphedEnergyForces(default64, z, periodic=True)
    G(pos, cell)
    assert G.neighbors == "host" and G.mode == "host"
    monkeypatch.setenv(NEIGHBORS_ENV_VAR, "sideways")
    with pytest.raises(ValueError, match="neighbors"):
        GraphedEnergyForces(default64, z, periodic=True)
    monkeypatch.delenv(NEIGHBORS_ENV_VAR)
    G = GraphedEnergyForces(default64, z, periodic=True)
    G(pos, cell)
    assert G.mode == "device"


def test_non_finite_positions_give_a_nan_energy(default64):
    """The in-graph list gives an atom with a NaN position no edges; the result must not look valid: that
    system's energy is NaN (computed inside the graph, so a replay after it is fine again), the other systems of
    a batch keep theirs."""
    from openmm_e2former.graphed import BatchedGraphedEnergyForces
    z, pos, cell = _tensors(*water_box(4, 3.1, seed=6))
    G = GraphedEnergyForces(default64, z, periodic=True)
    assert np.isfinite(float(G(pos, cell)[0]))
    bad = pos.clone()
    bad[5, 1] = float("nan")
    assert G.mode == "device" and np.isnan(float(G(bad, cell)[0]))
    assert np.isfinite(float(G(pos, cell)[0]))                       # and it recovers
    B = BatchedGraphedEnergyForces(default64, [z, z], [True, True])
    e, f = B(torch.cat([pos, bad]), torch.stack([cell, cell]))
    assert torch.isnan(e[1]) and torch.isfinite(e[0])                # only the system with the NaN
    assert float(e[0]) == pytest.approx(float(G(pos, cell)[0]), rel=1e-12)
    assert torch.isfinite(f[:len(z)]).all()


def test_openmm_force_graphed_names_nan_positions():
    """Through the OpenMM force (graphed path, CPU): NaN coordinates after the first step end in the validated
    path's error naming them, not in a finite energy."""
    openmm = pytest.importorskip("openmm")
    from openmm_e2former import force as F

    z, pos, cell = water_box(4, 3.1, seed=5)                             # 64 waters: the in-graph list
    system = openmm.System()
    for _ in z:
        system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in cell / 10])
    system.addForce(F.create_python_force(z.tolist(), periodic=True, device="cpu", precision="double",
                                          cuda_graphs=True))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos / 10)
    ctx.getState(getEnergy=True)                                        # validated, eager
    ctx.setPositions(pos / 10 * 1.001)
    ctx.getState(getEnergy=True)                                        # graphed path
    p = pos / 10
    p[7, 2] = np.nan
    ctx.setPositions(p)
    with pytest.raises(Exception, match=r"positions contain NaN or infinite values \(atoms \[7\]\)"):
        ctx.getState(getEnergy=True)


def _water_trajectory(cuda_graphs, steps: int, barostat_every: int = 0):
    """``steps`` velocity-Verlet steps of 64 waters through OpenMM (Reference platform, float64 model; with a Monte
    Carlo barostat trying a volume move every ``barostat_every`` steps, fixed seed): (positions nm, potential
    energy kJ/mol, box nm) at the end."""
    import openmm
    from openmm import unit

    from openmm_e2former import force as F

    z, pos, cell = water_box(4, 3.1, seed=8)
    system = openmm.System()
    for x in z:
        system.addParticle(16.0 if x == 8 else 1.008)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in cell / 10])
    system.addForce(F.create_python_force(z.tolist(), periodic=True, device="cpu", precision="double",
                                          cuda_graphs=cuda_graphs))
    if barostat_every:
        baro = openmm.MonteCarloBarostat(1.0 * unit.bar, 300 * unit.kelvin, barostat_every)
        baro.setRandomNumberSeed(11)
        system.addForce(baro)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos / 10)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 7)
    ctx.getIntegrator().step(steps)
    st = ctx.getState(getPositions=True, getEnergy=True)
    return (st.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
            st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            np.asarray(st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)))


def _spy_graphed_calls(monkeypatch, record):
    """Record ``record(G)`` after every GraphedEnergyForces call (monkeypatched); returns the list."""
    seen = []
    original = GraphedEnergyForces.__call__

    def spy(self, *a):
        out = original(self, *a)
        seen.append(record(self))
        return out

    monkeypatch.setattr(GraphedEnergyForces, "__call__", spy)
    return seen


@pytest.mark.usefixtures("one_torch_thread")
def test_openmm_trajectory_graphed_equals_eager(monkeypatch):
    """10 velocity-Verlet steps of 64 waters through OpenMM (Reference platform, float64 model): the padded path
    with the in-graph neighbour list follows the eager trajectory to float64 rounding."""
    pytest.importorskip("openmm")
    calls = _spy_graphed_calls(monkeypatch, lambda G: G.mode)
    p1, e1, _ = _water_trajectory(True, 10)
    monkeypatch.undo()
    p0, e0, _ = _water_trajectory(False, 10)
    assert len(calls) >= 10 and set(calls) == {"device"}          # every step after the first: padded, in-graph list
    assert np.abs(p1 - p0).max() < 1e-9 and abs(e1 - e0) < 1e-6 * max(1.0, abs(e0))
    pos = water_box(4, 3.1, seed=8)[1]
    assert np.abs(p1 - pos / 10).max() > 1e-5                    # it moved


@pytest.mark.parametrize("in_graphs", [False, True])
def test_padded_path_with_compiled_node_parts(monkeypatch, in_graphs):
    """set_compile(in_graphs=True) (session 11, experimental): the padded / CUDA-graph path runs the blocks'
    compiled node-level parts too (here on the CPU: the fused-kernel route's PyTorch reference, torch.compile's
    aot_eager backend) and gives the plain padded result; without in_graphs it keeps the plain modules."""
    from openmm_e2former.model import e2former as E2

    monkeypatch.setattr(E2.Attention, "use_fused", lambda self, x: not (self.qkdot or self.use_so2))
    calls = count_calls(monkeypatch, E2.E2FormerV2, "_compiled_block")
    m = _default_model("float64")
    z, pos, cell = _tensors(*water_box(2, 3.1, seed=0))
    c = m.neighbor_edges(pos, cell, PBC)[0]
    E, degree = c.numel(), int(torch.bincount(c).max())
    ref = _padded(m, z, pos, cell, PBC, E + 3, degree)
    m.set_compile(True, in_graphs=in_graphs, backend="aot_eager")
    assert m.compile_in_graphs is in_graphs
    out = _padded(m, z, pos, cell, PBC, E + 3, degree)
    assert calls["n"] == (len(m.blocks) if in_graphs else 0)
    _assert_close(out, ref, 1e-12)
    m.set_compile(False)
    assert not m.compile_node_parts and not m.compile_in_graphs


def test_candidate_neighbor_edges_equal_the_cell_list():
    """The Verlet list's in-graph selection (``candidate_neighbor_edges`` from ``candidate_table``'s candidates
    within cutoff + skin) gives the edges of ``neighbor_edges``, sorted by centre then distance, for a triclinic
    box smaller than 2 cutoffs (several images of one atom, and of the atom itself) and a gas-phase molecule, with
    the nearest-k cut; atoms moved by less than half the skin keep the result exact, farther sets the flag."""
    from openmm_e2former.model.neighbors import candidate_neighbor_edges, candidate_table

    m = fixture_model("tiny_qk", dtype="float64")
    z, pos, cell = _tensors(*water_box(3, 3.1, seed=2))
    tri = cell + torch.tensor([[0.0, 0.0, 0.0], [2.1, 0.0, 0.0], [-1.3, 1.7, 0.0]])
    gen = torch.Generator().manual_seed(0)
    for p0, c, pbc in ((pos, tri, PBC), (torch.tensor(_ala2()[1]), None, None)):
        n = p0.shape[0]
        skin = 0.8
        cand, cshift, count = candidate_table(p0, c, pbc, m.cutoff + skin, n)
        assert cand.shape == (n, count) and bool((cand[:, :1] < n).all())
        step = torch.randn(p0.shape, generator=gen, dtype=p0.dtype)
        step = 0.39 * step / step.norm(dim=1, keepdim=True)          # every atom moved 0.39 Å < skin / 2
        for k in (m.max_neighbors, 7):
            for p, moved in ((p0, 0), (p0 + step, 0), (p0 + 1.2 * step, 1)):
                ce, nb, sh = m.neighbor_edges(p, c, pbc)
                rank = torch.arange(ce.numel()) - torch.searchsorted(ce, ce)
                ce, nb, sh = ce[rank < k], nb[rank < k], sh[rank < k]
                E = ce.numel()
                out = (torch.empty(E + 8, dtype=torch.long), torch.empty(E + 8, dtype=torch.long),
                       torch.empty(E + 8, 3, dtype=p.dtype), torch.zeros(4, dtype=torch.long))
                candidate_neighbor_edges(p, cand, cshift, p0, 0.5 * skin, m.cutoff, m.min_dist, k, E + 7, n, out)
                c_out, n_out, s_out, stats = out
                assert int(stats[3]) == moved
                if moved:
                    continue
                assert int(stats[0]) == E and torch.equal(c_out[:E], ce)
                assert _edge_sets(c_out[:E], n_out[:E], s_out[:E]) == _edge_sets(ce, nb, sh)
                d = (p[c_out[:E]] - p[n_out[:E]] - s_out[:E]).norm(dim=1)
                same = c_out[1:E] == c_out[:E - 1]
                assert bool((d[1:][same] >= d[:-1][same] - 1e-12).all())
                assert bool((c_out[E:-1] == n).all())                   # padding: ghost -> ghost


def test_graphed_verlet_list_rebuilds_when_atoms_move_or_the_cell_changes(default64):
    """On the padded path with the Verlet list (a triclinic box, where the all-pairs list does not apply): the
    same energy and forces as the eager model step after step; the candidates are rebuilt only when an atom has
    moved more than half the skin since the last build or the cell changed, and grow (a new graph) when a denser
    step needs more."""
    m = default64
    z, pos, cell = _tensors(*water_box(4, 3.1, seed=6))
    tri = cell + torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    G = GraphedEnergyForces(m, z, periodic=True, skin=1.0)
    gen = torch.Generator().manual_seed(1)

    def moved(p, dist):
        d = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        return p + dist * d / d.norm(dim=1, keepdim=True)

    p1 = moved(pos, 0.2)
    p2 = moved(p1, 0.2)               # 0.4 Å at most from pos: no rebuild
    p3 = moved(p2, 0.3)               # up to 0.7 Å from pos: rebuilt
    builds, runs = [], []
    real_execute = G._execute
    G._execute = lambda *a: runs.append(a) or real_execute(*a)
    for p, c in ((pos, tri), (p1, tri), (p2, tri), (p3, tri), (p3 * 1.01, tri * 1.01), (p3 * 0.93, tri * 0.93)):
        total, _, f = m.energy_and_forces(z, p, c, PBC, validate=False)
        runs.clear()
        _assert_close(G(p, c), (total, f), 1e-10)
        assert G.mode == "verlet"
        builds.append((G.verlet_builds, G._cand.shape[1]))
        if len(builds) in (2, 3, 4):
            # the move is seen before the replay: one model evaluation per call, also where it rebuilds
            assert len(runs) == 1, (len(builds), runs)
    assert [b for b, _ in builds] == [1, 1, 1, 2, 3, 4], builds
    assert builds[-1][1] > builds[-2][1], builds             # the denser cell needed more candidate columns
    # the neighbour-list option names the choices; the skin is a length >= 0
    with pytest.raises(ValueError, match="'verlet'"):
        GraphedEnergyForces(m, z, periodic=True, neighbors="cells")
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="skin"):
            GraphedEnergyForces(m, z, periodic=True, skin=bad)


def test_graph_memory_fits_follows_the_models_estimate(monkeypatch):
    """The default graph choice asks the model's estimate of a step without checkpointing against the device's
    available memory (GRAPH_MEMORY_FRACTION of it); without a CUDA device or an estimate it does not object."""
    from types import SimpleNamespace

    import openmm_e2former.graphed as Gm

    cuda_model = SimpleNamespace(checkpoint_none_bytes_per_element=320.0, channels=64,
                                 device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev: 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 0)
    # 41 GiB available, half of it 20.5 GiB: 115,200 atoms x 9 x 64 x 320 B = 19.8 GiB fits, 120,000 (20.6) not
    assert Gm.graph_memory_fits(cuda_model, 115_200)
    assert not Gm.graph_memory_fits(cuda_model, 120_000)
    assert Gm.graph_memory_fits(SimpleNamespace(device=torch.device("cpu")), 10**9)
    assert Gm.graph_memory_fits(SimpleNamespace(channels=64, device=torch.device("cuda", 0)), 10**9)

    # the real model: its channels come from its config (E2FormerV2 has no ``channels`` attribute of its own)
    real = fixture_model("tiny_qk", dtype="float32")
    monkeypatch.setattr(type(real), "device", property(lambda self: torch.device("cuda", 0)))
    C = real.config.channels
    fits_at = int(0.5 * 41 * 2**30 / (real.checkpoint_none_bytes_per_element * 9 * C))
    assert Gm.graph_memory_fits(real, fits_at) and not Gm.graph_memory_fits(real, fits_at + 100)
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (40 * 2**30, 80 * 2**30))

    def broken(dev):
        raise RuntimeError("no device")

    monkeypatch.setattr(torch.cuda, "mem_get_info", broken)
    assert Gm.graph_memory_fits(cuda_model, 10**9)


@pytest.mark.usefixtures("one_torch_thread")
def test_openmm_trajectory_with_the_verlet_list_and_a_barostat(monkeypatch):
    """9 velocity-Verlet steps of 64 waters through OpenMM (Reference platform, float64 model) with a Monte Carlo
    barostat trying a volume move every 3 steps: the padded path with the Verlet list (forced: the box would take the
    all-pairs list) follows the eager trajectory to float64 rounding, and rebuilds its candidates when the cell
    changes."""
    pytest.importorskip("openmm")
    from openmm_e2former.graphed import NEIGHBORS_ENV_VAR

    monkeypatch.setenv(NEIGHBORS_ENV_VAR, "verlet")
    seen = _spy_graphed_calls(monkeypatch, lambda G: (G.mode, G.verlet_builds))
    p1, e1, b1 = _water_trajectory(True, 9, barostat_every=3)
    monkeypatch.undo()
    p0, e0, b0 = _water_trajectory(False, 9, barostat_every=3)
    cell = water_box(4, 3.1, seed=8)[2]
    assert len(seen) >= 9 and {m for m, _ in seen} == {"verlet"}
    assert not np.allclose(b0, cell / 10)                         # a volume move was accepted ...
    assert seen[-1][1] > 1                                        # ... and the candidates were rebuilt for it
    assert np.abs(b1 - b0).max() < 1e-12
    assert np.abs(p1 - p0).max() < 1e-9 and abs(e1 - e0) < 1e-6 * max(1.0, abs(e0))
