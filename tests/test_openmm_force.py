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
    key = (os.path.abspath(tiny_qk_checkpoint), None, "cpu", "torch.float32")
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
