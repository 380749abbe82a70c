"""The bundled default model (openmm_e2former/data/e2formerv2_default.pt): present, small, loadable with no
arguments, documented by its metadata, physically sane (invariances, smooth attention, finite forces)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import openmm_e2former as pkg
from openmm_e2former import default_model_path, load_model

WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.957, 0.0, 0.0], [-0.240, 0.927, 0.0]]))


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model()


def _dimer_cluster(seed=0):
    """Three waters (a small cluster, the kind of structure in the training data)."""
    rng = np.random.default_rng(seed)
    z, p = WATER
    zs, ps = [], []
    for k, off in enumerate([(0, 0, 0), (2.85, 0.3, 0.1), (0.4, 2.9, -0.5)]):
        R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        zs.append(z)
        ps.append(p @ R.T + np.array(off))
    return np.concatenate(zs), np.concatenate(ps)


def test_file_is_bundled_and_small():
    path = default_model_path()
    assert path.exists(), "the package must ship its default model"
    assert path.stat().st_size <= 20 * 2**20


def test_metadata_documents_teacher_data_elements_and_errors(model):
    meta = model.metadata
    assert "SO3LR" in meta["teacher"]
    assert set(meta["elements"]) >= {1, 6, 7, 8, 16}          # H C N O S (+ Na, Cl)
    assert meta["data"]["frames"] >= 10000
    val = meta["validation"]
    for kind in ("water_box", "aa_solv"):
        assert val[kind]["frames"] > 0 and np.isfinite(val[kind]["force_mae_meV_per_A"])
    assert "cutoff" in meta["limits"]
    cfg = model.config
    assert cfg.attention_softmax == "smooth"                     # continuous attention weights
    assert cfg.max_neighbors >= 128 and cfg.cutoff == 5.0        # the cap never binds in liquids


def test_status_is_announced_once_unless_stable():
    meta = torch.load(default_model_path(), map_location="cpu", weights_only=False)["metadata"]
    assert meta.get("status") in ("preview", "beta", "stable") and meta.get("version")
    pkg._PREVIEW_WARNED = False
    if meta["status"] == "stable":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_model()
        return
    with pytest.warns(UserWarning, match=meta["status"].upper()):
        load_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model()      # second time: silent


def test_energy_invariances_and_force_consistency(model):
    z, pos = _dimer_cluster()
    out = model.predict(z, pos)
    assert np.isfinite(out["energy"]) and np.isfinite(out["forces"]).all()
    rng = np.random.default_rng(3)
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = pos @ R.T + np.array([5.0, -3.0, 40.0])
    out2 = model.predict(z, moved)
    assert out2["energy"] == pytest.approx(out["energy"], abs=2e-4)
    np.testing.assert_allclose(out2["forces"], out["forces"] @ R.T, atol=2e-4)
    perm = rng.permutation(len(z))
    out3 = model.predict(z[perm], pos[perm])
    assert out3["energy"] == pytest.approx(out["energy"], abs=2e-4)
    np.testing.assert_allclose(out3["forces"], out["forces"][perm], atol=2e-4)
    # forces are minus the gradient of the energy (central differences, float64)
    m64 = load_model(dtype="float64")
    f = m64.predict(z, pos)["forces"]
    h = 1e-4
    for i, k in [(0, 0), (4, 1), (7, 2)]:
        p1, p2 = pos.copy(), pos.copy()
        p1[i, k] += h
        p2[i, k] -= h
        fd = -(m64.predict(z, p1)["energy"] - m64.predict(z, p2)["energy"]) / (2 * h)
        assert fd == pytest.approx(f[i, k], abs=1e-5, rel=1e-5)


def test_energy_is_continuous_when_an_atom_crosses_the_cutoff():
    """Smooth PES: a water molecule moved through the 5 Å cutoff of another changes the energy smoothly
    (no jump from the neighbour cap or from the attention softmax)."""
    m64 = load_model(dtype="float64")
    z, p = WATER
    zz = np.concatenate([z, z])
    energies = []
    shifts = np.linspace(4.90, 5.10, 41)
    for d in shifts:      # the oxygen-oxygen distance passes 5.0 Å (and the H-H/O-H ones around it)
        pos = np.concatenate([p, p + np.array([d, 0.0, 0.0])])
        energies.append(m64.predict(zz, pos)["energy"])
    e = np.array(energies)
    steps = np.diff(e)
    # a jump would show up as one step far larger than its neighbours, i.e. a large second difference;
    # a smooth curve sampled every 5 mÅ has second differences far below its first differences
    assert np.abs(steps).max() < 1e-3
    assert np.abs(np.diff(steps)).max() < 0.1 * np.abs(steps).max()


def test_untrained_elements_are_rejected_by_name(model):
    with pytest.raises(ValueError, match=r"F \(Z=9\).*trained on H \(Z=1\)"):
        model.predict([9, 1], np.array([[0.0, 0.0, 0.0], [0.92, 0.0, 0.0]]))
    openmm = pytest.importorskip("openmm")
    from openmm import app
    from openmmml import MLPotential
    top = app.Topology()
    res = top.addResidue("PH3", top.addChain())
    top.addAtom("P", app.Element.getBySymbol("P"), res)
    for k in range(3):
        top.addAtom(f"H{k}", app.Element.getBySymbol("H"), res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"element P \(Z=15\)"):
            MLPotential("e2formerv2").createSystem(top, device="cpu")


def test_pure_ml_periodic_system_keeps_molecules_whole(water_pdb_factory):
    """createSystem adds zero-strength bonds from the topology, so the barostat and reporters see molecules
    (not atoms); the energy is unchanged."""
    openmm = pytest.importorskip("openmm")
    from openmm import app, unit
    from openmmml import MLPotential
    pdb = app.PDBFile(str(water_pdb_factory(4, box_angstrom=(12.0, 12.0, 12.0))))
    assert pdb.topology.getPeriodicBoxVectors() is not None and pdb.topology.getNumBonds() == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        system = MLPotential("e2formerv2").createSystem(pdb.topology, device="cpu")
    bonds = [f for f in system.getForces() if isinstance(f, openmm.HarmonicBondForce)]
    assert len(bonds) == 1 and bonds[0].getNumBonds() == 8
    assert all(bonds[0].getBondParameters(i)[3].value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) == 0
               for i in range(8))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pdb.positions)
    assert sorted(len(m) for m in ctx.getMolecules()) == [3, 3, 3, 3]
    e_all = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    e_bonds = ctx.getState(getEnergy=True, groups={bonds[0].getForceGroup()}).getPotentialEnergy()
    ml = [f for f in system.getForces() if isinstance(f, openmm.PythonForce)][0]
    assert ml.getForceGroup() == bonds[0].getForceGroup()
    # the zero bonds contribute nothing: the total equals the model's energy
    from openmm_e2former import load_model
    ref = load_model().predict([a.element.atomic_number for a in pdb.topology.atoms()],
                               pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom),
                               cell=np.eye(3) * 12.0, pbc=[True] * 3)
    assert e_all == pytest.approx(ref["energy"] * 96.48533212331002, abs=1e-3)
    assert e_bonds.value_in_unit(unit.kilojoule_per_mole) == pytest.approx(e_all, abs=1e-6)
