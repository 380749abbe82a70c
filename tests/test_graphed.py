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
from helpers import TRITON_MODEL_SCRIPT_HEAD, model as fixture_model, run_under_triton_interpreter, water_box

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

    torch.manual_seed(0)
    # the smallest shapes the kernels take (H, hid, C powers of two >= 16); smooth softmax, as the default model
    m = E2FormerV2(E2FormerConfig(channels=32, num_layers=1, num_heads=16, head_dim=4, num_basis=64,
                                  atom_embed_size=16, max_neighbors=10, attention_softmax="smooth"))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.requires_grad_(False)
    z, pos, cell = water_box(2, 3.1, seed=3)
    z, pos = torch.tensor(z)[:21], torch.tensor(pos, dtype=torch.float32)[:21]
    cell = torch.tensor(cell, dtype=torch.float32)
    pbc = torch.tensor([True, True, True])
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
    print("WORST", max(errs))
    assert max(errs[:2]) < 1e-6 and max(errs[2:]) < 1e-5, errs
""")


def test_padded_path_with_triton_kernels_under_interpreter():
    run_under_triton_interpreter(_INTERP_SCRIPT, [REPO / "tests"], "the padded path with the Triton kernels",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND", "E2FORMER_EDGE_DEGREE_BACKEND"))
