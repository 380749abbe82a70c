"""openmm-ml plug-in tests (CPU, tiny random-weight checkpoints), in the style of openmm-ml's suite."""
from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmml")
from openmm import app, unit  # noqa: E402
from openmmml import MLPotential  # noqa: E402

from openmm_e2former.force import EV_TO_KJ_PER_MOL, get_model  # noqa: E402
from helpers import count_calls  # noqa: E402

KJ = unit.kilojoule_per_mole
EV = EV_TO_KJ_PER_MOL


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on a small, shared CI machine: torch's intra-op thread pool only adds spin-wait
    contention (observed 30x slow-downs on 2 loaded cores), so run these tests single-threaded."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def load_case(official_parity_dir, name, variant="tiny_qk"):
    d = np.load(official_parity_dir / variant / f"{name}.npz")
    cell = np.asarray(d["cell"], dtype=np.float64)
    pbc = np.asarray(d["pbc"], dtype=bool)
    return dict(z=d["atomic_numbers"].astype(int), pos=np.asarray(d["positions"], dtype=np.float64),
                cell=cell if pbc.any() else None, charge=int(d["charge"]), multiplicity=int(d["multiplicity"]))


def make_topology(numbers, cell_angstrom=None, per_residue=None):
    """One residue per `per_residue` atoms (or one residue for all); box from the cell (Å)."""
    top = app.Topology()
    chain = top.addChain()
    res = None
    for i, z in enumerate(numbers):
        if res is None or (per_residue and i % per_residue == 0):
            res = top.addResidue("MOL", chain)
        el = app.Element.getByAtomicNumber(int(z))
        top.addAtom(f"{el.symbol}{i}", el, res)
    if cell_angstrom is not None:
        top.setPeriodicBoxVectors([openmm.Vec3(*row) * 0.1 for row in np.asarray(cell_angstrom)] * unit.nanometer)
    return top


def evaluate(system, positions_nm, box_nm=None, params=None, groups=-1):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box_nm is not None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in np.asarray(box_nm)])
    ctx.setPositions(np.asarray(positions_nm))
    ctx.computeVirtualSites()  # link-atom caps of ML/MM systems
    for k, v in (params or {}).items():
        ctx.setParameter(k, v)
    st = ctx.getState(getEnergy=True, getForces=True, groups=groups)
    return st.getPotentialEnergy().value_in_unit(KJ), st.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer)


def predict(ckpt, case, head=None, precision=None, charge=None, multiplicity=None):
    model = get_model(str(ckpt), None, "cpu", precision)
    return model.predict(case["z"], case["pos"], case["cell"], None,
                         charge=case["charge"] if charge is None else charge,
                         multiplicity=case["multiplicity"] if multiplicity is None else multiplicity,
                         head=head)


def assert_matches(energy_kj, forces_kj_nm, ref, rtol_e=1e-6, atol_f=2e-3):
    """energy (kJ/mol) / forces (kJ/mol/nm) vs model.predict (eV, eV/Å)."""
    e_ref = ref["energy"] * EV
    assert energy_kj == pytest.approx(e_ref, rel=rtol_e, abs=1e-3)
    f_ref = np.asarray(ref["forces"]) * EV * 10.0
    np.testing.assert_allclose(forces_kj_nm, f_ref, atol=atol_f * max(1.0, np.abs(f_ref).max()), rtol=0)


# ----------------------------------------------------------------------------------------------------
# plug-in registration
# ----------------------------------------------------------------------------------------------------
def test_import_openmmml_is_cheap():
    code = textwrap.dedent("""
        import sys
        import openmmml
        from openmmml import MLPotential
        from importlib.metadata import entry_points
        eps = [e for e in entry_points(group='openmmml.potentials') if e.name == 'e2formerv2']
        assert len(eps) == 1, eps
        eps[0].load()
        assert 'e2formerv2' in MLPotential._implFactories
        heavy = [m for m in ('torch', 'triton') if m in sys.modules]
        assert not heavy, heavy
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_importing_the_plugin_before_openmmml_works():
    """A program that imports openmm_e2former.potential before openmmml: importing openmmml (from inside this
    module) loads every plugin's entry point, this module included, which must already hold its factory; the
    registered factory is this module's, and MLPotential('e2formerv2') works."""
    code = textwrap.dedent("""
        import sys
        import openmm_e2former.potential as p
        from openmmml import MLPotential
        assert isinstance(MLPotential._implFactories['e2formerv2'], p.E2FormerV2PotentialImplFactory)
        from openmmml.mlpotential import MLPotentialImpl
        assert issubclass(p.E2FormerV2PotentialImpl, MLPotentialImpl)
        pot = MLPotential('e2formerv2')
        assert isinstance(pot._impl, p.E2FormerV2PotentialImpl)
        print('ok')
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_ml_long_range_is_false(tiny_qk_checkpoint):
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    assert pot._impl.getMLLongRange() is False


# ----------------------------------------------------------------------------------------------------
# pure ML == model.predict
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ethanol", "acetic_acid", "methyl_radical_m2", "oh_anion_qm1", "nh3_cation_q1_m2"])
def test_pure_ml_matches_predict(official_parity_dir, tiny_qk_checkpoint, name):
    case = load_case(official_parity_dir, name)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(make_topology(case["z"]), charge=case["charge"], multiplicity=case["multiplicity"],
                              device="cpu")
    assert not system.usesPeriodicBoundaryConditions()
    e, f = evaluate(system, case["pos"] * 0.1)
    assert_matches(e, f, predict(tiny_qk_checkpoint, case))


def test_direct_force_head_matches_predict(official_parity_dir, tiny_direct_checkpoint):
    case = load_case(official_parity_dir, "ethanol", "tiny_direct")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_direct_checkpoint))
    system = pot.createSystem(make_topology(case["z"]), device="cpu")
    e, f = evaluate(system, case["pos"] * 0.1)
    assert_matches(e, f, predict(tiny_direct_checkpoint, case))


def test_head_and_precision(official_parity_dir, tiny_qk_checkpoint):
    case = load_case(official_parity_dir, "ethanol")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    top = make_topology(case["z"])
    e_svp, f_svp = evaluate(pot.createSystem(top, head="svp", device="cpu"), case["pos"] * 0.1)
    assert_matches(e_svp, f_svp, predict(tiny_qk_checkpoint, case, head="svp"))
    e_omol, _ = evaluate(pot.createSystem(top, device="cpu"), case["pos"] * 0.1)
    assert abs(e_svp - e_omol) > 1.0
    # head given to MLPotential is the default for createSystem
    pot_svp = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint), head="svp")
    assert evaluate(pot_svp.createSystem(top, device="cpu"), case["pos"] * 0.1)[0] == pytest.approx(e_svp, abs=1e-6)
    e64, f64 = evaluate(pot.createSystem(top, precision="double", device="cpu"), case["pos"] * 0.1)
    assert_matches(e64, f64, predict(tiny_qk_checkpoint, case, precision="double"), rtol_e=1e-12, atol_f=1e-9)
    assert e64 == pytest.approx(e_omol, abs=0.5)  # float32 vs float64 network


def test_compile_option(official_parity_dir, tiny_qk_checkpoint, monkeypatch):
    """createSystem(compile=True) (experimental, E2FormerV2.set_compile): the force gets a model of its own with the
    blocks' node-level parts compiled, and the energy and forces of the plain model. Here the fused-kernel route
    is taken on the CPU (its PyTorch reference) and torch.compile uses the aot_eager backend, so that the compiled
    parts do run and the test stays fast; a compile that is not a bool is a clear error."""
    import torch
    from openmm_e2former import force as F
    from openmm_e2former.model import e2former as E2

    monkeypatch.setattr(E2.Attention, "use_fused", lambda self, x: not (self.qkdot or self.use_so2))
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **dict(kw, backend="aot_eager")))
    calls = count_calls(monkeypatch, E2.E2FormerV2, "_compiled_block")
    F.clear_model_cache()
    try:
        case = load_case(official_parity_dir, "ethanol")
        pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
        top = make_topology(case["z"])
        e0, f0 = evaluate(pot.createSystem(top, device="cpu"), case["pos"] * 0.1)
        assert calls["n"] == 0
        e1, f1 = evaluate(pot.createSystem(top, device="cpu", compile=True), case["pos"] * 0.1)
        assert calls["n"] > 0
        assert e1 == pytest.approx(e0, rel=1e-6)
        assert np.abs(np.asarray(f1) - np.asarray(f0)).max() <= 1e-5 * np.abs(np.asarray(f0)).max()
        with pytest.raises(TypeError, match="compile must be True or False"):
            pot.createSystem(top, device="cpu", compile="yes")
    finally:
        F.clear_model_cache()     # the compiled model holds the aot_eager functions of this test


def test_radial_tables_option(official_parity_dir, tiny_qk_checkpoint):
    """createSystem(radial_tables=True) (experimental, E2FormerV2.set_radial_tables): the force gets a model of its
    own reading its edge MLPs from tables, and the energy and forces of the plain model to float32 rounding; a
    radial_tables that is not a bool is a clear error."""
    from openmm_e2former import force as F

    case = load_case(official_parity_dir, "ethanol")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    top = make_topology(case["z"])
    e0, f0 = evaluate(pot.createSystem(top, device="cpu"), case["pos"] * 0.1)
    e1, f1 = evaluate(pot.createSystem(top, device="cpu", radial_tables=True), case["pos"] * 0.1)
    tabled = [m for k, m in F._MODEL_CACHE.items() if k[6]]
    assert tabled and all(m.radial_tables for m in tabled)
    assert e1 == pytest.approx(e0, rel=1e-6)
    assert np.abs(np.asarray(f1) - np.asarray(f0)).max() <= 1e-4 * np.abs(np.asarray(f0)).max()
    with pytest.raises(TypeError, match="radial_tables must be None"):
        pot.createSystem(top, device="cpu", radial_tables=1)


def _spy_force_kwarg(monkeypatch, name):
    """The ``name`` keyword (or "missing") of every create_python_force call from here on, in a list."""
    from openmm_e2former import force as F

    handed = []
    real = F.create_python_force

    def spy(*a, **kw):
        handed.append(kw.get(name, "missing"))
        return real(*a, **kw)

    monkeypatch.setattr(F, "create_python_force", spy)
    return handed


def test_radial_tables_default_is_float32_on_cuda(official_parity_dir, tiny_qk_checkpoint, monkeypatch):
    """radial_tables=None (the default): tables for a float32 model on CUDA (measured on the H200: 70 / 70 parity
    cases, -25 % per OpenMM step at 115k atoms), the exact MLPs for float64 and on the CPU; True / False are taken
    as given.  createSystem hands None to the force, which keeps it in its pickled definition, so a deserialised
    System resolves it again for the device it runs on."""
    import pickle

    import torch
    from openmm_e2former import force as F

    assert F.resolve_radial_tables(None, "cuda:0", torch.float32) is True
    assert F.resolve_radial_tables(None, "cuda:0", torch.float64) is False
    assert F.resolve_radial_tables(None, "cpu", torch.float32) is False
    assert F.resolve_radial_tables(True, "cpu", torch.float64) is True
    assert F.resolve_radial_tables(False, "cuda:0", torch.float32) is False
    F.clear_model_cache()
    handed = _spy_force_kwarg(monkeypatch, "radial_tables")
    case = load_case(official_parity_dir, "ethanol")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    pot.createSystem(make_topology(case["z"]), device="cpu")
    assert handed == [None]                                               # unresolved in the force's definition
    assert F._MODEL_CACHE and not any(k[6] for k in F._MODEL_CACHE)      # CPU default: exact MLPs
    comp = F.E2FormerForceComputation([1, 8], radial_tables=None)
    assert pickle.loads(pickle.dumps(comp)).radial_tables is None


def test_cuda_graphs_option(official_parity_dir, tiny_qk_checkpoint, monkeypatch):
    """createSystem(cuda_graphs=...) reaches the force as given (None: the automatic choice, kept unresolved in
    its definition); True on the CPU runs the padded path without a graph and gives the same energy and forces;
    a value that is not None or a bool is a clear error."""
    from openmm_e2former.graphed import GraphedEnergyForces

    handed = _spy_force_kwarg(monkeypatch, "cuda_graphs")
    calls = []
    real_call = GraphedEnergyForces.__call__
    monkeypatch.setattr(GraphedEnergyForces, "__call__", lambda self, *a: calls.append(1) or real_call(self, *a))
    case = load_case(official_parity_dir, "ethanol")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    top = make_topology(case["z"])
    e0, f0 = evaluate(pot.createSystem(top, device="cpu"), case["pos"] * 0.1)
    assert not calls
    system = pot.createSystem(top, device="cpu", cuda_graphs=True)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(case["pos"] * 0.1)
    ctx.getState(getEnergy=True)                            # the first evaluation: eager and validated
    ctx.setPositions(case["pos"] * 0.1 + 1e-4)              # (a new evaluation, on the padded path)
    ctx.setPositions(case["pos"] * 0.1)
    st = ctx.getState(getEnergy=True, getForces=True)
    e1, f1 = st.getPotentialEnergy().value_in_unit(KJ), st.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer)
    assert calls                                            # the padded path ran
    pot.createSystem(top, device="cpu", cuda_graphs=False)
    assert handed == [None, True, False]
    assert e1 == pytest.approx(e0, rel=1e-6)
    assert np.abs(np.asarray(f1) - np.asarray(f0)).max() <= 1e-5 * np.abs(np.asarray(f0)).max()
    with pytest.raises(TypeError, match="cuda_graphs must be None"):
        pot.createSystem(top, device="cpu", cuda_graphs="on")


def test_charge_and_multiplicity_change_energy(official_parity_dir, tiny_qk_checkpoint):
    case = load_case(official_parity_dir, "ethanol")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    top = make_topology(case["z"])
    e0, _ = evaluate(pot.createSystem(top, device="cpu"), case["pos"] * 0.1)
    e_q, f_q = evaluate(pot.createSystem(top, charge=1, multiplicity=2, device="cpu"), case["pos"] * 0.1)
    e_m, _ = evaluate(pot.createSystem(top, multiplicity=3, device="cpu"), case["pos"] * 0.1)
    assert abs(e_q - e0) > 1e-3 and abs(e_m - e0) > 1e-3 and abs(e_q - e_m) > 1e-3
    assert_matches(e_q, f_q, predict(tiny_qk_checkpoint, case, charge=1, multiplicity=2))


# ----------------------------------------------------------------------------------------------------
# periodic systems
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["water7_cubic6_pbc", "water30_triclinic_pbc"])
def test_periodic_matches_predict(official_parity_dir, tiny_qk_checkpoint, name):
    case = load_case(official_parity_dir, name)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(make_topology(case["z"], case["cell"], per_residue=3), device="cpu")
    assert system.usesPeriodicBoundaryConditions()
    e, f = evaluate(system, case["pos"] * 0.1, case["cell"] * 0.1)
    assert_matches(e, f, predict(tiny_qk_checkpoint, case))


@pytest.mark.parametrize("name", ["water7_cubic6_pbc", "water30_triclinic_pbc"])
def test_periodic_translation_and_split_molecules(official_parity_dir, tiny_qk_checkpoint, name):
    """Translating everything by i*0.9 nm, or wrapping atoms one by one into the cell (which splits
    molecules across the boundary), leaves the energy unchanged."""
    case = load_case(official_parity_dir, name)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(make_topology(case["z"], case["cell"], per_residue=3), precision="double", device="cpu")
    cell = case["cell"] * 0.1
    pos = case["pos"] * 0.1
    e0, f0 = evaluate(system, pos, cell)
    for i in range(1, 4):
        e, f = evaluate(system, pos + i * 0.9 * np.array([1.0, 0.6, 0.3]), cell)
        assert e == pytest.approx(e0, abs=1e-6)
        np.testing.assert_allclose(f, f0, atol=1e-6)
    # wrap each atom separately (fractional coordinates mod 1), after a shift that puts molecules on faces
    shifted = pos + np.array([0.25, 0.31, 0.17])
    frac = shifted @ np.linalg.inv(cell)
    wrapped = (frac - np.floor(frac)) @ cell
    assert np.abs(wrapped - shifted).max() > 0.1  # something did move by a lattice vector
    e_w, f_w = evaluate(system, wrapped, cell)
    assert e_w == pytest.approx(e0, abs=1e-6)
    np.testing.assert_allclose(f_w, f0, atol=1e-6)


def test_periodic_system_without_topology_box(official_parity_dir, tiny_qk_checkpoint):
    """A System that uses PBC (e.g. from an MM force field) makes the ML force periodic even when the topology
    has no box; periodic=True without any box is an error."""
    case = load_case(official_parity_dir, "water7_cubic6_pbc")
    top = make_topology(case["z"], None, per_residue=3)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    with pytest.raises(ValueError, match="no periodic box vectors"):
        pot.createSystem(top, periodic=True, device="cpu")
    system = openmm.System()
    for z in case["z"]:
        system.addParticle(app.Element.getByAtomicNumber(int(z)).mass)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*r) for r in case["cell"] * 0.1])
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.29)
    for _ in case["z"]:
        nb.addParticle(0, 0.1, 0)
    system.addForce(nb)
    pot._impl.addForces(top, system, None, 1)
    assert system.getForce(system.getNumForces() - 1).usesPeriodicBoundaryConditions()
    e, f = evaluate(system, case["pos"] * 0.1, groups={1})
    assert_matches(e, f, predict(tiny_qk_checkpoint, case))


# ----------------------------------------------------------------------------------------------------
# subsets, mixed systems, interpolation
# ----------------------------------------------------------------------------------------------------
def test_atoms_subset(official_parity_dir, tiny_qk_checkpoint):
    eth = load_case(official_parity_dir, "ethanol")
    wat = load_case(official_parity_dir, "water3")
    z = np.concatenate([wat["z"][:3], eth["z"], wat["z"][3:]])
    pos = np.concatenate([wat["pos"][:3] + 20.0, eth["pos"], wat["pos"][3:] - 20.0])
    top = make_topology(z)
    system = openmm.System()
    for zi in z:
        system.addParticle(app.Element.getByAtomicNumber(int(zi)).mass)
    ml = list(range(3, 3 + len(eth["z"])))
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    pot._impl.addForces(top, system, ml, 0, device="cpu", mlLongRange=None, someUnknownOption=1)
    e, f = evaluate(system, pos * 0.1)
    ref = predict(tiny_qk_checkpoint, eth)
    assert_matches(e, f[ml], ref)
    assert np.all(f[:3] == 0) and np.all(f[3 + len(eth["z"]):] == 0)


def _ala2(ala2_pdb):
    pdb = app.PDBFile(str(ala2_pdb))
    return pdb.topology, np.array(pdb.getPositions().value_in_unit(unit.nanometer))


@pytest.mark.parametrize("region", ["all", "ALA"])
def test_mixed_vs_interpolated(ala2_pdb, tiny_qk_checkpoint, region):
    top, pos = _ala2(ala2_pdb)
    ff = app.ForceField("amber14-all.xml")
    mm = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    ml_atoms = [a.index for a in top.atoms() if region == "all" or a.residue.name == region]
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    mixed = pot.createMixedSystem(top, mm, ml_atoms, device="cpu")
    interp = pot.createMixedSystem(top, mm, ml_atoms, interpolate=True, device="cpu")
    n_extra = mixed.getNumParticles() - top.getNumAtoms()  # link-atom virtual sites
    assert n_extra == (0 if region == "all" else 2)
    full_pos = np.concatenate([pos, np.zeros((n_extra, 3))]) if n_extra else pos
    e_mm, _ = evaluate(mm, pos)
    e_mixed, f_mixed = evaluate(mixed, full_pos)
    e1, f1 = evaluate(interp, full_pos, params={"lambda_interpolate": 1.0})
    e0, f0 = evaluate(interp, full_pos, params={"lambda_interpolate": 0.0})
    assert e1 == pytest.approx(e_mixed, abs=1e-3)
    np.testing.assert_allclose(f1, f_mixed, atol=1e-3)
    assert e0 == pytest.approx(e_mm, abs=1e-3)
    if region == "ALA":   # the CUDA default (radial tables) through ML/MM: a subset, link atoms, interpolation
        from openmm_e2former import force as F

        tabled = pot.createMixedSystem(top, mm, ml_atoms, interpolate=True, device="cpu", radial_tables=True)
        et, ft = evaluate(tabled, full_pos, params={"lambda_interpolate": 1.0})
        assert any(k[6] for k in F._MODEL_CACHE)
        assert et == pytest.approx(e_mixed, abs=1e-3)
        np.testing.assert_allclose(ft, f_mixed, atol=1e-3)
    if region == "all":
        case = dict(z=np.array([a.element.atomic_number for a in top.atoms()]), pos=pos * 10, cell=None, charge=0,
                    multiplicity=1)
        assert e_mixed == pytest.approx(predict(tiny_qk_checkpoint, case)["energy"] * EV, abs=2e-3)


def test_mechanical_embedding_arithmetic(water_pdb_factory, tiny_qk_checkpoint):
    """E(lambda) = E_MM(all) - lambda*E_MM(ML region) + lambda*E_ML(ML region), for water (no link atoms)."""
    pdb = app.PDBFile(str(water_pdb_factory(4)))
    top = pdb.topology
    pos = np.array(pdb.getPositions().value_in_unit(unit.nanometer))
    ff = app.ForceField("amber14/tip3pfb.xml")
    mm = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    ml_atoms = list(range(6))  # first two waters
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    interp = pot.createMixedSystem(top, mm, ml_atoms, interpolate=True, device="cpu")
    # ML region alone, with MM and with ML
    sub = app.Modeller(top, pdb.getPositions())
    sub.delete([r for r in sub.topology.residues() if r.index >= 2])
    e_mm_all, _ = evaluate(mm, pos)
    e_mm_ml, _ = evaluate(ff.createSystem(sub.topology, nonbondedMethod=app.NoCutoff, constraints=None,
                                          rigidWater=False), pos[ml_atoms])
    case = dict(z=np.array([8, 1, 1, 8, 1, 1]), pos=pos[ml_atoms] * 10, cell=None, charge=0, multiplicity=1)
    e_ml_ml = predict(tiny_qk_checkpoint, case)["energy"] * EV
    for lam in (0.0, 0.3, 0.7, 1.0):
        e, _ = evaluate(interp, pos, params={"lambda_interpolate": lam})
        assert e == pytest.approx(e_mm_all - lam * e_mm_ml + lam * e_ml_ml, abs=2e-3), lam


def test_mixed_periodic_pme_water_box(water_pdb_factory, tiny_qk_checkpoint):
    """Mechanical embedding of a PME water box builds without mlLongRange (getMLLongRange() is False)."""
    pdb = app.PDBFile(str(water_pdb_factory(8, spacing=3.1, box_angstrom=(12.0, 12.0, 12.0))))
    top = pdb.topology
    pos = np.array(pdb.getPositions().value_in_unit(unit.nanometer))
    ff = app.ForceField("amber14/tip3pfb.xml")
    mm = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=0.55 * unit.nanometer, constraints=None,
                         rigidWater=False)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    mixed = pot.createMixedSystem(top, mm, list(range(6)), device="cpu")
    interp = pot.createMixedSystem(top, mm, list(range(6)), interpolate=True, device="cpu")
    ml_forces = [f for f in mixed.getForces() if isinstance(f, openmm.PythonForce)]
    assert len(ml_forces) == 1 and ml_forces[0].usesPeriodicBoundaryConditions()
    e_mixed, _ = evaluate(mixed, pos)
    assert evaluate(interp, pos, params={"lambda_interpolate": 1.0})[0] == pytest.approx(e_mixed, abs=2e-3)
    assert evaluate(interp, pos, params={"lambda_interpolate": 0.0})[0] == pytest.approx(evaluate(mm, pos)[0], abs=2e-3)


# ----------------------------------------------------------------------------------------------------
# serialization
# ----------------------------------------------------------------------------------------------------
def test_xml_and_deepcopy_round_trips(official_parity_dir, tiny_qk_checkpoint):
    case = load_case(official_parity_dir, "water7_cubic6_pbc")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(make_topology(case["z"], case["cell"], per_residue=3), charge=0, multiplicity=1,
                              head="svp", device="cpu")
    e0, f0 = evaluate(system, case["pos"] * 0.1)
    xml = openmm.XmlSerializer.serialize(system)
    assert len(xml) < 20000  # the pickled callable holds no weights
    for s in (openmm.XmlSerializer.deserialize(xml), copy.deepcopy(system)):
        e, f = evaluate(s, case["pos"] * 0.1)
        assert e == pytest.approx(e0, abs=1e-3)
        # float32 autograd on several CPU threads is not bitwise reproducible
        np.testing.assert_allclose(f, f0, atol=1e-5 * np.abs(f0).max())


# ----------------------------------------------------------------------------------------------------
# dynamics
# ----------------------------------------------------------------------------------------------------
def test_nve_energy_conservation(official_parity_dir, tiny_qk_checkpoint):
    case = load_case(official_parity_dir, "ethanol")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(make_topology(case["z"]), precision="double", device="cpu")
    integ = openmm.VerletIntegrator(0.5 * unit.femtosecond)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(case["pos"] * 0.1)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1234)
    energies, kinetic = [], []
    for _ in range(25):
        integ.step(4)
        st = ctx.getState(getEnergy=True)
        ke = st.getKineticEnergy().value_in_unit(KJ)
        energies.append(st.getPotentialEnergy().value_in_unit(KJ) + ke)
        kinetic.append(ke)
    energies = np.array(energies)
    drift = energies[-1] - energies[0]
    spread = energies.max() - energies.min()
    ke_fluct = np.ptp(kinetic)
    print(f"\nNVE (ethanol, 100 x 0.5 fs, float64 model): drift {drift:.2e} kJ/mol, max-min {spread:.2e} kJ/mol, "
          f"KE fluctuation {ke_fluct:.2f} kJ/mol")
    assert np.all(np.isfinite(energies))
    assert spread < max(0.02 * ke_fluct, 0.05)


def test_langevin_run_stays_finite(ala2_pdb, tiny_qk_checkpoint):
    top, pos = _ala2(ala2_pdb)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(top, device="cpu")
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    sim = app.Simulation(top, system, integ, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(pos)
    sim.step(30)
    st = sim.context.getState(getEnergy=True, getPositions=True)
    assert np.isfinite(st.getPotentialEnergy().value_in_unit(KJ))
    assert np.all(np.isfinite(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)))


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def test_error_unsupported_element(tiny_qk_checkpoint):
    top = make_topology([6, 1, 100])
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    with pytest.raises(ValueError, match=r"atom 2 .*Fm.*Z=100"):
        pot.createSystem(top, device="cpu")


def test_error_atom_without_element(tiny_qk_checkpoint):
    top = make_topology([8, 1, 1])
    res = list(top.residues())[0]
    top.addAtom("EP", None, res)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    with pytest.raises(ValueError, match=r"atom 3 \('EP'.*no element"):
        pot.createSystem(top, device="cpu")


def test_error_unknown_head_and_bad_path(tiny_qk_checkpoint, tmp_path):
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    with pytest.raises(ValueError, match="unknown head"):
        pot.createSystem(make_topology([8, 1, 1]), head="nope", device="cpu")
    with pytest.raises(FileNotFoundError, match="modelPath"):
        MLPotential("e2formerv2", modelPath=str(tmp_path / "missing.pt"))


def test_default_model_without_model_path(official_parity_dir):
    """MLPotential('e2formerv2') with no modelPath uses the bundled model: same energy and forces as
    load_model() (no arguments), after unit conversion."""
    from openmm_e2former import load_model
    case = load_case(official_parity_dir, "water3")
    status = _default_status()
    with pytest.warns(UserWarning, match=status.upper()) if status in ("preview", "beta") else _nullcontext():
        system = MLPotential("e2formerv2").createSystem(make_topology(case["z"]), device="cpu")
    e, f = evaluate(system, case["pos"] * 0.1)
    ref = load_model().predict(case["z"], case["pos"])
    assert e == pytest.approx(ref["energy"] * EV, abs=1e-3)
    np.testing.assert_allclose(f, ref["forces"] * EV * 10.0, atol=1e-3)


def _default_status():
    import openmm_e2former as pkg
    from openmm_e2former.force import clear_model_cache
    clear_model_cache()
    pkg._PREVIEW_WARNED = False     # the warning is once per process: re-arm it for this test
    import torch
    meta = torch.load(pkg.default_model_path(), map_location="cpu", weights_only=False).get("metadata", {})
    return str(meta.get("status"))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_missing_default_model_says_model_path(official_parity_dir, monkeypatch, tmp_path):
    import openmm_e2former as pkg
    from openmm_e2former.force import clear_model_cache
    clear_model_cache()
    monkeypatch.setattr(pkg, "default_model_path", lambda: tmp_path / "absent.pt")
    case = load_case(official_parity_dir, "water3")
    with pytest.raises(RuntimeError, match="modelPath"):
        MLPotential("e2formerv2").createSystem(make_topology(case["z"]), device="cpu")
    clear_model_cache()


def test_error_overlapping_atoms_at_runtime(official_parity_dir, tiny_qk_checkpoint):
    case = load_case(official_parity_dir, "water3")
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    system = pot.createSystem(make_topology(case["z"]), device="cpu")
    pos = case["pos"].copy() * 0.1
    pos[3] = pos[0] + 0.001
    with pytest.raises(Exception, match="overlap"):
        evaluate(system, pos)


def test_interpolated_system_xml_round_trip(water_pdb_factory, tiny_qk_checkpoint):
    """The CustomCVForce that holds the ML force (interpolate=True) survives XmlSerializer and deepcopy."""
    pdb = app.PDBFile(str(water_pdb_factory(3)))
    pos = np.array(pdb.getPositions().value_in_unit(unit.nanometer))
    mm = app.ForceField("amber14/tip3pfb.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                            constraints=None, rigidWater=False)
    pot = MLPotential("e2formerv2", modelPath=str(tiny_qk_checkpoint))
    interp = pot.createMixedSystem(pdb.topology, mm, [0, 1, 2], interpolate=True, device="cpu")
    lam = {"lambda_interpolate": 0.6}
    e0, _ = evaluate(interp, pos, params=lam)
    for s in (openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(interp)), copy.deepcopy(interp)):
        assert evaluate(s, pos, params=lam)[0] == pytest.approx(e0, abs=1e-3)
