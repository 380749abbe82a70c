"""NPZ shard format shared by all stages.

One shard = one trajectory of one system (fixed composition), so per-atom arrays stack:

    Z            [N]        int16   atomic numbers
    positions    [F, N, 3]  float32 Å
    cell         [F, 3, 3]  float32 Å (rows = lattice vectors; zeros when not periodic)
    pbc          [3]        bool
    charge       []         int     total charge (e)
    multiplicity []         int     spin multiplicity (always 1 here)
    system       []         str     system label, e.g. "aa_CYS_solv" (the validation split is by this)
    kind         []         str     system type, e.g. "water_box", "aa_solv", "gas_small"
    temperature  []         float   K of the sampling run (0 if not applicable)
    source       []         str     "openmm-amber14" / "student-md:<...>"
  optional (classical labels, ``generate --store-mm``):
    mm_energy    [F]        float64 eV, mm_forces [F, N, 3] float32 eV/Å
  labelled shards add:
    energy       [F]        float64 eV (teacher total energy)
    forces       [F, N, 3]  float32 eV/Å
    labelled     [F]        bool    (resumable labelling)
    teacher      []         str
  optional (``label --stress``, the default for new labels):
    stress       [F, 3, 3]  float64 eV/Å^3, teacher stress (1/V) dE/d(strain) (P_conf = -trace/3); NaN = no
                            label (gas-phase frames, frames labelled without stress).  A shard without it
                            simply has no stress labels.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List

import numpy as np

KJ_PER_MOL_TO_EV = 0.010364269656262175   # 1 kJ/mol in eV
SULFUR = 16


def save_shard(path: os.PathLike, data: Dict[str, object]) -> None:
    """Atomic write (temp file + rename), so an interrupted run never leaves a truncated shard."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in data.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_shard(path: os.PathLike) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def list_shards(dirs: Iterable[os.PathLike]) -> List[Path]:
    out: List[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            out.append(d)
        else:
            out.extend(sorted(p for p in d.glob("*.npz") if not p.name.endswith(".tmp.npz")))
    return out


def scalar(x) -> object:
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else a
