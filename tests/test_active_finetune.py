"""Fine-tuning from a checkpoint (``train.init_from``), the active-learning selection options (``--train-only``,
``--part``, ``--batch-systems``, seeds per shard name), ``active._forces`` / ``student_md`` on the host in float64,
``student_md_batched`` (== ``student_md`` system by system, blow-ups stop one system), the end-to-end round with
a batched teacher stub, and the stability helpers
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
from helpers import tiny_train_config  # noqa: E402

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
    return tiny_train_config(root, out, "lab", 12, 32, *extra)


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

    def no_md(model_, systems, *a, **k):     # student_md_batched: one (frames, stopped_early) per system
        calls.extend(len(s["z"]) for s in systems)
        return [(np.zeros((0, len(s["z"]), 3)), False) for s in systems]

    monkeypatch.setattr(active, "student_md_batched", no_md)
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
    monkeypatch.setattr(active, "student_md_batched",
                        lambda m, systems, *a, **k: [(s["pos0"].numpy()[None].copy(), False) for s in systems])
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


# ----------------------------------------------------------------------------------------------- batched MD
def _tiny_systems():
    """A periodic 2-water box (7 Å), a 3-water gas cluster and one gas water; float64 host tensors."""
    rng = np.random.default_rng(5)
    box = np.concatenate([WATER + np.array([1.0, 1.0, 1.0]), WATER + np.array([4.0, 3.5, 3.0])])
    cluster = _water_frames(3, 1, rng)[0]
    z2, z3 = torch.tensor([8, 1, 1] * 2), torch.tensor([8, 1, 1] * 3)
    return [dict(z=z2, pos0=torch.as_tensor(box, dtype=torch.float64), cell=torch.eye(3, dtype=torch.float64) * 7.0,
                 pbc=torch.ones(3, dtype=torch.bool), charge=0),
            dict(z=z3, pos0=torch.as_tensor(cluster, dtype=torch.float64), cell=None, pbc=None, charge=0),
            dict(z=torch.tensor([8, 1, 1]), pos0=torch.as_tensor(WATER + 0.1, dtype=torch.float64), cell=None,
                 pbc=None, charge=-1)]


@pytest.fixture(scope="module")
def tiny_model(run_a):
    from openmm_e2former.model import load_model
    return load_model(run_a / "model.pt", dtype=torch.float32)


def test_forces_batch_equals_forces(tiny_model):
    systems = _tiny_systems()
    xs = [s["pos0"] for s in systems]
    batched = active._forces_batch(tiny_model, systems, xs)
    for s, x, fb in zip(systems, xs, batched):
        f = active._forces(tiny_model, s["z"], x, s["cell"], s["pbc"], s["charge"])
        assert fb.dtype == torch.float64 and fb.device.type == "cpu" and fb.shape == f.shape
        assert float(f.abs().max()) > 1e-3                                      # not trivially zero
        assert torch.allclose(fb, f, rtol=1e-5, atol=1e-6 * float(f.abs().max()))


def test_student_md_batched_equals_sequential(tiny_model):
    systems = _tiny_systems()
    temps, seeds = [300.0, 500.0, 200.0], [11, 12, 13]
    batched = active.student_md_batched(tiny_model, systems, temps, steps=5, stride=1, fmax=1e6, seeds=seeds)
    assert len(batched) == 3
    for s, T, seed, (frames, stopped) in zip(systems, temps, seeds, batched):
        ref, ref_stopped = active.student_md(tiny_model, s["z"], s["pos0"], s["cell"], s["pbc"], s["charge"], T,
                                             steps=5, stride=1, fmax=1e6, seed=seed)
        assert not stopped and not ref_stopped
        assert frames.dtype == np.float64 and frames.shape == ref.shape == (5, len(s["z"]), 3)
        assert np.abs(frames - ref).max() < 1e-6                     # same trajectory (float32 force rounding)
        assert np.abs(frames[-1] - s["pos0"].numpy()).max() > 1e-4   # and it moved
    # stride, one temperature / seed for all, and a system alone in a batch is student_md itself
    again = active.student_md_batched(tiny_model, systems[1:2], 300.0, steps=4, stride=2, fmax=1e6, seeds=7)
    s = systems[1]
    ref, _ = active.student_md(tiny_model, s["z"], s["pos0"], s["cell"], s["pbc"], 0, 300.0, steps=4, stride=2,
                               fmax=1e6, seed=7)
    assert again[0][0].shape == (2, 9, 3) and np.abs(again[0][0] - ref).max() < 1e-6
    assert systems[1]["pos0"].equal(torch.as_tensor(_tiny_systems()[1]["pos0"]))   # inputs untouched


def test_student_md_batched_overlap_stops_one_system(tiny_model):
    systems = _tiny_systems()[1:]
    bad = systems[0]["pos0"].clone()
    bad[4] = bad[3] + torch.tensor([0.3, 0.0, 0.0], dtype=torch.float64)   # two atoms 0.3 Å apart (gas phase)
    systems[0] = dict(systems[0], pos0=bad)
    res = active.student_md_batched(tiny_model, systems, 300.0, steps=3, stride=1, fmax=1e6, seeds=[1, 2])
    (f0, stop0), (f1, stop1) = res
    assert stop0 and f0.shape == (0, 9, 3)                      # stopped at the first step, no frames
    assert not stop1 and f1.shape == (3, 3, 3)
    ref, ref_stop = active.student_md(tiny_model, systems[0]["z"], bad, None, None, 0, 300.0, steps=3, stride=1,
                                      fmax=1e6, seed=1)
    assert ref_stop and len(ref) == 0                           # the same criterion as student_md
    ref1, _ = active.student_md(tiny_model, systems[1]["z"], systems[1]["pos0"], None, None, -1, 300.0, steps=3,
                                stride=1, fmax=1e6, seed=2)
    assert np.abs(f1 - ref1).max() < 1e-6


def test_student_md_batched_blow_up_keeps_frames_others_continue(tiny_model, monkeypatch):
    systems = _tiny_systems()[:2]
    systems[0] = dict(systems[0], explode=True)
    real = active._forces_batch
    sizes = []

    def forces(model, syss, xs):          # NaN forces for the marked system from the 3rd MD step on
        sizes.append(len(syss))
        out = real(model, syss, xs)
        if len(sizes) > 3:
            out = [f * float("nan") if s.get("explode") else f for s, f in zip(syss, out)]
        return out

    monkeypatch.setattr(active, "_forces_batch", forces)
    (f0, stop0), (f1, stop1) = active.student_md_batched(tiny_model, systems, 300.0, steps=6, stride=1, fmax=1e6,
                                                         seeds=[3, 4])
    assert stop0 and f0.shape == (2, 6, 3) and np.isfinite(f0).all()   # frames of steps 1, 2 kept
    assert not stop1 and f1.shape == (6, 9, 3)
    assert sizes == [2, 2, 2, 2, 1, 1, 1]      # one call per step over the systems still running
    monkeypatch.setattr(active, "_forces_batch", real)
    ref1, _ = active.student_md(tiny_model, systems[1]["z"], systems[1]["pos0"], None, None, 0, 300.0, steps=6,
                                stride=1, fmax=1e6, seed=4)
    assert np.abs(f1 - ref1).max() < 1e-6
    ref0, _ = active.student_md(tiny_model, systems[0]["z"], systems[0]["pos0"], systems[0]["cell"],
                                systems[0]["pbc"], 0, 300.0, steps=2, stride=1, fmax=1e6, seed=3)
    assert np.abs(f0 - ref0).max() < 1e-6


# ----------------------------------------------------------------------------------------------- active.main
def _active_records(monkeypatch, model: Path, lab: Path, out: Path, *extra: str):
    """active.main with MD replaced by 'no frames'; (logged records, systems per MD batch, seeds passed)."""
    batches, seeds = [], []

    def no_md(model_, systems, temps, steps, stride, **k):
        batches.append(len(systems))
        seeds.extend(k["seeds"])
        return [(np.zeros((0, len(s["z"]), 3)), False) for s in systems]

    monkeypatch.setattr(active, "student_md_batched", no_md)
    assert active.main(["--model-a", str(model), "--data", str(lab), "--out", str(out),
                        "--teacher", "mm-placeholder", "--steps", "2", "--stride", "1", *extra]) == 0
    rec = json.loads((out / "active_log.jsonl").read_text().splitlines()[-1])
    assert rec["complete"] and [s["seed"] for s in rec["systems"]] == seeds
    return rec["systems"], batches, seeds


def test_active_train_only_before_smallest_per_kind(data, run_a, monkeypatch, tmp_path):
    lab = data / "lab"
    size = {s: nw for s, _, nw in SYSTEMS}
    kind = {s: k for s, k, _ in SYSTEMS}
    everything = [s["system"] for s in _active_records(monkeypatch, run_a / "model.pt", lab, tmp_path / "e",
                                                       "--systems", "_")[0]]
    fr = train.Frames([lab])
    found = 0
    for seed in range(40):            # splits that hold out the smallest system of a kind (wc_1 or gas_a)
        _, va = fr.split(0.3, seed)
        held_out = {fr.shards[fr.index[i][0]]["system"] for i in va}
        if not held_out & {"wc_1", "gas_a"}:
            continue
        expect = {}
        for s in everything:          # smallest training system per kind, first of equal size
            if s not in held_out and (kind[s] not in expect or size[s] < size[expect[kind[s]]]):
                expect[kind[s]] = s
        recs, _, _ = _active_records(monkeypatch, run_a / "model.pt", lab, tmp_path / f"t{seed}",
                                     "--train-only", "0.3", str(seed))
        got = [r["system"] for r in recs]
        assert sorted(got) == sorted(expect.values()) and len(got) == 2   # every kind kept
        assert not set(got) & held_out
        found += 1
        if found == 2:
            break
    assert found == 2


def test_active_seeds_independent_of_part_and_batches(data, run_a, monkeypatch, tmp_path):
    lab = data / "lab"
    m = run_a / "model.pt"
    whole, batches, _ = _active_records(monkeypatch, m, lab, tmp_path / "w", "--systems", "_", "--seed", "5",
                                        "--batch-systems", "3")
    assert batches == [3, 3, 2]
    seed_of = {r["system"]: r["seed"] for r in whole}
    assert len(set(seed_of.values())) == len(SYSTEMS)
    for s in seed_of:                 # hash of the shard file name and --seed
        assert seed_of[s] == active.system_seed(f"{s}_T300.npz", 5)
    for i in range(3):
        recs, _, _ = _active_records(monkeypatch, m, lab, tmp_path / f"p{i}", "--systems", "_", "--seed", "5",
                                     "--part", f"{i}/3", "--batch-systems", "1")
        assert recs and all(r["seed"] == seed_of[r["system"]] for r in recs)
    other, batches, _ = _active_records(monkeypatch, m, lab, tmp_path / "o", "--systems", "_", "--seed", "6")
    assert batches == [8]                                        # --batch-systems 16 (default): one batch
    assert all(r["seed"] != seed_of[r["system"]] for r in other)
    assert active.system_seed("x.npz", 0) == active.system_seed("x.npz", 0) != active.system_seed("y.npz", 0)


class _StubTeacher:
    """The harmonic O-H labels of the synthetic shards, with the fast teacher's ``call_batch``."""
    name = "stub-teacher"

    def __init__(self, device="cpu"):
        self.calls = []
        _StubTeacher.last = self

    def __call__(self, z, pos, cell, pbc, charge, multiplicity):
        self.calls.append(1)
        e, f = _harmonic_labels(np.asarray(pos)[None], len(z) // 3)
        return float(e[0]), f[0]

    def call_batch(self, z, positions, cells, pbc, charge, multiplicity):
        assert positions.shape[1:] == (len(z), 3) and cells.shape == (len(positions), 3, 3)
        self.calls.append(len(positions))
        return _harmonic_labels(np.asarray(positions), len(z) // 3)


def test_active_round_end_to_end_batched(data, run_a, monkeypatch, tmp_path, capsys):
    from training import teacher as teacher_mod
    from training.shards import load_shard
    monkeypatch.setattr(teacher_mod, "so3lr_available", lambda: True)
    monkeypatch.setattr(teacher_mod, "SO3LRTeacher", _StubTeacher)
    lab = data / "lab"
    out = tmp_path / "al"
    assert active.main(["--model-a", str(run_a / "model.pt"), "--data", str(lab), "--out", str(out),
                        "--systems", "wc_1", "gas_b", "--steps", "4", "--stride", "1", "--per-system", "2",
                        "--fmax", "1e6", "--teacher-batch-frames", "3", "--seed", "2"]) == 0
    assert _StubTeacher.last.calls == [3, 1, 3, 1]      # all 4 candidates of each system scored, 3 per call
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    rec = json.loads((out / "active_log.jsonl").read_text().splitlines()[-1])
    assert rec["complete"] and rec["systems"] == printed and [r["system"] for r in printed] == ["gas_b", "wc_1"]
    from openmm_e2former.model import load_model
    model = load_model(run_a / "model.pt", dtype=torch.float32)
    for r in printed:
        assert r["md_frames"] == 4 and r["picked"] == 2 and r["md_batch"] == 2 and not r["blew_up"]
        d0 = load_shard(lab / f"{r['system']}_T300.npz")
        ref, _ = active.student_md(model, torch.as_tensor(d0["Z"].astype(np.int64)),
                                   torch.as_tensor(d0["positions"][0], dtype=torch.float64), None, None, 0, 300.0,
                                   steps=4, stride=1, fmax=1e6, seed=active.system_seed(f"{r['system']}_T300.npz", 2))
        sh = load_shard(out / r["shard"])
        assert str(sh["teacher"]) == "stub-teacher" and sh["positions"].shape == (2, len(d0["Z"]), 3)
        # the picked frames are frames of the system's own student_md trajectory, labelled by the teacher
        picked = [int(np.argmin(np.abs(ref - x[None]).reshape(4, -1).max(1))) for x in sh["positions"]]
        assert picked == sorted(set(picked))
        assert np.abs(sh["positions"] - ref[picked]).max() < 1e-5
        e, f = _harmonic_labels(ref[picked], len(d0["Z"]) // 3)
        assert np.allclose(sh["energy"], e, atol=1e-6) and np.allclose(sh["forces"], f, atol=1e-4)


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGTERM"])
def test_active_log_written_when_interrupted(data, run_a, monkeypatch, tmp_path, how):
    import os
    import signal
    calls = []

    def md(model_, systems, *a, **k):
        calls.append(len(systems))
        if len(calls) == 2:       # the second batch of 3 systems is interrupted
            if how == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return [(np.zeros((0, len(s["z"]), 3)), False) for s in systems]

    monkeypatch.setattr(active, "student_md_batched", md)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt if how == "KeyboardInterrupt" else active._Stop):
        active.main(["--model-a", str(run_a / "model.pt"), "--data", str(data / "lab"), "--out", str(tmp_path),
                     "--teacher", "mm-placeholder", "--systems", "_", "--batch-systems", "3"])
    assert signal.getsignal(signal.SIGTERM) == before          # handler restored
    rec = json.loads((tmp_path / "active_log.jsonl").read_text().splitlines()[-1])
    assert not rec["complete"] and rec["error"].startswith("KeyboardInterrupt" if how == "KeyboardInterrupt"
                                                           else "_Stop")
    assert len(rec["systems"]) == 3                            # the first batch's systems


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
