"""Train the default E2Former-V2 student on teacher-labelled shards.

* config file (``training/configs/default.yaml``), ``--set a.b=value`` overrides;
* loss = ``energy_weight * MSE(E/N) + force_weight * MSE(F) [+ stress_weight * MSE(stress)]`` with E = teacher
  energy minus the per-element reference energies (``training/refs.py``); forces by autograd with
  ``create_graph=True``; the stress term (``train.stress_weight``, 0 = off, the code default) compares the
  student's strain derivative (1/V) dE/d(strain) (``predict_batch(..., stress=True)``) with the teacher's
  ``stress`` labels (eV/Å^3, ``label --stress``) over the periodic frames that have them;
* AdamW, linear warm-up + cosine decay, gradient clipping, EMA of the weights (validation and export use it);
* validation split by SYSTEM (``system`` label of the shards), per kind, deterministic;
* resumable: ``<out_dir>/checkpoint.pt`` holds model, optimiser, EMA, step, data-order position and all RNG
  states; a call runs until ``--max-minutes`` (default 9) or ``--steps`` more steps, saves and exits, and the
  next call continues bit-for-bit on the same device;
* at ``train.max_steps`` (or with ``--export``) the EMA model is written with ``save_model`` to
  ``<out_dir>/model.pt`` with metadata (teacher, data, elements, metrics).

    python -m training.train --config training/configs/default.yaml --max-minutes 9   # repeat until done
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

from .refs import load_refs
from .shards import list_shards, load_shard, scalar

CKPT_NAME = "checkpoint.pt"
EV_PER_A3_TO_KBAR = 1602.176634      # 1 eV/Å^3 = 160.2 GPa = 1602 kbar


# ----------------------------------------------------------------------------------------------- config
def load_config(path: os.PathLike, overrides: Sequence[str] = ()) -> Dict[str, Any]:
    with open(path) as f:
        cfg = yaml.safe_load(f)
    for item in overrides:
        key, _, value = item.partition("=")
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _number(yaml.safe_load(value))
    for key in ("lr", "lr_min", "weight_decay", "grad_clip", "energy_weight", "force_weight", "stress_weight",
                "ema_decay"):
        if key in cfg.get("train", {}):
            cfg["train"][key] = float(cfg["train"][key])   # YAML 1.1 reads "3e-3" (no dot) as a string
    return cfg


def _number(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


# ----------------------------------------------------------------------------------------------- data
class Frames:
    """All labelled frames in memory, grouped by shard (same composition within a shard)."""

    def __init__(self, dirs: Sequence[os.PathLike]):
        self.shards: List[Dict[str, Any]] = []
        self.index: List[Tuple[int, int]] = []   # (shard, frame)
        teachers = set()
        for p in list_shards(dirs):
            d = load_shard(p)
            if "labelled" not in d:
                continue
            frames = np.flatnonzero(d["labelled"])
            if not len(frames):
                continue
            teachers.add(str(scalar(d["teacher"])))
            s = {"path": str(p), "system": str(scalar(d["system"])), "kind": str(scalar(d["kind"])),
                 "Z": d["Z"].astype(np.int64), "pbc": d["pbc"].astype(bool), "charge": int(scalar(d["charge"])),
                 "multiplicity": int(scalar(d["multiplicity"])), "positions": d["positions"][frames],
                 "cell": d["cell"][frames], "energy": d["energy"][frames], "forces": d["forces"][frames],
                 # teacher stress (eV/Å^3), NaN = no label (gas phase, or a shard labelled without --stress)
                 "stress": (d["stress"][frames].astype(np.float64) if "stress" in d
                            else np.full((len(frames), 3, 3), np.nan))}
            self.shards.append(s)
            self.index += [(len(self.shards) - 1, k) for k in range(len(frames))]
        if not self.shards:
            raise ValueError(f"no labelled frames in {list(dirs)}")
        if len(teachers) != 1:
            raise ValueError(f"labelled data must come from exactly one teacher, found {sorted(teachers)}")
        self.teacher = teachers.pop()

    def elements(self) -> List[int]:
        return sorted({int(z) for s in self.shards for z in np.unique(s["Z"])})

    def split(self, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
        """Indices into ``self.index`` for (train, val); whole systems go to validation, per kind."""
        by_kind: Dict[str, List[str]] = {}
        for s in self.shards:
            by_kind.setdefault(s["kind"], [])
            if s["system"] not in by_kind[s["kind"]]:
                by_kind[s["kind"]].append(s["system"])
        val_systems = set()
        for kind, systems in by_kind.items():
            if len(systems) < 2 or val_fraction <= 0:
                continue
            order = sorted(systems, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest())
            val_systems.update(order[:max(1, int(round(val_fraction * len(systems))))])
        all_systems = sorted({s["system"] for s in self.shards})
        if not val_systems and val_fraction > 0 and len(all_systems) >= 2:   # tiny data sets: one system
            val_systems.add(min(all_systems, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest()))
        train, val = [], []
        for i, (si, _) in enumerate(self.index):
            (val if self.shards[si]["system"] in val_systems else train).append(i)
        return train, val


def frame_tensors(frames: Frames, i: int, device, dtype):
    si, k = frames.index[i]
    s = frames.shards[si]
    periodic = bool(s["pbc"].any())
    has_stress = bool(s["pbc"].all()) and bool(np.isfinite(s["stress"][k]).all())
    return dict(
        z=torch.as_tensor(s["Z"], device=device),
        pos=torch.as_tensor(s["positions"][k], device=device, dtype=dtype),
        cell=torch.as_tensor(s["cell"][k], device=device, dtype=dtype) if periodic else None,
        pbc=torch.as_tensor(s["pbc"], device=device) if periodic else None,
        charge=s["charge"], multiplicity=s["multiplicity"],
        energy=float(s["energy"][k]), forces=torch.as_tensor(s["forces"][k], device=device, dtype=dtype),
        stress=torch.as_tensor(s["stress"][k], device=device, dtype=dtype) if has_stress else None,
        kind=s["kind"], system=s["system"])


def predict(model, f, create_graph: bool):
    """(E_model [eV] tensor, forces [N,3]) for one frame; differentiable w.r.t. the weights if create_graph."""
    pos = f["pos"].detach().requires_grad_(True)
    e, _ = model.energy_terms(f["z"], pos, f["cell"], f["pbc"], f["charge"], f["multiplicity"], 0,
                              check_overlap=False)
    (g,) = torch.autograd.grad(e, pos, create_graph=create_graph)
    return e, -g


def predict_batch(model, fs: Sequence[Dict[str, Any]], create_graph: bool, stress: bool = False):
    """Several frames in one model call: (E_model per frame [B] eV, list of forces [N_i, 3]).

    Each frame's edges are found on its own (its own cell and pbc), then the frames become disjoint blocks of
    one graph (node indices offset, no edge crosses frames), so one forward/backward serves the whole
    optimiser step. This gives the same numbers as ``predict`` frame by frame (tests/test_training.py) and
    avoids one launch-bound model call per small frame on the GPU. It is ``E2FormerV2.node_features`` with the
    system embedding (``E2FormerV2.system_embedding``) taken per frame and spread over that frame's atoms, and
    without activation checkpointing (the force loss needs the double backward).

    ``stress=True`` adds a third output, the stress [B, 3, 3] (eV/Å^3; NaN rows for frames that are not fully
    periodic) by the strain derivative, the convention of the teacher's labels: a per-frame symmetric strain
    e_b = (eps_b + eps_b^T) / 2 with eps_b = 0 (requires grad) maps every position r -> r (I + e_b) and every
    periodic image shift t -> t (I + e_b) (``Graph`` shifts are the Cartesian vectors n @ cell, so this is the
    shift of the strained cell cell (I + e_b)); stress_b = (1/V_b) dE_b/deps_b, so the configurational
    pressure is -trace/3 = -dE/dV.  Kept in the autograd graph with ``create_graph``.  At zero strain the
    positions and shifts are unchanged bit for bit, so energies and forces equal those of ``stress=False``."""
    from openmm_e2former.model.e2former import Graph

    pos_list = [f["pos"].detach().requires_grad_(True) for f in fs]
    strained = [bool(stress) and f["cell"] is not None and f["pbc"] is not None
                and bool(torch.as_tensor(f["pbc"]).all()) for f in fs]
    eps = sym = None
    if any(strained):
        eps = torch.zeros(len(fs), 3, 3, dtype=pos_list[0].dtype, device=pos_list[0].device, requires_grad=True)
        sym = 0.5 * (eps + eps.transpose(1, 2))
    pos_in, centers, neighbors, shifts, owner = [], [], [], [], []
    off = 0
    for b, (f, p) in enumerate(zip(fs, pos_list)):
        with torch.no_grad():
            g = model.build_graph(p.detach(), f["cell"], f["pbc"], check_overlap=False)
        sh = g.shift
        if strained[b]:
            p = p + p @ sym[b]
            sh = sh + sh @ sym[b]
        pos_in.append(p)
        centers.append(g.center + off)
        neighbors.append(g.neighbor + off)
        shifts.append(sh)
        owner.append(torch.full((p.shape[0],), b, dtype=torch.long, device=p.device))
        off += p.shape[0]
    pos = torch.cat(pos_in)
    z = torch.cat([f["z"] for f in fs])
    owner_t = torch.cat(owner)
    G = Graph(torch.cat(centers), torch.cat(neighbors), torch.cat(shifts), pos, model.cutoff,
              model.rbf_offsets.to(pos.dtype), model.rbf_coeff, model.envelope_kind)
    dev = pos.device
    system = model.system_embedding(torch.tensor([int(f["charge"]) for f in fs], device=dev),
                                    torch.tensor([int(f["multiplicity"]) for f in fs], device=dev))
    x = model.edge_degree(z, G)
    system_atom = system.to(x.dtype)[owner_t][:, None, :]
    for block in model.blocks:
        x = block(x, system_atom, z, G)
    x = model.norm_final(x)
    e_atom = model.heads.energy(x[:, 0], 0).reshape(-1)
    energy = e_atom.new_zeros(len(fs)).index_add(0, owner_t, e_atom)
    if eps is None:
        grads = torch.autograd.grad(energy.sum(), pos_list, create_graph=create_graph)
    else:
        grads = torch.autograd.grad(energy.sum(), pos_list + [eps], create_graph=create_graph, allow_unused=True)
        grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(pos_list + [eps], grads)]
    forces = [-gr for gr in grads[:len(fs)]]
    if not stress:
        return energy, forces
    nan = torch.full((len(fs), 3, 3), float("nan"), dtype=pos.dtype, device=dev)
    if eps is None:
        return energy, forces, nan
    vol = torch.stack([torch.linalg.det(f["cell"].to(pos.dtype)).abs() if s else pos.new_ones(())
                       for f, s in zip(fs, strained)])
    mask = torch.tensor(strained, device=dev)[:, None, None]
    return energy, forces, torch.where(mask, grads[-1] / vol[:, None, None], nan)


def batch_energy_forces(model, systems: Sequence[Dict[str, Any]], positions: Sequence[torch.Tensor]):
    """(E_model [B] eV float64, forces [N_i, 3] eV/Å float64 per system, on the model's device) of several
    systems in ONE model call (``predict_batch`` over the disjoint union of their graphs, no weight gradients);
    a model that ``predict_batch`` does not mirror (direct forces, bf16 autocast) is called system by system.
    Used by the batched MD of ``training.active`` and ``training.stability``.

    ``systems``: dicts with ``z`` and optional ``cell`` (Å; None = gas phase), ``pbc`` (default all True when
    there is a cell), ``charge`` (0), ``multiplicity`` (1); their device copies are cached in the dict under
    ``_dev``.  ``positions``: one [N_i, 3] tensor (Å) per system, on any device."""
    dev, dt = model.device, model.dtype
    sizes = [int(p.shape[0]) for p in positions]
    pos = torch.cat([torch.as_tensor(p) for p in positions]).to(device=dev, dtype=dt).split(sizes)  # one copy
    fs = []
    for s, p in zip(systems, pos):
        dv = s.get("_dev")
        if dv is None or dv[0] != (dev, dt):   # z / cell / pbc on the device, once per system
            cell, pbc = s.get("cell"), s.get("pbc")
            if cell is not None and pbc is None:
                pbc = torch.ones(3, dtype=torch.bool)
            dv = s["_dev"] = ((dev, dt), torch.as_tensor(s["z"]).to(dev, torch.long),
                              None if cell is None else torch.as_tensor(cell).to(dev, dt),
                              None if cell is None else torch.as_tensor(pbc).to(dev, torch.bool))
        fs.append(dict(z=dv[1], pos=p, cell=dv[2], pbc=dv[3], charge=int(s.get("charge", 0)),
                       multiplicity=int(s.get("multiplicity", 1))))
    if getattr(model, "direct_forces", False) or getattr(model, "bf16", False):
        out = [model.energy_and_forces(f["z"], f["pos"], f["cell"], f["pbc"], f["charge"], f["multiplicity"],
                                       forces=True, validate=False)[1:] for f in fs]
        energies, forces = torch.stack([e.reshape(()) for e, _ in out]), [g for _, g in out]
    else:
        with torch.enable_grad():
            energies, forces = predict_batch(model, fs, create_graph=False)
    return energies.detach().to(torch.float64), [g.detach().to(torch.float64) for g in forces]


def batches(frames: "Frames", idx: Sequence[int], budget: int) -> List[List[int]]:
    """Consecutive groups of frame indices with at most ``budget`` atoms each (a bigger frame goes alone)."""
    out: List[List[int]] = []
    cur: List[int] = []
    atoms = 0
    for i in idx:
        n = len(frames.shards[frames.index[i][0]]["Z"])
        if cur and atoms + n > budget:
            out.append(cur)
            cur, atoms = [], 0
        cur.append(i)
        atoms += n
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------------------------- helpers
class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                self.shadow[k].copy_(v)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        m = copy.deepcopy(model)
        m.load_state_dict(self.shadow)
        return m.eval()


def lr_at(step: int, t: Dict[str, Any]) -> float:
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    x = min(1.0, (step - t["warmup_steps"]) / max(1, t["max_steps"] - t["warmup_steps"]))
    return t["lr_min"] + 0.5 * (t["lr"] - t["lr_min"]) * (1.0 + math.cos(math.pi * x))


def rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def build_model(mcfg: Dict[str, Any], refs: Dict[str, Any], seed: int):
    from openmm_e2former.model import E2FormerConfig, E2FormerV2
    torch.manual_seed(seed)
    cfg = E2FormerConfig.from_dict(dict(mcfg))
    model = E2FormerV2(cfg, reference_energies={cfg.heads[0]: list(refs["table"])})
    # training needs second derivatives (force loss): use the PyTorch reference path everywhere (the fused
    # kernels are for inference; their double backward falls back to the reference anyway). The exported
    # file stores no backend: a loaded model picks the fused kernels on CUDA again.
    return model.set_attention_backend("reference")


def evaluate(model, frames: Frames, idx: Sequence[int], max_frames: int, device, dtype,
             table: np.ndarray, atoms_per_batch: int = 3000) -> Dict[str, Any]:
    """Energy-per-atom and force MAE per kind (and overall), meV/atom and meV/Å (mean over frames); where
    frames have stress labels also the stress-component MAE (meV/Å^3 and kbar), the pressure MAE and the mean
    pressure error student - teacher (kbar, P_conf = -trace/3; the bias that sets the NPT density)."""
    if not idx:
        return {}
    if len(idx) > max_frames:
        idx = [idx[int(j)] for j in np.linspace(0, len(idx) - 1, max_frames)]
    acc: Dict[str, Dict[str, float]] = {}
    for group in batches(frames, idx, atoms_per_batch):
        fs = [frame_tensors(frames, i, device, dtype) for i in group]
        with_s = any(f["stress"] is not None for f in fs)
        out = predict_batch(model, fs, create_graph=False, stress=with_s)
        es, fps = out[0], out[1]
        for b, (f, e, fp) in enumerate(zip(fs, es, fps)):
            n = len(f["z"])
            e_target = f["energy"] - float(table[f["z"].cpu().numpy()].sum())
            de = abs(float(e.detach()) - e_target) / n * 1000.0
            df = float((fp.detach() - f["forces"]).abs().mean()) * 1000.0
            ds = dp = None
            if f["stress"] is not None:
                d = out[2][b].detach().double() - f["stress"].double()
                ds, dp = float(d.abs().mean()), -float(torch.diagonal(d).sum()) / 3.0
            for key in (f["kind"], "all"):
                a = acc.setdefault(key, dict(de=0.0, df=0.0, n=0, ds=0.0, adp=0.0, dp=0.0, ns=0))
                a["de"] += de
                a["df"] += df
                a["n"] += 1
                if ds is not None:
                    a["ds"] += ds
                    a["adp"] += abs(dp)
                    a["dp"] += dp
                    a["ns"] += 1
    res: Dict[str, Any] = {}
    for k, a in acc.items():
        res[k] = {"energy_mae_meV_per_atom": a["de"] / a["n"], "force_mae_meV_per_A": a["df"] / a["n"],
                  "frames": a["n"]}
        if a["ns"]:
            kbar = EV_PER_A3_TO_KBAR / a["ns"]
            res[k].update(stress_mae_meV_per_A3=1000.0 * a["ds"] / a["ns"], stress_mae_kbar=a["ds"] * kbar,
                          pressure_mae_kbar=a["adp"] * kbar, pressure_bias_kbar=a["dp"] * kbar,
                          stress_frames=a["ns"])
    return res


def save_checkpoint(path: Path, blob: Dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def export(model, ema: EMA, path: Path, cfg: Dict[str, Any], frames: Frames, train_idx, val_idx, step: int,
           metrics: Dict[str, Any], refs: Dict[str, Any]) -> None:
    from openmm_e2former.model import save_model
    m = ema.model(model).cpu().float()
    kinds: Dict[str, int] = {}
    for si, _ in frames.index:
        kinds[frames.shards[si]["kind"]] = kinds.get(frames.shards[si]["kind"], 0) + 1
    meta = {"name": "e2formerv2-default", "teacher": frames.teacher, "elements": frames.elements(),
            "data": {"frames": len(frames.index), "train_frames": len(train_idx), "val_frames": len(val_idx),
                     "systems": len({s["system"] for s in frames.shards}), "frames_by_kind": kinds,
                     "dirs": list(cfg["data"]["dirs"])},
            "reference_energies": {"source": "least squares on the labelled set",
                                   "teacher": refs.get("teacher")},
            "training": {"step": step, "config": cfg, "ema_decay": ema.decay},
            "validation": metrics, "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom",
                                             "stress": "eV/Angstrom^3, (1/V) dE/d(strain)"},
            "limits": "short-range only (cutoff %.1f A); no long-range electrostatics beyond the cutoff"
                      % float(cfg["model"]["cutoff"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(m, path, metadata=meta)


# ----------------------------------------------------------------------------------------------- main loop
def train(cfg: Dict[str, Any], max_minutes: float = 9.0, steps: Optional[int] = None, fresh: bool = False,
          export_now: bool = False, log=print, fit_minutes: Optional[float] = None) -> Dict[str, Any]:
    t_start = time.time()
    tcfg, dcfg = cfg["train"], cfg["data"]
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    dev = tcfg.get("device", "auto")
    device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else ("cpu" if dev == "auto" else dev))
    dtype = torch.float32
    refs = load_refs(Path(dcfg["refs"]))
    frames = Frames(dcfg["dirs"])
    if refs.get("teacher") != frames.teacher:
        raise ValueError(f"reference energies fitted on {refs.get('teacher')!r} but data labelled by {frames.teacher!r}")
    train_idx, val_idx = frames.split(float(dcfg["val_fraction"]), int(dcfg["split_seed"]))
    if not train_idx:
        raise ValueError("empty training split")
    table = np.asarray(refs["table"], dtype=np.float64)
    missing = [z for z in frames.elements() if z >= len(table)]
    if missing:
        raise ValueError(f"no reference energy for elements {missing}: refit refs.py on the current data")

    seed = int(tcfg["seed"])
    model = build_model(cfg["model"], refs, seed).to(device)
    init_from = tcfg.get("init_from")
    if init_from and not ((out / CKPT_NAME).exists() and not fresh):
        # fine-tuning (e.g. after an active-learning round): start from the EMA weights of an earlier run's
        # checkpoint; fresh optimiser, schedule and EMA. The architecture must be the same.
        src = torch.load(init_from, map_location=device, weights_only=False)
        if src.get("model_config") != cfg["model"]:
            raise ValueError(f"train.init_from={init_from}: its model config differs from this run's")
        model.load_state_dict(src["ema"])
        log(f"initialised from the EMA weights of {init_from} (step {src.get('step')})")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    ema = EMA(model, float(tcfg["ema_decay"]))
    step, epoch, cursor = 0, 0, 0
    ckpt_path = out / CKPT_NAME
    history: List[Dict[str, Any]] = []
    if ckpt_path.exists() and not fresh:
        blob = torch.load(ckpt_path, map_location=device, weights_only=False)
        if blob["model_config"] != cfg["model"]:
            raise ValueError(f"{ckpt_path}: model config differs from the config file; use --fresh or the old config")
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optimizer"])
        ema.shadow = {k: v.to(device) for k, v in blob["ema"].items()}
        step, epoch, cursor = blob["step"], blob["epoch"], blob["cursor"]
        history = blob.get("history", [])
        fitted = blob.get("fitted")
        if fitted:   # the schedule length chosen by --fit-minutes on the first call
            tcfg["max_steps"], tcfg["warmup_steps"] = fitted["max_steps"], fitted["warmup_steps"]
        set_rng_state(blob["rng"])
        log(f"resumed from {ckpt_path} at step {step} (epoch {epoch}, cursor {cursor})")
    else:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def order(ep: int) -> np.ndarray:
        return np.random.default_rng(seed * 100003 + ep).permutation(len(train_idx))

    perm = order(epoch)

    fitted: Optional[Dict[str, int]] = None
    if ckpt_path.exists() and not fresh:
        fitted = blob.get("fitted")
    probe = 25    # --fit-minutes: steps timed (after 5 warm-up steps) before the schedule length is fixed
    if fit_minutes is not None and fitted is None and step == 0:
        tcfg["max_steps"] = 10 ** 9   # provisional; lr stays in warm-up until the length is fixed

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.shadow,
                                    "step": step, "epoch": epoch, "cursor": cursor, "rng": rng_state(),
                                    "model_config": cfg["model"], "config": cfg, "history": history,
                                    "fitted": fitted})

    deadline = t_start + 60.0 * max_minutes
    step_times: List[float] = []
    end_step = int(tcfg["max_steps"]) if steps is None else min(int(tcfg["max_steps"]), step + int(steps))
    budget = int(dcfg["atoms_per_step"])
    w_e, w_f = float(tcfg["energy_weight"]), float(tcfg["force_weight"])
    w_s = float(tcfg.get("stress_weight", 0.0))
    last_metrics: Dict[str, Any] = history[-1]["val"] if history and "val" in history[-1] else {}
    stopped_by_time = False
    while step < end_step:
        # leave room for one more step and the checkpoint write
        est = (np.median(step_times) if step_times else 0.0)
        if time.time() + 2 * est + 5 > deadline:
            stopped_by_time = True
            break
        t0 = time.time()
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(step, tcfg)
        opt.zero_grad(set_to_none=True)
        atoms, n_frames, sum_le, sum_lf, sum_ds, n_s = 0, 0, 0.0, 0.0, 0.0, 0
        batch = []
        while True:
            if cursor >= len(perm):
                epoch, cursor = epoch + 1, 0
                perm = order(epoch)
            i = train_idx[int(perm[cursor])]
            n = len(frames.shards[frames.index[i][0]]["Z"])
            if batch and atoms + n > budget:
                break
            batch.append(i)
            atoms += n
            cursor += 1
            if atoms >= budget:
                break
        fs = [frame_tensors(frames, i, device, dtype) for i in batch]
        with_s = w_s > 0 and any(f["stress"] is not None for f in fs)
        pred = predict_batch(model, fs, create_graph=True, stress=with_s)
        es, fps = pred[0], pred[1]
        ns = torch.tensor([len(f["z"]) for f in fs], device=device, dtype=dtype)
        e_target = torch.tensor([f["energy"] - float(table[f["z"].cpu().numpy()].sum()) for f in fs],
                                device=device, dtype=torch.float64)
        # energies per atom (residual in float64: totals are ~1e3 eV), mean over frames; forces: MSE over
        # every component of the step (frames weighted by atom count)
        le = (((es.double() - e_target) / ns.double()) ** 2).to(dtype)
        sq_f = torch.stack([((fp - f["forces"]) ** 2).sum() for f, fp in zip(fs, fps)])
        loss = w_e * le.mean() + w_f * sq_f.sum() / (3 * atoms)
        if with_s:   # stress: MSE over the 9 components (eV/Å^3)^2, mean over the frames with a stress label
            sel = [b for b, f in enumerate(fs) if f["stress"] is not None]
            ds = pred[2][sel] - torch.stack([fs[b]["stress"] for b in sel])
            loss = loss + w_s * (ds ** 2).mean()
            sum_ds += float(ds.detach().abs().mean(dim=(1, 2)).sum())
            n_s += len(sel)
        loss.backward()
        sum_le += float(le.detach().sum())
        sum_lf += float(sq_f.detach().sum()) / 3
        n_frames += len(fs)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["grad_clip"]))
        if not torch.isfinite(gnorm):
            raise FloatingPointError(f"non-finite gradient at step {step}")
        opt.step()
        ema.update(model, step)
        step += 1
        step_times.append(time.time() - t0)
        if fit_minutes is not None and fitted is None and step == probe:
            per_step = float(np.median(step_times[5:]))
            n_total = max(probe + 1, int(60.0 * fit_minutes / per_step))
            fitted = {"max_steps": n_total, "warmup_steps": min(int(tcfg["warmup_steps"]), max(1, n_total // 10)),
                      "s_per_step": per_step}
            tcfg["max_steps"], tcfg["warmup_steps"] = fitted["max_steps"], fitted["warmup_steps"]
            end_step = n_total if steps is None else min(n_total, end_step)
            log(json.dumps({"fitted_schedule": fitted}))
        if step % int(tcfg["log_every"]) == 0 or step == end_step:
            rec = {"step": step, "epoch": epoch, "lr": lr_at(step - 1, tcfg),
                   "rmse_e_meV_per_atom": 1000 * math.sqrt(sum_le / n_frames),
                   "rmse_f_meV_per_A": 1000 * math.sqrt(sum_lf / atoms), "frames": n_frames, "atoms": atoms,
                   "s_per_step": float(np.mean(step_times[-int(tcfg['log_every']):]))}
            if n_s:
                rec.update(mae_s_meV_per_A3=1000.0 * sum_ds / n_s, mae_s_kbar=EV_PER_A3_TO_KBAR * sum_ds / n_s,
                           stress_frames=n_s)
            history.append(rec)
            log(json.dumps(rec))
        if step % int(tcfg["val_every"]) == 0 and val_idx:
            last_metrics = evaluate(ema.model(model), frames, val_idx, int(dcfg["max_val_frames"]), device, dtype, table)
            history.append({"step": step, "val": last_metrics})
            log(json.dumps({"step": step, "val_all": last_metrics.get("all")}))
        if step % int(tcfg["ckpt_every"]) == 0:
            checkpoint()
    checkpoint()
    done = step >= int(tcfg["max_steps"])
    result = {"step": step, "epoch": epoch, "done": done, "stopped_by_time": stopped_by_time,
              "train_frames": len(train_idx), "val_frames": len(val_idx), "device": str(device),
              "seconds": time.time() - t_start}
    if done or export_now:
        if val_idx:
            last_metrics = evaluate(ema.model(model), frames, val_idx, int(dcfg["max_val_frames"]), device, dtype, table)
        export(model, ema, out / "model.pt", cfg, frames, train_idx, val_idx, step, last_metrics, refs)
        result["model"] = str(out / "model.pt")
        result["val"] = last_metrics
    with open(out / "train_log.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    log(json.dumps(result))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "default.yaml"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config entries")
    ap.add_argument("--max-minutes", type=float, default=9.0, help="wall-time budget of this call")
    ap.add_argument("--steps", type=int, help="at most this many optimiser steps in this call")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--export", action="store_true", help="write model.pt from the EMA weights now")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--fit-minutes", type=float,
                    help="fresh runs: time the first steps, then set train.max_steps so that the whole schedule "
                         "takes about this many minutes (kept in the checkpoint for later calls)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    res = train(cfg, args.max_minutes, args.steps, args.fresh, args.export, fit_minutes=args.fit_minutes)
    return 0 if res["step"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
