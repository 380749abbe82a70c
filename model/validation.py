"""Input checks with clear messages. Every user-facing entry point runs these before the network."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

#: atoms closer than this (Å) are reported as overlapping; no chemistry lives below it and an
#: ML potential evaluated there returns meaningless numbers
OVERLAP_DISTANCE = 0.3

_SYMBOLS = ("X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br "
            "Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er "
            "Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm").split()


def element_name(z: int) -> str:
    return f"{_SYMBOLS[z]} (Z={z})" if 0 <= z < len(_SYMBOLS) else f"Z={z}"


def as_inputs(atomic_numbers, positions, cell=None, pbc=None):
    """Convert user inputs (lists, NumPy, tensors) into tensors, checking shapes."""
    z = torch.as_tensor(np.asarray(atomic_numbers) if not torch.is_tensor(atomic_numbers) else atomic_numbers)
    if z.dim() != 1:
        raise ValueError(f"atomic_numbers must be a 1-D sequence, got shape {tuple(z.shape)}")
    if z.dtype.is_floating_point:
        if not torch.equal(z, z.round()):
            raise ValueError("atomic_numbers must be integers")
    z = z.to(torch.long)
    pos = positions if torch.is_tensor(positions) else torch.as_tensor(np.asarray(positions, dtype=np.float64))
    if pos.dim() != 2 or pos.shape[1] != 3 or pos.shape[0] != z.shape[0]:
        raise ValueError(f"positions must have shape ({z.shape[0]}, 3), got {tuple(pos.shape)}")
    cell_t = None
    if cell is not None:
        cell_t = cell if torch.is_tensor(cell) else torch.as_tensor(np.asarray(cell, dtype=np.float64))
        if tuple(cell_t.shape) != (3, 3):
            raise ValueError(f"cell must be a 3x3 matrix (rows = lattice vectors), got shape {tuple(cell_t.shape)}")
    if pbc is None:
        pbc_t = torch.tensor([cell_t is not None and bool(cell_t.abs().sum() > 0)] * 3)
    else:
        pbc_arr = np.asarray(pbc if not torch.is_tensor(pbc) else pbc.cpu().numpy())
        if pbc_arr.shape == ():
            pbc_arr = np.array([bool(pbc_arr)] * 3)
        if pbc_arr.shape != (3,):
            raise ValueError(f"pbc must be three booleans, got {pbc!r}")
        pbc_t = torch.tensor([bool(b) for b in pbc_arr])
    if bool(pbc_t.any()) and cell_t is None:
        raise ValueError("pbc is True along some direction but no cell was given")
    return z, pos, cell_t, pbc_t


#: the error of a system without atoms (check_inputs; the padded / CUDA-graph path says the same)
EMPTY_SYSTEM = "no atoms: the system is empty (the model needs at least one atom)"


def check_inputs(model, z: torch.Tensor, pos: torch.Tensor, cell: Optional[torch.Tensor],
                 pbc: Optional[torch.Tensor], charge: int, multiplicity: int, head: int) -> None:
    """Raise ValueError naming the problem; cheap enough to run every MD step."""
    n = z.shape[0]
    if n == 0:
        # (the node-level layers cannot take zero rows; the CLI says the same of an empty PDB file)
        raise ValueError(EMPTY_SYSTEM)
    zmin, zmax = int(z.min()), int(z.max())
    limit = int(model.reference_length[head])
    limit = min(limit, model.config.num_elements)
    if zmin < 1 or zmax >= limit:
        bad = [(i, int(v)) for i, v in enumerate(z.tolist()) if v < 1 or v >= limit][:5]
        desc = ", ".join(f"atom {i}: {element_name(v)}" for i, v in bad)
        raise ValueError(f"unsupported element(s) for head {model.head_names[head]!r} "
                         f"(supported: 1 <= Z < {limit}): {desc}")
    trained = (getattr(model, "metadata", None) or {}).get("elements")
    if trained:
        # a model of ours records the elements of its training data: others have untrained embeddings
        allowed = set(int(t) for t in trained)
        present = set(z.unique().tolist())
        if not present <= allowed:
            bad = [(i, int(v)) for i, v in enumerate(z.tolist()) if int(v) not in allowed][:5]
            desc = ", ".join(f"atom {i}: {element_name(v)}" for i, v in bad)
            names = ", ".join(element_name(t) for t in sorted(allowed))
            raise ValueError(f"unsupported element(s): {desc}; this model was trained on {names} only")
    if not bool(torch.isfinite(pos).all()):
        bad = torch.nonzero(~torch.isfinite(pos).all(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"positions contain NaN or infinite values (atoms {bad})")
    if not (-10 <= int(charge) <= 10):
        raise ValueError(f"charge {charge} out of range: the model supports total charges -10..10")
    if not (1 <= int(multiplicity) <= 20):
        raise ValueError(f"multiplicity {multiplicity} out of range: the model supports 2S+1 = 1..20")
    periodic = pbc is not None and bool(pbc.any())
    if periodic:
        if cell is None:
            raise ValueError("periodic boundary conditions requested but no cell given")
        if not bool(torch.isfinite(cell).all()):
            raise ValueError("cell contains NaN or infinite values")
        c = cell.to(torch.float64)
        vol = float(torch.det(c).abs())
        lengths = c.norm(dim=1)
        rows = [k for k in range(3) if bool(pbc[k])]
        if any(float(lengths[k]) < 1e-6 for k in rows) or vol < 1e-6 * float(lengths.prod().clamp_min(1e-30)):
            raise ValueError(f"degenerate cell (volume {vol:.3g} Å^3, lattice vector lengths "
                             f"{[round(float(x), 4) for x in lengths]}): the periodic lattice vectors must be "
                             "linearly independent and non-zero")
        nonper = [k for k in range(3) if not bool(pbc[k])]
        if nonper and vol < 1e-6:
            raise ValueError("degenerate cell: give a full-rank cell also for mixed periodicity")
