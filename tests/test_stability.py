"""The batched stability engine (``training.stability --engine batched``): ``integrate_batched`` on tiny periodic
water boxes (batched == each system alone, a failing system stops while the other continues, the wall-time
limit, an interrupt), ``build_system`` masses (``hmass`` 0 keeps the real ones), ``run_batched`` records on a
real solvated ACE-G-NME (2 MD steps) and the CLI (``--engine batched``, ``--part``, resume).  CPU, the bundled
default model, one torch thread; well under a minute.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openmm")

if importlib.util.find_spec("training") is None:   # repository root not on sys.path (plain `pytest`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import stability  # noqa: E402

# the keys of run_one's records
RUN_ONE_KEYS = {"system", "letter", "atoms", "charge", "ps", "target_ps", "stable", "completed", "worst_bond_ratio",
                "max_temperature_K", "reason", "timestep_fs", "hmass_amu", "hydrogens_repartitioned",
                "temperature_K", "ns_per_day", "wall_s", "device"}
WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)        # several threads on a busy CPU are ~40x slower for these tiny graphs
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    import warnings
    import openmm_e2former
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # the bundled model's BETA notice
            m = openmm_e2former.load_model(None, device="cpu")
    except openmm_e2former.DefaultModelUnavailable:
        pytest.skip("no bundled default model")
    return m.eval()


def _waters(shift: float = 0.0, **extra) -> dict:
    """3 waters in a periodic 7.5 Å box (one wrapped across the boundary), masses with 4 amu hydrogens."""
    pos = np.concatenate([WATER + np.array(p) for p in ([1.0, 1.0, 1.0], [4.0, 3.5, 3.0], [7.2, 5.0, 5.0])])
    return dict(dict(z=[8, 1, 1] * 3, pos0=pos + shift, masses=[8.0, 4.0, 4.0] * 3, cell=np.eye(3) * 7.5, charge=0,
                     bonds=[[0, 1], [0, 2], [3, 4], [3, 5], [6, 7], [6, 8]]), **extra)


def _count_calls(monkeypatch):
    real = stability._model_forces
    calls = []

    def counted(model, systems, idx, x, sizes):
        calls.append(list(idx))
        return real(model, systems, idx, x, sizes)

    monkeypatch.setattr(stability, "_model_forces", counted)
    return calls


def test_min_image_bond_lengths():
    cell = np.eye(3) * 7.5
    x = np.array([[7.3, 0.0, 0.0], [0.2, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0 + 7.5 + 0.9]])
    d = stability._bond_lengths(x, np.array([[0, 1], [2, 3]]), cell)
    assert np.allclose(d, [0.4, 0.9])
    assert np.allclose(stability._bond_lengths(x, np.array([[0, 1]]), None), [7.1])   # gas phase: as is


def test_batched_equals_alone(model, monkeypatch):
    systems = [_waters(0.0), _waters(0.3, charge=0)]
    calls = _count_calls(monkeypatch)
    both = stability.integrate_batched(model, systems, 5, check_every=2, seeds=[11, 12])
    assert calls == [[0, 1]] * 6                     # one model call per step (and the initial one) for both
    for k, s in enumerate(systems):
        alone = stability.integrate_batched(model, [s], 5, check_every=2, seeds=[11 + k])[0]
        b = both[k]
        assert b["completed"] and b["stable"] and b["end"] == "completed" and b["steps"] == 5
        assert b["ps"] == pytest.approx(5 * 1.5e-3)
        assert np.abs(b["positions"] - alone["positions"]).max() < 1e-6      # float32 force rounding only
        assert np.abs(b["velocities"] - alone["velocities"]).max() < 1e-7
        assert np.abs(b["positions"] - s["pos0"]).max() > 1e-3               # it moved
        assert b["worst_bond_ratio"] == pytest.approx(alone["worst_bond_ratio"], rel=1e-6)
        assert 0 < b["max_temperature_K"] < 600.0
    # the seed decides the trajectory, not the position in the batch
    swapped = stability.integrate_batched(model, systems[::-1], 5, check_every=2, seeds=[12, 11])
    assert np.abs(swapped[1]["positions"] - both[0]["positions"]).max() < 1e-6


def test_failing_system_stops_other_continues(model, monkeypatch):
    s0 = _waters(0.0)
    s0["bond_ref"] = 0.5 * stability._bond_lengths(np.asarray(s0["pos0"]), np.asarray(s0["bonds"]), s0["cell"])
    systems = [s0, _waters(0.3)]
    calls = _count_calls(monkeypatch)
    done = []
    res = stability.integrate_batched(model, systems, 6, check_every=2, seeds=[1, 2],
                                      on_done=lambda i, r: done.append((i, r["end"])))
    assert done == [(0, "failed"), (1, "completed")]        # the failed one was reported at once
    assert not res[0]["stable"] and not res[0]["completed"] and res[0]["steps"] == 2
    assert "at 0.0030 ps" in res[0]["reason"] and "bond" in res[0]["reason"] and "ratio" in res[0]["reason"]
    assert res[0]["worst_bond_ratio"] > 1.4
    assert res[1]["stable"] and res[1]["completed"] and res[1]["steps"] == 6
    assert calls == [[0, 1]] * 3 + [[1]] * 4                 # the failed system leaves the batch
    alone = stability.integrate_batched(model, systems[1:], 6, check_every=2, seeds=[2])[0]
    assert np.abs(res[1]["positions"] - alone["positions"]).max() < 1e-6


def test_model_error_stops_one_system(model, monkeypatch):
    systems = [_waters(0.0, explode=True), _waters(0.3)]
    real = stability._model_forces
    calls = []

    def forces(model_, syss, idx, x, sizes):       # the marked system raises from the 3rd call on
        calls.append(list(idx))
        if len(calls) >= 3 and any(syss[i].get("explode") for i in idx):
            raise RuntimeError("boom")
        return real(model_, syss, idx, x, sizes)

    monkeypatch.setattr(stability, "_model_forces", forces)
    res = stability.integrate_batched(model, systems, 4, check_every=1, seeds=[1, 2])
    assert not res[0]["stable"] and res[0]["steps"] == 2 and "RuntimeError: boom" in res[0]["reason"]
    assert res[1]["completed"] and res[1]["steps"] == 4
    # batch raises -> each alone -> system 0 out
    assert calls == [[0, 1], [0, 1], [0, 1], [0], [1], [1], [1]]

    def nan_forces(model_, syss, idx, x, sizes):
        e, f = real(model_, syss, idx, x, sizes)
        return e, f * float("nan")

    monkeypatch.setattr(stability, "_model_forces", nan_forces)
    res = stability.integrate_batched(model, systems[1:], 4, check_every=2, seeds=[2])
    assert not res[0]["stable"] and res[0]["steps"] == 0 and "non-finite forces" in res[0]["reason"]


def test_hot_system_fails_temperature(model):
    hot = stability.integrate_batched(model, [_waters()], 2, temperature=1.0, check_every=1, seeds=[3])
    # the relaxation energy of the start alone heats 9 atoms far above 2 K
    assert not hot[0]["stable"] and "temperature over 2x target" in hot[0]["reason"]
    assert hot[0]["max_temperature_K"] > 2.0


def test_wall_time_limit(model, monkeypatch, tmp_path):
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(stability, "_now", lambda: float(next(clock)))
    res = stability.integrate_batched(model, [_waters(), _waters(0.3)], 100, check_every=50, seeds=[1, 2],
                                      deadline=6.0)
    for r in res:
        assert r["end"] == "time" and r["stable"] and not r["completed"]
        assert 0 < r["steps"] < 100 and "wall-time limit" in r["reason"]
    assert res[0]["steps"] == res[1]["steps"]

    # run_batched: records of all systems with the ps reached, written to out
    monkeypatch.setattr(stability, "build_system", lambda x, *a, **k: _waters(
        0.1 * "GA".index(x), name=f"ACE-{x}-NME (water)", letter=x, hydrogens_repartitioned=6))
    out = tmp_path / "stab.jsonl"
    recs = stability.run_batched(None, ["G", "A"], 1.5, 0.1, "cpu", check_fs=3.0, out=str(out), model=model)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["letter"] for r in lines) == ["A", "G"] and len(recs) == 2
    for r in recs:
        assert set(r) == RUN_ONE_KEYS | {"engine", "batch_systems"} and r["engine"] == "batched"
        assert r["stable"] and not r["completed"] and 0 < r["ps"] < 1.5 and r["target_ps"] == 1.5
        assert r["batch_systems"] == 2 and "wall-time limit" in r["reason"]


def test_interrupt_writes_records(model, monkeypatch, tmp_path):
    monkeypatch.setattr(stability, "build_system", lambda x, *a, **k: _waters(
        0.1 * "GA".index(x), name=f"ACE-{x}-NME (water)", letter=x, hydrogens_repartitioned=6))
    real = stability._model_forces
    calls = []

    def forces(*a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(stability, "_model_forces", forces)
    out = tmp_path / "stab.jsonl"
    with pytest.raises(KeyboardInterrupt):
        stability.run_batched(None, ["G", "A"], 1.5, 5.0, "cpu", check_fs=3.0, out=str(out), model=model)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["letter"] for r in lines] == ["G", "A"]
    for r in lines:   # steps 1, 2 done and checked (check every 2 steps), the interrupt in step 3
        assert r["stable"] and not r["completed"] and r["ps"] == pytest.approx(0.003)
        assert r["reason"].startswith("KeyboardInterrupt")


@pytest.mark.parametrize("hmass", [0.0, 4.0])
def test_build_system_masses(hmass, monkeypatch):
    pytest.importorskip("pdbfixer")
    from openmm import unit
    from training import generate
    built = []
    real_build = generate.build_capped

    def build(*a, **k):    # the masses of the classical system as built (the solvent count varies per call)
        b = real_build(*a, **k)
        built.append((b, np.array([b.system.getParticleMass(i).value_in_unit(unit.amu)
                                   for i in range(b.system.getNumParticles())])))
        return b

    monkeypatch.setattr(generate, "build_capped", build)
    s = stability.build_system("G", 0, 1.0, hmass)
    (b, real), = built
    z = np.asarray(s["z"])
    assert len(s["masses"]) == len(z) == len(real) and s["pos0"].shape == (len(z), 3)
    if hmass == 0:
        assert np.array_equal(s["masses"], real) and s["hydrogens_repartitioned"] == 0
    else:
        assert np.allclose(s["masses"][z == 1], 4.0) and s["hydrogens_repartitioned"] == int((z == 1).sum())
        assert abs(s["masses"].sum() - real.sum()) < 1e-6
    n_water = sum(1 for r in b.topology.residues() if r.name == "HOH")
    assert len(s["bonds"]) >= 2 * n_water                  # every water O-H and the solute bonds
    d = stability._bond_lengths(s["pos0"], s["bonds"], s["cell"])
    assert 0.9 < d.min() and d.max() < 1.7                 # covalent, minimum image across the box
    assert np.allclose(s["cell"], np.asarray(b.box) * 10.0)


def test_run_batched_capped_gly(model, tmp_path):
    """The real thing, tiny: ACE-G-NME in the smallest box build_capped makes (~400 atoms), 2 steps."""
    pytest.importorskip("pdbfixer")
    out = tmp_path / "stab.jsonl"
    recs = stability.run_batched(None, ["G"], 0.003, 5.0, "cpu", timestep_fs=1.5, hmass=0.0, check_fs=1.5,
                                 box_nm=1.0, out=str(out))
    assert len(recs) == 1
    r = recs[0]
    assert set(r) == RUN_ONE_KEYS | {"engine", "batch_systems"}
    assert r["engine"] == "batched" and r["batch_systems"] == 1 and r["letter"] == "G"
    assert r["stable"] and r["completed"] and r["ps"] == pytest.approx(0.003) and r["target_ps"] == 0.003
    assert r["hmass_amu"] == 0.0 and r["hydrogens_repartitioned"] == 0 and r["atoms"] > 300
    assert r["worst_bond_ratio"] < 1.4 and 0 < r["max_temperature_K"] < 600 and r["ns_per_day"] > 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == [r]


def test_cli_batched_part_and_resume(model, monkeypatch, tmp_path, capsys):
    seen = []

    def fake(model_path, letters, ps, minutes, device, *a, out=None, **k):
        seen.append(list(letters))
        with open(out, "a") as fh:
            for x in letters:
                fh.write(json.dumps({"letter": x, "ps": ps, "stable": True, "completed": True}) + "\n")
        return []

    monkeypatch.setattr(stability, "run_batched", fake)
    out = tmp_path / "stab.jsonl"
    assert stability.main(["--engine", "batched", "--out", str(out), "--letters", "GAS", "--part", "0/2"]) == 0
    assert seen == [["G", "S"]]                              # the whole part in one batch
    assert stability.main(["--engine", "batched", "--out", str(out), "--letters", "GASW"]) == 0
    assert seen[-1] == ["A", "W"]                            # letters already in --out are skipped
    assert stability.main(["--engine", "batched", "--out", str(out), "--letters", "GA"]) == 0
    assert len(seen) == 2                                    # nothing left: no batch
    # the real run_batched through the CLI (tiny systems instead of amino acids)
    monkeypatch.undo()
    monkeypatch.setattr(stability, "build_system", lambda x, *a, **k: _waters(
        0.1 * "GA".index(x), name=f"ACE-{x}-NME (water)", letter=x, hydrogens_repartitioned=6))
    out2 = tmp_path / "cli.jsonl"
    assert stability.main(["--engine", "batched", "--out", str(out2), "--letters", "GA", "--ps", "0.003",
                           "--check-fs", "1.5"]) == 0
    lines = [json.loads(x) for x in out2.read_text().splitlines()]
    assert [r["letter"] for r in lines] == ["G", "A"] and all(r["completed"] for r in lines)
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert printed == lines


def _ml_it(it: int) -> int:
    """The tests' cap on run_one's ML minimisation (100 iterations there, ~0.6 s per CPU force call: a minute per
    test); the classical relax (1000 iterations, cheap) keeps its count."""
    return min(it, 5) if it <= 100 else it


def _cap_ml_minimisation(monkeypatch):
    import openmm

    real_min = openmm.LocalEnergyMinimizer.minimize
    monkeypatch.setattr(openmm.LocalEnergyMinimizer, "minimize",
                        staticmethod(lambda ctx, tol, it: real_min(ctx, tol, _ml_it(it))))


def test_run_one_resumes_from_saved_state(tmp_path, monkeypatch):
    """openmm engine with --state-dir: a run cut by the wall-time limit saves its state, the next call continues
    it (no second ML minimisation) to the target and then removes the state; main() reruns resumable records."""
    import openmm

    minimised = []
    real_min = openmm.LocalEnergyMinimizer.minimize
    monkeypatch.setattr(openmm.LocalEnergyMinimizer, "minimize",
                        staticmethod(lambda ctx, tol, it: minimised.append(it) or real_min(ctx, tol, _ml_it(it))))
    sd = tmp_path / "state"
    kw = dict(device="cpu", platform="CPU", check_fs=3.0, state_dir=str(sd), box_nm=1.0)
    r1 = stability.run_one(None, "G", ps=0.006, minutes=1e-9, **kw)          # stops before the first step
    assert RUN_ONE_KEYS <= set(r1) and r1["resumable"] and r1["stable"] and not r1["completed"]
    assert r1["ps"] == 0.0 and r1["segments"] == 1 and (sd / "ACE-G.xml").exists()
    assert (sd / "ACE-G.system.xml").exists()                               # the System (solvation varies)
    n_min = len(minimised)                                                  # classical relax + ML minimisation
    r2 = stability.run_one(None, "G", ps=0.006, minutes=5, **kw)
    assert len(minimised) == n_min                                          # no rebuild, no minimisation
    assert r2["atoms"] == r1["atoms"] and r2["charge"] == r1["charge"]
    assert r2["completed"] and not r2["resumable"] and r2["segments"] == 2 and r2["ps"] == pytest.approx(0.006)
    assert not any(sd.iterdir())                                            # state removed when completed
    # main(): a resumable latest record is continued, a final one is skipped
    out = tmp_path / "stab.jsonl"
    out.write_text(json.dumps(dict(r1, letter="G")) + "\n" + json.dumps(dict(r2, letter="A")) + "\n")
    calls = []
    monkeypatch.setattr(stability, "run_one", lambda *a, **k: calls.append(a[1]) or dict(r2, letter=a[1]))
    assert stability.main(["--out", str(out), "--letters", "AG", "--state-dir", str(sd)]) == 0
    assert calls == ["G"]


def _box64(seed: float, **extra) -> dict:
    """64 waters in a 12.4 Å box (edges longer than 2 cutoffs, as the graphed engine needs)."""
    from helpers import water_box
    z, pos, cell = water_box(4, 3.1, seed=int(seed))
    bonds = [[o, o + k] for o in range(0, len(z), 3) for k in (1, 2)]
    masses = [16.0 if x == 8 else 4.0 for x in z]
    return dict(dict(z=list(z), pos0=pos, masses=masses, cell=cell, charge=0, bonds=bonds), **extra)


def test_graphed_engine_equals_plain_and_per_system_targets(model, monkeypatch):
    """graphed=True (BatchedGraphedEnergyForces, the neighbour list inside) gives the trajectories of the plain
    batched engine; per-system step targets finish each system at its own; small boxes are refused by name."""
    systems = [_box64(1), _box64(2, charge=1)]
    plain = stability.integrate_batched(model, systems, [3, 5], check_every=2, seeds=[5, 6])
    calls = _count_calls(monkeypatch)
    built = []
    from openmm_e2former import graphed as G
    real = G.BatchedGraphedEnergyForces.__init__
    monkeypatch.setattr(G.BatchedGraphedEnergyForces, "__init__",
                        lambda self, m, zs, *a, **k: built.append(len(zs)) or real(self, m, zs, *a, **k))
    fast = stability.integrate_batched(model, systems, [3, 5], check_every=2, seeds=[5, 6], graphed=True)
    assert calls == []                                   # no eager model call
    assert built == [2, 1]                               # rebuilt once system 0 finished at its 3 steps
    for p, f, n in zip(plain, fast, (3, 5)):
        assert f["completed"] and f["steps"] == n and p["steps"] == n
        assert np.abs(f["positions"] - p["positions"]).max() < 1e-6        # float32 force rounding only
        assert np.abs(f["velocities"] - p["velocities"]).max() < 1e-7
    with pytest.raises(ValueError, match="2 x the cutoff"):
        stability.integrate_batched(model, [_waters()], 2, graphed=True)   # 7.5 Å box


def test_batched_engine_resumes_openmm_state_and_back(tmp_path, model, monkeypatch):
    """--state-dir is shared by the engines: the batched engine continues a run saved by run_one (same atoms,
    masses, bonds; counters carried on), saves its own state in run_one's format, and run_one finishes it."""
    pytest.importorskip("pdbfixer")
    _cap_ml_minimisation(monkeypatch)
    sd = tmp_path / "state"
    kw = dict(timestep_fs=1.5, hmass=4.0, check_fs=3.0, box_nm=1.0)
    r1 = stability.run_one(None, "G", ps=0.009, minutes=1e-9, device="cpu", platform="CPU", state_dir=str(sd), **kw)
    assert r1["resumable"] and r1["ps"] == 0.0
    saved = stability._load_saved(str(sd), "G", 1.5, 4.0, stability._model_hash(None))
    assert len(saved["z"]) == r1["atoms"] and saved["charge"] == 0 and saved["vel0"].shape == (r1["atoms"], 3)
    assert (saved["masses"] == 4.0).sum() == saved["hydrogens_repartitioned"] > 0    # the repartitioned masses
    # the batched engine: 2 steps (3 fs) of the 9 fs, then its wall-time limit
    ticks = iter(range(10 ** 6))
    import training.stability as S
    real_now = S._now
    S._now = lambda: real_now() + (0.0 if next(ticks) < 8 else 1e9)          # the deadline hits after a few calls
    try:
        out = tmp_path / "stab.jsonl"
        recs = stability.run_batched(None, ["G"], 0.009, 5.0, "cpu", out=str(out), model=model, state_dir=str(sd),
                                     **kw)
    finally:
        S._now = real_now
    r2 = recs[0]
    assert r2["stable"] and r2["resumable"] and not r2["completed"] and r2["segments"] == 2, r2
    assert 0 < r2["ps"] < 0.009 and "resumable" in r2["reason"]
    prog = json.loads((sd / "ACE-G.json").read_text())
    assert prog["steps"] == round(r2["ps"] / 1.5e-3) and prog["segments"] == 2
    # run_one takes it from there to the end and removes the state
    r3 = stability.run_one(None, "G", ps=0.009, minutes=5, device="cpu", platform="CPU", state_dir=str(sd), **kw)
    assert r3["completed"] and r3["segments"] == 3 and not any(sd.iterdir())
    assert 0.009 - 1e-12 <= r3["ps"] < 0.009 + 0.003                         # run_one steps in 3 fs check chunks


def _gas_pair(**extra) -> dict:
    """Two waters 3 Å apart, gas phase (the graphed engine's in-graph neighbour list takes any gas system)."""
    pos = np.concatenate([WATER, WATER + [3.0, 0.0, 0.0]])
    return dict(dict(z=[8, 1, 1] * 2, pos0=pos, masses=[16.0, 4.0, 4.0] * 2, cell=None, charge=0,
                     bonds=[[0, 1], [0, 2], [3, 4], [3, 5]], vel0=np.zeros((6, 3))), **extra)


def test_graphed_engine_failures_stay_per_system(model, monkeypatch):
    """A system whose positions turn non-finite fails alone (the others of the graphed batch go on); a graphed
    call that raises runs that step eagerly with a warning and is counted; too many atom pairs are refused."""
    fly = np.zeros((6, 3))
    fly[0, 0] = 1e39                                       # finite in float64, inf in float32 after one step
    res = stability.integrate_batched(model, [_gas_pair(), _gas_pair(vel0=fly)], 4, check_every=2, seeds=[1, 2],
                                      graphed=True)
    assert res[0]["completed"] and res[0]["graphed_eager_steps"] == 0
    assert res[1]["end"] == "failed" and "non-finite" in res[1]["reason"]
    from openmm_e2former import graphed as G
    real = G.BatchedGraphedEnergyForces.__call__
    n = {"k": 0}

    def flaky(self, *a):
        n["k"] += 1
        if n["k"] == 2:
            raise RuntimeError("boom")
        return real(self, *a)

    monkeypatch.setattr(G.BatchedGraphedEnergyForces, "__call__", flaky)
    with pytest.warns(RuntimeWarning, match="boom"):
        res = stability.integrate_batched(model, [_gas_pair()], 3, check_every=2, seeds=[1], graphed=True)
    assert res[0]["completed"] and res[0]["graphed_eager_steps"] == 1
    monkeypatch.setattr(G, "DENSE_MAX_PAIRS", 50)
    with pytest.raises(ValueError, match="DENSE_MAX_PAIRS"):
        stability.integrate_batched(model, [_gas_pair()] * 2, 3, graphed=True)


def test_interrupted_state_step_matches_the_state(model, monkeypatch):
    """An interrupt between steps hands back the state of the last finished step and says which (state_step);
    the verified steps (last passed check) may be fewer."""
    real = stability._now
    n = {"k": 0}

    def now():
        n["k"] += 1
        if n["k"] == 8:
            raise KeyboardInterrupt
        return real()

    got = []
    monkeypatch.setattr(stability, "_now", now)
    with pytest.raises(KeyboardInterrupt):
        stability.integrate_batched(model, [_gas_pair()], 100, check_every=4, seeds=[1], deadline=real() + 1e6,
                                    on_done=lambda i, r: got.append(r))
    monkeypatch.setattr(stability, "_now", real)
    r = got[0]
    assert r["end"] == "interrupted" and r["steps"] <= r["state_step"] and r["state_step"] > 0
    ref = stability.integrate_batched(model, [_gas_pair()], r["state_step"], check_every=4, seeds=[1])[0]
    assert np.abs(r["positions"] - ref["positions"]).max() < 1e-12
    assert np.abs(r["velocities"] - ref["velocities"]).max() < 1e-12
