"""TorchForce-compatible module: TorchScript + energy/forces equal model.predict.

The parts that need ``openmmtorch`` run where it imports; ``.ci/torchforce_env.sh`` runs this file in a
torch 2.9.1 + openmm 8.6.1 + openmmtorch 1.5 venv with ``E2F_REQUIRE_OPENMMTORCH=1``, where a missing
openmmtorch is a failure, not a skip.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import torch  # noqa: I001  (torch before openmm, or the openmm-torch plug-ins fail to load)

EV = 96.48533212331002


def _openmmtorch_available():
    try:
        import openmmtorch  # noqa: F401

        return True
    except Exception:  # ImportError, or a plug-in library that fails to load
        if os.environ.get("E2F_REQUIRE_OPENMMTORCH") == "1":
            raise
        return False


HAVE_OPENMMTORCH = _openmmtorch_available()
requires_openmmtorch = pytest.mark.skipif(
    not HAVE_OPENMMTORCH,
    reason="openmmtorch not importable in this environment; bash .ci/torchforce_env.sh runs these tests "
           "(torch 2.9.1 + openmmtorch 1.5)")


# torch on one thread: two threads inside an OpenMM PythonForce on this 2-core machine ran ~30x slower
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(official_parity_dir, name):
    d = np.load(official_parity_dir / "tiny_qk" / f"{name}.npz")
    pbc = np.asarray(d["pbc"], dtype=bool)
    return (d["atomic_numbers"].astype(int), np.asarray(d["positions"], dtype=np.float64),
            np.asarray(d["cell"], dtype=np.float64) if pbc.any() else None)


def _model(ckpt, precision=None):
    from openmm_e2former.force import get_model

    return get_model(str(ckpt), None, "cpu", precision)


@pytest.mark.parametrize("name", ["ethanol", "water30_triclinic_pbc"])
def test_module_scripts_and_matches_predict(official_parity_dir, tiny_qk_checkpoint, name):
    from openmm_e2former.torchforce import E2FormerTorchForceModule

    z, pos, cell = _case(official_parity_dir, name)
    model = _model(tiny_qk_checkpoint)
    scripted = torch.jit.script(E2FormerTorchForceModule(model, z))
    p = torch.tensor(pos * 0.1, requires_grad=True)
    box = None if cell is None else torch.tensor(cell * 0.1)
    energy = scripted(p, box)
    assert energy.dtype == torch.float64 and energy.dim() == 0
    energy.backward()
    ref = model.predict(z, pos, cell)
    assert float(energy.detach()) == pytest.approx(ref["energy"] * EV, rel=1e-9, abs=1e-3)
    f_ref = ref["forces"] * EV * 10
    np.testing.assert_allclose(-p.grad.numpy(), f_ref, atol=2e-3 * max(1.0, np.abs(f_ref).max()))


def test_module_subset_and_options(official_parity_dir, tiny_qk_checkpoint, tmp_path):
    from openmm_e2former.torchforce import E2FormerTorchForceModule

    z, pos, _ = _case(official_parity_dir, "ethanol")
    model = _model(tiny_qk_checkpoint)
    # ML atoms embedded at indices 2.. of a larger particle set
    allpos = np.concatenate([np.full((2, 3), 50.0), pos, np.full((3, 3), -50.0)])
    atoms = list(range(2, 2 + len(z)))
    module = E2FormerTorchForceModule(model, z, atoms, charge=1, multiplicity=2, head="svp")
    scripted = torch.jit.script(module)
    path = tmp_path / "e2f.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    p = torch.tensor(allpos * 0.1, requires_grad=True)
    e = loaded(p)
    e.backward()
    ref = model.predict(z, pos, None, charge=1, multiplicity=2, head="svp")
    assert float(e.detach()) == pytest.approx(ref["energy"] * EV, rel=1e-9, abs=1e-3)
    g = p.grad.numpy()
    assert np.all(g[:2] == 0) and np.all(g[-3:] == 0)
    np.testing.assert_allclose(-g[2:2 + len(z)], ref["forces"] * EV * 10, atol=2e-3 * max(1.0, np.abs(ref["forces"]).max() * EV * 10))


# ----------------------------------------------------------------------------------------------------
# openmm-torch (torch 2.9.x env)
# ----------------------------------------------------------------------------------------------------
def _topology(z, cell):
    from openmm import Vec3, app, unit

    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("MOL", chain)
    for i, zi in enumerate(z):
        el = app.Element.getByAtomicNumber(int(zi))
        top.addAtom(f"{el.symbol}{i}", el, res)
    if cell is not None:
        top.setPeriodicBoxVectors([Vec3(*r) * 0.1 for r in cell] * unit.nanometer)
    return top


def _eval(system, pos_nm, platform="CPU"):
    import openmm
    from openmm import unit

    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(pos_nm)
    st = ctx.getState(getEnergy=True, getForces=True)
    return (st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


@requires_openmmtorch
@pytest.mark.parametrize("name", ["ethanol", "water30_triclinic_pbc"])
def test_torchforce_matches_predict(official_parity_dir, tiny_qk_checkpoint, name):
    import openmm
    from openmm_e2former.torchforce import create_torch_force

    z, pos, cell = _case(official_parity_dir, name)
    top = _topology(z, cell)
    system = openmm.System()
    for zi in z:
        system.addParticle(1.0)
    if cell is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*r) for r in cell * 0.1])
    force = create_torch_force(str(tiny_qk_checkpoint), top)
    assert force.usesPeriodicBoundaryConditions() == (cell is not None)
    system.addForce(force)
    e, f = _eval(system, pos * 0.1)
    ref = _model(tiny_qk_checkpoint).predict(z, pos, cell)
    assert e == pytest.approx(ref["energy"] * EV, rel=1e-7, abs=1e-2)
    f_ref = ref["forces"] * EV * 10
    np.testing.assert_allclose(f, f_ref, atol=2e-3 * max(1.0, np.abs(f_ref).max()))


@requires_openmmtorch
def test_torchforce_subset_saved_module(official_parity_dir, tiny_qk_checkpoint, tmp_path):
    import openmm
    from openmm_e2former.torchforce import create_torch_force

    z, pos, _ = _case(official_parity_dir, "ethanol")
    wz, wpos, _ = _case(official_parity_dir, "water3")
    allz = np.concatenate([wz[:3], z])
    allpos = np.concatenate([wpos[:3] + 30.0, pos])
    top = _topology(allz, None)
    atoms = list(range(3, 3 + len(z)))
    system = openmm.System()
    for _ in allz:
        system.addParticle(1.0)
    system.addForce(create_torch_force(str(tiny_qk_checkpoint), top, atoms=atoms, charge=-1, multiplicity=2,
                                       save_path=str(tmp_path / "module.pt")))
    e, f = _eval(system, allpos * 0.1)
    ref = _model(tiny_qk_checkpoint).predict(z, pos, None, charge=-1, multiplicity=2)
    assert e == pytest.approx(ref["energy"] * EV, rel=1e-7, abs=1e-2)
    assert np.all(f[:3] == 0)
    f_ref = ref["forces"] * EV * 10
    np.testing.assert_allclose(f[3:], f_ref, atol=2e-3 * max(1.0, np.abs(f_ref).max()))
