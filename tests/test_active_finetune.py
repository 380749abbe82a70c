"""Fine-tuning from a checkpoint (``train.init_from``), the active-learning selection options (``--train-only``,
``--part``), ``active._forces`` / ``student_md`` on the host in float64, and the stability helpers
(``repartition_hydrogens``, ``summary``).  CPU, tiny synthetic shards (placeholder-teacher labels from a
harmonic O-H model), a 1-layer 16-channel model; a few seconds in all.
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
pytest.importorskip("ase")
pytest.importorskip("yaml")

if importlib.util.find_spec("training") is None:   # repository root not on sys.path (plain `pytest`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import active, refs, stability, train  # noqa: E402
from training.label import PLACEHOLDER_TEACHER  # noqa: E402
from training.shards import save_shard  # noqa: E402

QUIET = lambda *a: None  # noqa: E731
# (system, kind, waters): two kinds with several systems each, so the validation split holds some out per kind
SYSTEMS = [("wc_0", "water_cluster", 3), ("wc_1", "water_cluster", 1), ("wc_2", "water_cluster", 2),
           ("wc_3", "water_cluster", 2), ("wc_4", "water_cluster", 3),
           ("gas_a", "gas_small", 1), ("gas_b", "gas_small", 2), ("gas_c", "gas_small", 1)]
WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])


def _water_frames(n_waters: int, n_frames: int, rng: np.random.Generator):
    pos = []
    for _ in range(n_frames):
        xyz = np.concatenate([WATER + np.array([3.0 * w, 0.0, 0.0]) for w in range(n_waters)])
        pos.append(xyz + rng.normal(scale=0.05, size=xyz.shape))
    return np.array(pos)


def _harmonic_labels(pos: np.ndarray, n_waters: int):
    """E = sum_OH k (r - r0)^2 + per-atom offsets (eV), F = -dE/dx (eV/Å)."""
    k, r0 = 20.0, 0.9572
    energy, forces = [], []
    for x in pos:
        e = n_waters * (-430.0 - 2 * 13.6)
        f = np.zeros_like(x)
        for w in range(n_waters):
            o = 3 * w
            for h in (o + 1, o + 2):
                d = x[h] - x[o]
                r = np.linalg.norm(d)
                e += k * (r - r0) ** 2
                g = 2 * k * (r - r0) * d / r
                f[h] -= g
                f[o] += g
        energy.append(e)
        forces.append(f)
    return np.array(energy), np.array(forces, np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("active_finetune")
    lab = root / "lab"
    rng = np.random.default_rng(0)
    for system, kind, nw in SYSTEMS:
        pos = _water_frames(nw, 2, rng)
        e, f = _harmonic_labels(pos, nw)
        save_shard(lab / f"{system}_T300.npz", dict(
            Z=np.tile(np.array([8, 1, 1], np.int16), nw), positions=pos.astype(np.float32),
            cell=np.zeros((2, 3, 3), np.float32), pbc=np.zeros(3, bool), charge=0, multiplicity=1,
            system=system, kind=kind, temperature=300.0, source="synthetic", energy=e, forces=f,
            labelled=np.ones(2, bool), teacher=PLACEHOLDER_TEACHER))
    assert refs.main(["--data", str(lab), "--out", str(root / "refs.json")]) == 0
    return root


def _cfg(root: Path, out: Path, *extra: str):
    return train.load_config(Path(train.__file__).parent / "configs" / "default.yaml", [
        f"out_dir={out}", f"data.dirs=[{root / 'lab'}]", f"data.refs={root / 'refs.json'}",
        "data.atoms_per_step=12", "train.log_every=1", "train.val_every=1000", "train.ckpt_every=1000",
        "train.max_steps=3", "train.warmup_steps=1", "train.device=cpu",
        "model.channels=16", "model.num_layers=1", "model.num_heads=4", "model.head_dim=4",
        "model.num_basis=8", "model.max_neighbors=32", "model.atom_embed_size=8", *extra])


@pytest.fixture(scope="module")
def run_a(data):
    """A short finished run: checkpoint.pt (model != EMA) and the exported model.pt."""
    res = train.train(_cfg(data, data / "A"), steps=3, log=QUIET)
    assert res["step"] == 3 and res["done"] and (data / "A" / "model.pt").exists()
    return data / "A"


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------------------------- init_from
def test_init_from_starts_at_the_ema_weights(data, run_a):
    a = _load(run_a / "checkpoint.pt")
    floats = [k for k, v in a["model"].items() if v.dtype.is_floating_point]
    # the EMA differs from the raw weights after 3 steps, so "EMA, not model" is a real distinction
    assert any(not torch.equal(a["model"][k], a["ema"][k]) for k in floats)

    # plain fresh run, 0 steps: the seed initialisation
    train.train(_cfg(data, data / "C"), steps=0, log=QUIET)
    c = _load(data / "C" / "checkpoint.pt")

    logs = []
    res = train.train(_cfg(data, data / "B", f"train.init_from={run_a / 'checkpoint.pt'}"), steps=0,
                      log=logs.append)
    assert res["step"] == 0
    assert any("initialised from" in str(m) for m in logs)
    b = _load(data / "B" / "checkpoint.pt")
    assert b["step"] == 0 and b["epoch"] == 0 and b["cursor"] == 0
    assert b["optimizer"]["state"] == {}                     # fresh optimiser
    assert set(b["model"]) == set(a["ema"])
    for k in a["ema"]:
        assert torch.equal(b["model"][k], a["ema"][k]), k    # starts at A's EMA weights ...
        assert torch.equal(b["ema"][k], a["ema"][k]), k      # ... and its EMA starts there too
    assert any(not torch.equal(b["model"][k], c["model"][k]) for k in floats)   # not the seed init

    # a later call resumes B's own checkpoint (does not re-initialise from init_from)
    logs.clear()
    res = train.train(_cfg(data, data / "B", f"train.init_from={run_a / 'checkpoint.pt'}"), steps=1,
                      log=logs.append)
    assert res["step"] == 1
    assert any("resumed" in str(m) for m in logs) and not any("initialised from" in str(m) for m in logs)
    # --fresh ignores B's checkpoint and initialises from A again
    logs.clear()
    train.train(_cfg(data, data / "B", f"train.init_from={run_a / 'checkpoint.pt'}"), steps=0, fresh=True,
                log=logs.append)
    assert any("initialised from" in str(m) for m in logs)
    b2 = _load(data / "B" / "checkpoint.pt")
    assert b2["step"] == 0 and all(torch.equal(b2["model"][k], a["ema"][k]) for k in a["ema"])


def test_init_from_refuses_another_architecture(data, run_a):
    cfg = _cfg(data, data / "D", f"train.init_from={run_a / 'checkpoint.pt'}", "model.channels=8",
               "model.num_heads=2")
    with pytest.raises(ValueError, match="init_from"):
        train.train(cfg, steps=0, log=QUIET)
    assert not (data / "D" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------------- active.py
def _active_systems(monkeypatch, model: Path, lab: Path, out: Path, *extra: str):
    """Run active.main with MD replaced by 'no frames'; return the systems of the logged round, in order."""
    calls = []

    def no_md(model_, z, pos0, *a, **k):
        calls.append(len(z))
        return np.zeros((0, len(z), 3)), False

    monkeypatch.setattr(active, "student_md", no_md)
    assert active.main(["--model-a", str(model), "--data", str(lab), "--out", str(out),
                        "--teacher", "mm-placeholder", "--steps", "2", "--stride", "1", *extra]) == 0
    rec = json.loads((out / "active_log.jsonl").read_text().splitlines()[-1])
    assert all(s["frames"] == 0 and not s["blew_up"] for s in rec["systems"])
    assert len(calls) == len(rec["systems"])
    return [s["system"] for s in rec["systems"]]


@pytest.mark.parametrize("val_fraction,seed", [("0.4", "3"), ("0.1", "0")])
def test_active_train_only_skips_validation_systems(data, run_a, monkeypatch, tmp_path, val_fraction, seed):
    lab = data / "lab"
    everything = _active_systems(monkeypatch, run_a / "model.pt", lab, tmp_path / "all", "--systems", "wc_", "gas_")
    assert sorted(everything) == sorted(s for s, _, _ in SYSTEMS)
    fr = train.Frames([lab])
    tr, va = fr.split(float(val_fraction), int(seed))
    held_out = {fr.shards[fr.index[i][0]]["system"] for i in va}
    in_train = {fr.shards[fr.index[i][0]]["system"] for i in tr}
    # a held-out system in each kind (>= 2 systems per kind), and not all of them
    assert {k for s, k, _ in SYSTEMS if s in held_out} == {"water_cluster", "gas_small"}
    assert in_train and not held_out & in_train
    chosen = _active_systems(monkeypatch, run_a / "model.pt", lab, tmp_path / "train_only", "--systems", "wc_",
                             "gas_", "--train-only", val_fraction, seed)
    assert set(chosen) == set(everything) - held_out == in_train
    assert chosen == [s for s in everything if s not in held_out]    # order kept
    # --part i/n splits exactly these systems over the workers, disjointly
    parts = [_active_systems(monkeypatch, run_a / "model.pt", lab, tmp_path / f"p{i}", "--systems", "wc_", "gas_",
                             "--train-only", val_fraction, seed, "--part", f"{i}/2") for i in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(chosen)


def test_active_part_without_train_only(data, run_a, monkeypatch, tmp_path):
    lab = data / "lab"
    default = _active_systems(monkeypatch, run_a / "model.pt", lab, tmp_path / "d")
    assert sorted(default) == ["gas_a", "wc_1"]          # smallest system of each kind (first of equal size)
    everything = _active_systems(monkeypatch, run_a / "model.pt", lab, tmp_path / "e", "--systems", "_")
    parts = [_active_systems(monkeypatch, run_a / "model.pt", lab, tmp_path / f"q{i}", "--systems", "_",
                             "--part", f"{i}/3") for i in range(3)]
    assert [len(p) for p in parts] == [3, 3, 2]
    assert sorted(sum(parts, [])) == sorted(everything) and len(set(sum(parts, []))) == len(everything)


def test_placeholder_teacher_cannot_label_new_frames(data, run_a, monkeypatch, tmp_path):
    monkeypatch.setattr(active, "student_md", lambda m, z, pos0, *a, **k: (pos0.numpy()[None].copy(), False))
    with pytest.raises(RuntimeError, match="placeholder teacher"):
        active.main(["--model-a", str(run_a / "model.pt"), "--data", str(data / "lab"), "--out", str(tmp_path),
                     "--teacher", "mm-placeholder", "--systems", "wc_1"])


def test_forces_and_student_md_on_host_float64(run_a):
    from openmm_e2former.model import load_model
    model = load_model(run_a / "model.pt", dtype=torch.float32)
    z = torch.tensor([8, 1, 1])
    pos = torch.as_tensor(WATER, dtype=torch.float64)
    f = active._forces(model, z, pos, None, None, 0)
    assert f.dtype == torch.float64 and f.device.type == "cpu" and f.shape == (3, 3)
    assert torch.isfinite(f).all()
    frames, blew_up = active.student_md(model, z, pos, None, None, 0, 300.0, steps=4, stride=2, fmax=1e6, seed=1)
    assert not blew_up and frames.shape == (2, 3, 3) and frames.dtype == np.float64
    assert np.isfinite(frames).all() and not np.allclose(frames[0], WATER)
    again, _ = active.student_md(model, z, pos, None, None, 0, 300.0, steps=4, stride=2, fmax=1e6, seed=1)
    assert np.array_equal(frames, again)                  # seeded


# ----------------------------------------------------------------------------------------------- stability.py
def _masses(system):
    from openmm import unit
    return np.array([system.getParticleMass(i).value_in_unit(unit.amu) for i in range(system.getNumParticles())])


def _heavy_partner(topology):
    out = {}
    for a, b in topology.bonds():
        for h, x in ((a, b), (b, a)):
            if h.element.symbol == "H" and x.element.symbol != "H":
                out[h.index] = x.index
    return out


@pytest.mark.parametrize("build", ["water_box", "capped_ala"])
def test_repartition_hydrogens(build):
    pytest.importorskip("pdbfixer")
    from training import generate
    b = generate.build_water_box(8, 1.0, 0) if build == "water_box" else generate.build_capped("A", None, False, 0)
    m0 = _masses(b.system)
    partner = _heavy_partner(b.topology)
    n_h = sum(1 for a in b.topology.atoms() if a.element.symbol == "H")
    assert len(partner) == n_h > 0
    n = stability.repartition_hydrogens(b.system, b.topology, 4.0)
    assert n == n_h
    m1 = _masses(b.system)
    for h in partner:
        assert m1[h] == pytest.approx(4.0, abs=1e-12)
    for x in set(range(len(m0))) - set(partner):       # heavy atoms lose exactly what their hydrogens gained
        gained = sum(4.0 - m0[h] for h, p in partner.items() if p == x)
        assert m1[x] == pytest.approx(m0[x] - gained, abs=1e-9)
        assert m1[x] > 1.0
    assert abs(m1.sum() - m0.sum()) < 1e-9
    for res in b.topology.residues():                    # every molecule (residue) keeps its mass
        idx = [a.index for a in res.atoms()]
        assert abs(m1[idx].sum() - m0[idx].sum()) < 1e-9
    if build == "water_box":
        assert np.allclose(m1[0::3], m0[0::3] - 2 * (4.0 - m0[1]))
        assert b.system.getNumParticles() == 24


def test_repartition_hydrogens_refuses_too_heavy():
    from training import generate
    b = generate.build_water_box(2, 1.0, 0)
    with pytest.raises(ValueError, match="too light"):
        stability.repartition_hydrogens(b.system, b.topology, 9.0)   # O would keep 16 - 2 * 8 < 1 amu


def test_stability_summary(tmp_path, capsys):
    recs = [
        {"letter": "G", "ps": 5.0, "stable": False, "completed": False},
        {"letter": "A", "ps": 50.0, "stable": True, "completed": True},
        {"letter": "G", "ps": 50.0, "stable": True, "completed": True},     # the later G replaces the first
        {"letter": "W", "ps": 12.5, "stable": False, "completed": False},
        {"letter": "C", "ps": 30.0, "stable": True, "completed": False},     # stable, ran out of wall time
        {"letter": "A", "ps": 20.0, "stable": True, "completed": False},     # the later A replaces the first
    ]
    p = tmp_path / "stab.jsonl"
    lines = [json.dumps(r) for r in recs]
    p.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")   # a blank line is skipped
    s = stability.summary(str(p))
    assert s["n"] == 4
    assert [r["letter"] for r in s["systems"]] == ["A", "C", "G", "W"]   # amino-acid order
    assert s["systems"][0]["ps"] == 20.0 and s["systems"][2]["ps"] == 50.0
    assert s["stable"] == 3 and s["completed"] == 1
    assert s["min_ps"] == 12.5
    assert stability.main(["--summary", str(p)]) == 0
    assert json.loads(capsys.readouterr().out) == s
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert stability.summary(str(empty)) == {"systems": [], "n": 0, "stable": 0, "completed": 0, "min_ps": 0.0}
