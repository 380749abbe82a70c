"""The PythonForce callable: small pickles, lazy model loading, per-process model cache, unit conversion."""
from __future__ import annotations

import os
import copy
import pickle

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import unit  # noqa: E402

from openmm_e2former import force as F  # noqa: E402


# torch on one thread: two threads inside an OpenMM PythonForce on this 2-core machine ran ~30x slower
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _context(system, pos, box=None):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        ctx.setPeriodicBoxVectors(*box)
    ctx.setPositions(pos)
    return ctx


def test_unit_constants():
    # 1 eV = e * N_A / 1000 kJ/mol (CODATA 2018 exact e and N_A)
    assert F.EV_TO_KJ_PER_MOL == pytest.approx(1.602176634e-19 * 6.02214076e23 / 1000, rel=1e-15)
    assert F.EV_PER_A_TO_KJ_PER_MOL_NM == pytest.approx(964.8533212331002, rel=1e-15)


@pytest.mark.parametrize("builtin", ["QUADRATIC_TEST_MODEL", "QUADRATIC_TEST_MODEL_ANALYTIC"])
def test_trivial_model_data_path_units_subset_and_pbc(builtin):
    n_all = 7
    particles = [1, 2, 4, 6]
    system = openmm.System()
    for _ in range(n_all):
        system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(3, 0, 0), openmm.Vec3(0.5, 3, 0), openmm.Vec3(0.2, 0.3, 3))
    force = F.create_python_force([6] * len(particles), getattr(F, builtin), particles=particles, periodic=True,
                                  device="cpu", force_group=3)
    system.addForce(force)
    assert force.getForceGroup() == 3 and force.usesPeriodicBoundaryConditions()
    rng = np.random.default_rng(0)
    pos = rng.uniform(0.2, 1.0, size=(n_all, 3))  # inside the box: no wrapping
    st = _context(system, pos).getState(getEnergy=True, getForces=True)
    p_a = pos[particles] * 10
    k = 1e-3  # QuadraticTestModel default
    e_ref = k * (p_a ** 2).sum() * F.EV_TO_KJ_PER_MOL
    f_ref = -2 * k * p_a * F.EV_PER_A_TO_KJ_PER_MOL_NM
    assert st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) == pytest.approx(e_ref, rel=1e-6)
    f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    np.testing.assert_allclose(f[particles], f_ref, rtol=1e-5)
    others = [i for i in range(n_all) if i not in particles]
    assert np.all(f[others] == 0)


def test_pickle_is_small_and_lazy(tiny_qk_checkpoint):
    comp = F.E2FormerForceComputation([8, 1, 1], str(tiny_qk_checkpoint), charge=-1, multiplicity=2, head="svp",
                                      periodic=True, device="cpu", precision="double")
    blob = pickle.dumps(comp)
    assert len(blob) < 1000
    clone = pickle.loads(blob)
    assert clone._rt is None  # nothing loaded until the first evaluation
    for key in F.E2FormerForceComputation._PICKLED:
        assert getattr(clone, key) == getattr(comp, key)
    assert os.path.abspath(tiny_qk_checkpoint) == clone.model_path


def test_copies_share_one_cached_model(tiny_qk_checkpoint):
    system = openmm.System()
    for _ in range(3):
        system.addParticle(1.0)
    system.addForce(F.create_python_force([8, 1, 1], str(tiny_qk_checkpoint), device="cpu"))
    pos = np.array([[0, 0, 0], [0.0957, 0, 0], [-0.024, 0.0927, 0]])
    s1, s2 = copy.deepcopy(system), openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    e = [_context(s, pos).getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
         for s in (system, s1, s2)]
    assert e[0] == pytest.approx(e[1], abs=1e-4) and e[0] == pytest.approx(e[2], abs=1e-4)
    key = (os.path.abspath(tiny_qk_checkpoint), None, "cpu", "torch.float32", "fp32", False, False)
    assert key in F._MODEL_CACHE
    assert sum(1 for k in F._MODEL_CACHE if k[0] == key[0] and k[2:] == key[2:]) == 1


def test_missing_model_file_is_reported_at_first_use(tmp_path):
    comp = F.E2FormerForceComputation([1, 1], str(tmp_path / "gone.pt"), device="cpu")
    system = openmm.System()
    system.addParticle(1.0)
    system.addParticle(1.0)
    system.addForce(openmm.PythonForce(comp))
    with pytest.raises(Exception, match="gone.pt"):
        _context(system, np.array([[0, 0, 0], [0.1, 0, 0]])).getState(getEnergy=True)


def test_bad_precision_and_device():
    with pytest.raises(ValueError, match="precision"):
        F.resolve_dtype("half")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            F.resolve_device("cuda")


def test_tf32_and_bf16_precisions(tiny_qk_checkpoint, monkeypatch):
    """precision='tf32' / 'bf16' (this plugin's faster float32 modes): a cached model of their own with
    ``set_precision`` applied, torch's global TF32 switch on during our evaluations only, energies as float32
    ('tf32' changes nothing on the CPU; 'bf16' autocasts the node-level products there too)."""
    import torch

    path = str(tiny_qk_checkpoint)
    pos = np.array([[0, 0, 0], [0.0957, 0, 0], [-0.024, 0.0927, 0]])
    seen = []
    energies = {}
    for prec in (None, "tf32", "bf16"):
        m = F.get_model(path, None, "cpu", prec)
        if prec == "tf32":
            orig = m.energy_and_forces

            def spy(*a, _orig=orig, **kw):
                seen.append(torch.backends.cuda.matmul.allow_tf32)
                return _orig(*a, **kw)

            monkeypatch.setattr(m, "energy_and_forces", spy)
        system = openmm.System()
        for _ in range(3):
            system.addParticle(1.0)
        system.addForce(F.create_python_force([8, 1, 1], path, device="cpu", precision=prec))
        energies[prec] = _context(system, pos).getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)
    m32, mtf, mbf = (F.get_model(path, None, "cpu", p) for p in (None, "tf32", "bf16"))
    assert len({id(m32), id(mtf), id(mbf)}) == 3                   # set_precision changes a model: one each
    assert not m32.blocks[0].attn.allow_tf32 and not m32.bf16
    assert mtf.blocks[0].attn.allow_tf32 and not mtf.bf16 and mbf.bf16
    assert all(p.dtype == torch.float32 for m in (mtf, mbf) for p in m.parameters())
    assert seen and all(seen)                                      # on while our force evaluated ...
    assert torch.backends.cuda.matmul.allow_tf32 is False          # ... and restored after
    assert energies["tf32"] == pytest.approx(energies[None], rel=1e-7, abs=1e-6)
    assert energies["bf16"] != energies[None]
    assert abs(energies["bf16"] - energies[None]) < 10.0            # kJ/mol, of -2.0e5 (reference energies in)
    with pytest.raises(ValueError, match="'tf32' or 'bf16'"):
        F.resolve_dtype("fp16")


def test_bf16_padded_path_matches_eager_bf16(tiny_qk_checkpoint):
    """precision='bf16' through the padded / CUDA-graph code path (forced on the CPU, no graph capture) gives the
    eager bf16 result: the bf16 autocast reaches the padded path too."""
    pos = np.array([[0, 0, 0], [0.0957, 0, 0], [-0.024, 0.0927, 0]])
    pos = np.concatenate([pos + [0.3 * i, 0.31 * (i % 2), 0] for i in range(4)])
    out = {}
    for graphed in (False, True):
        comp = F.E2FormerForceComputation([8, 1, 1] * 4, str(tiny_qk_checkpoint), device="cpu", precision="bf16",
                                          cuda_graphs=graphed)
        system = openmm.System()
        for _ in range(12):
            system.addParticle(1.0)
        system.addForce(openmm.PythonForce(comp))
        ctx = _context(system, pos)
        for _ in range(2):           # the first evaluation is eager (validation), the padded path starts after it
            st = ctx.getState(getEnergy=True, getForces=True)
        assert comp._rt.use_graphed == graphed and (comp._rt.graphed is not None) == graphed
        out[graphed] = (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                        st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    assert out[True][0] == pytest.approx(out[False][0], abs=1e-3)
    np.testing.assert_allclose(out[True][1], out[False][1], atol=1e-2)
