"""Fast SO3LR evaluator: the neighbour graphs are built with torch on the model's device.

so3krates-torch's ASE calculator (``SO3LRCalculator``) builds its graph on the CPU with matscipy every call
(one neighbour list at ``r_max_lr``, the 4.5 Å short-range graph masked out of it).  On an H100 that is
~90 % of the time per frame (0.3-0.5 s, against ~30 ms for the network on 1500 atoms).  This module feeds
the *same* torch module (``so3lr.model`` shipped in the wheel) the same inputs, built on the device:

=====================  ===================================================================================
input                  how it is built here (matches ``AtomicData.from_config`` + the PyG collate)
=====================  ===================================================================================
``edge_index_lr``      every ordered pair (i, j, image S) with 0 < |r_j + S·cell - r_i| < r_max_lr,
                       images of an atom itself included when S != 0 (small cells); row 0 = i, row 1 = j
``shifts_lr``          S @ cell (Å), the vector of an edge being ``r[j] - r[i] + shift``
``edge_index/shifts``  the subset of the long-range edges with d <= r_max (4.5 Å)
``node_attrs``         one-hot over Z = 1..118 (z_table of the calculator)
``atomic_numbers``     Z
``total_charge``       [B], total charge per frame;  ``total_spin`` [B] = 0 (closed shell)
``batch/ptr/head``     frame index per atom, [0, N, 2N, ..., BN], zeros [B]  (one frame: zeros, [0, N], [0])
``cell``               [B*3, 3], the frames' [3, 3] cells stacked as the PyG collate does (zeros for gas
                       phase; only read for stress / PME, which SO3LR does not use)
=====================  ===================================================================================

and sets, like the calculator does, ``model.r_max_lr`` (12 Å for periodic frames; ``gas_lr_cutoff``,
100 Å, for gas-phase frames, which is what ``training/label.py`` uses so every pair of a cluster
interacts) and ``model.dispersion_energy_cutoff_lr_damping = 2.0`` (``SO3LRCalculator``'s default, which
overrides the value stored in the checkpoint).

Neighbour search: all pairs, in chunks of rows, over the few lattice images that can be within the cutoff.
For a periodic cell, fractional differences are wrapped to [-1/2, 1/2) and the image offsets n with
``|n_k| <= floor(r_max_lr / h_k + 1/2)`` (h_k: distance between lattice planes k) are tried: this is exact
for ANY cell (triclinic, or smaller than twice the cutoff, where several images of one atom interact, as in
matscipy), because an image at fractional offset f_k lies at least |f_k| h_k away.  For a 26 Å cubic box and
a 12 Å cutoff only n = 0 remains (plain minimum image).  Cost O(N^2 x images): 2.3 M pair distances for
1500 atoms, well under a millisecond on a GPU; the long-range graph has ~730 edges per atom in water.
Distances are computed in float64 (positions arrive as float64), the model runs in ``dtype``.

Only fully periodic or fully non-periodic frames are supported (what the shards hold).

Batches (``energy_forces_batch``, ``call_batch``): on an H100 one model call costs ~57 ms for 200-1500 atoms,
nearly all kernel launches, so B frames of one system (same Z, charge and periodicity; each frame its own
cell) are evaluated in ONE call as a disjoint union of graphs: each frame's graph is built with its own cell,
its node indices are offset by b*N, and ``batch``/``ptr``/``total_charge`` carry the frame.  Every per-frame
quantity in the model is per graph: the charge/spin embedding and the partial-charge equilibration scatter
over ``batch`` with ``num_graphs`` = len(ptr) - 1, the dipole too, ZBL/electrostatics/dispersion are sums
over edges (no edge joins two frames) with the single ``model.r_max_lr`` (one value per call, hence one
periodicity per batch), the total energy is a scatter over ``batch`` and the forces the gradient of the sum
of the per-frame energies.  So a batch gives each frame's one-frame result: bit for bit in float64 on the
CPU, within float32 rounding in float32 (different matmul blocking).  ``inputs`` is the B = 1 case of
``batch_inputs``.

    from training.teacher import SO3LRTeacher
    t = SO3LRTeacher("cuda")
    e_eV, f_eV_per_A = t.energy_forces(Z, positions_A, cell_A_or_None, charge)
    e_B, f_BN3 = t.energy_forces_batch(Z, [pos_1, ..., pos_B], [cell_1, ..., cell_B] or None, charge)
    e_B, f_BN3, s_B33 = t.energy_forces_batch(..., stress=True)   # + stress (1/V) dE/d(strain), eV/Å^3

Stress (``stress=True``): the model's own ``compute_stress`` path in the same call (a per-frame symmetric
strain applied to positions and cell, shifts rebuilt from the unit shifts and the strained cell, gradient of
the energy).  Sign: stress = (1/V) dE/deps (ASE / so3krates convention), so P_conf = -trace(stress)/3 =
-dE/dV; configurational only (no kinetic term).  Checked against finite differences of the energy under
small strains (triclinic cell, float64) and batched == one frame in tests/test_stress.py.
"""
from __future__ import annotations

import contextlib
import importlib.resources
import math
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["SO3LRTeacher", "build_graph", "so3lr_available", "FAST_TEACHER_NAME"]

#: Name written into shards labelled with this evaluator (same network and conventions as the ASE path).
FAST_TEACHER_NAME = "SO3LR (so3krates-torch 0.2.1, bundled so3lr.model)"

_N_ELEMENTS = 118


def so3lr_available() -> bool:
    try:
        import so3krates_torch.modules.models  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    return {"float32": torch.float32, "float64": torch.float64, "single": torch.float32,
            "double": torch.float64}[str(dtype)]


def build_graph(pos: torch.Tensor, cell: Optional[torch.Tensor], cutoff: float,
                max_pairs_per_chunk: int = 1 << 23) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All edges (i, j, S) with 0 < d < cutoff (strict, as matscipy); returns (i, j, unit_shift S [E,3] int64, d2 [E] float64).

    ``pos`` [N, 3] (Å, any float dtype; the search runs in float64 on pos's device).  ``cell`` [3, 3] rows,
    or None for a non-periodic system.  The edge vector is ``pos[j] + S @ cell - pos[i]``."""
    dev = pos.device
    p = pos.detach().to(torch.float64)
    n = p.shape[0]
    rc2 = float(cutoff) ** 2
    ii, jj, ss, dd = [], [], [], []
    if cell is None:
        chunk = max(1, max_pairs_per_chunk // max(n, 1))
        cols = torch.arange(n, device=dev)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            v = p.unsqueeze(0) - p[s:e].unsqueeze(1)           # [c, N, 3]: r_j - r_i
            d2 = (v * v).sum(-1)
            rows = torch.arange(s, e, device=dev).unsqueeze(1)
            m = (d2 < rc2) & (rows != cols.unsqueeze(0))
            r, c = torch.nonzero(m, as_tuple=True)
            ii.append(r + s)
            jj.append(c)
            dd.append(d2[r, c])
        i = torch.cat(ii)
        return i, torch.cat(jj), torch.zeros(i.shape[0], 3, dtype=torch.long, device=dev), torch.cat(dd)

    # 3x3 algebra on the host (no cuSOLVER call / device sync per frame), then moved to the device
    c_host = cell.detach().to(device="cpu", dtype=torch.float64).reshape(3, 3)
    vol = float(torch.abs(torch.linalg.det(c_host)))
    if not (vol > 0.0) or not math.isfinite(vol):
        raise ValueError("build_graph: singular or non-finite cell")
    reach = []
    for k in range(3):
        h = vol / float(torch.linalg.norm(torch.linalg.cross(c_host[(k + 1) % 3], c_host[(k + 2) % 3])))
        reach.append(int(math.floor(float(cutoff) / h + 0.5 + 1e-9)))
    c64 = c_host.to(dev)
    inv = torch.linalg.inv(c_host).to(dev)
    frac = p @ inv
    rng = [torch.arange(-r, r + 1, device=dev) for r in reach]
    imgs = torch.stack(torch.meshgrid(rng, indexing="ij"), dim=-1).reshape(-1, 3)  # [M, 3] int64
    m_img = imgs.shape[0]
    img_cart = imgs.to(torch.float64) @ c64                                         # [M, 3]
    tt = (img_cart * img_cart).sum(-1)                                             # [M]
    zero_k = m_img // 2                                   # the centre of the symmetric image grid is n = 0
    chunk = max(1, max_pairs_per_chunk // max(n * m_img, 1))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        c = e - s
        df = frac.unsqueeze(0) - frac[s:e].unsqueeze(1)   # [c, N, 3]
        rnd = torch.round(df)
        base = ((df - rnd) @ c64).reshape(c * n, 3)       # fractional-minimum-image vectors
        # |base + t_m|^2 = |base|^2 + 2 base.t_m + |t_m|^2 : one [c*N, 3] x [3, M] product, no [c, N, M, 3]
        d2 = torch.addmm(tt.unsqueeze(0), base, img_cart.t(), alpha=2.0) + (base * base).sum(-1, keepdim=True)
        d2 = d2.clamp_min_(0.0).view(c, n, m_img)
        # true self edge: i == j with total shift S = n - round(df) = 0 (df = 0 for i == j, so n = 0)
        ar = torch.arange(c, device=dev)
        d2[ar, ar + s, zero_k] = float("inf")
        r, col, k = torch.nonzero(d2 < rc2, as_tuple=True)
        ii.append(r + s)
        jj.append(col)
        ss.append(imgs[k] - rnd[r, col].to(torch.long))
        dd.append(d2[r, col, k])
    return torch.cat(ii), torch.cat(jj), torch.cat(ss), torch.cat(dd)


class SO3LRTeacher:
    """SO3LR energy (eV) and forces (eV/Å) with the graph built on ``device``.

    ``lr_cutoff``: ``r_max_lr`` for periodic frames (12 Å, the calculator default and label.py's value);
    ``gas_lr_cutoff``: for frames without a cell (100 Å, label.py's ``--gas-lr-cutoff`` default).

    ``energy_sum64`` (default True): the total energy is the float64 sum of the model's per-atom energies
    (``node_energy``, which include the ZBL, electrostatic and dispersion terms) instead of the model's own
    float32 total.  Per-atom energies are ~ -160 eV, so a float32 total of 648 atoms (~ -1.1e5 eV) is rounded
    to ~0.01-0.04 eV (1-4 kJ/mol), different for every configuration: too much noise for Monte Carlo
    barostat moves (kT = 2.5 kJ/mol) and needless for labels.  The float64 sum is within ~5e-4 eV of a
    float64 evaluation of the model.  Forces are unaffected.  ``energy_sum64=False`` reproduces
    ``SO3LRCalculator``'s float32 energy bit for bit."""

    def __init__(self, device="cpu", dtype=torch.float32, lr_cutoff: float = 12.0, gas_lr_cutoff: float = 100.0,
                 dispersion_damping: float = 2.0, energy_sum64: bool = True, model=None):
        self.device = torch.device(device)
        self.dtype = _as_dtype(dtype)
        self.lr_cutoff = float(lr_cutoff)
        self.gas_lr_cutoff = float(gas_lr_cutoff)
        if model is None:
            model = self.load_model(self.device)
        model = model.to(self.device)
        model = model.double() if self.dtype == torch.float64 else model.float()
        for prm in model.parameters():
            prm.requires_grad_(False)
        model.eval()
        model.dispersion_energy_cutoff_lr_damping = float(dispersion_damping)
        if not getattr(model, "use_lr", False) or getattr(model, "use_pme", False):
            raise RuntimeError("expected the SO3LR model with sparse long-range (non-PME) interactions")
        self.model = model
        self.r_max = float(model.r_max)
        self.energy_sum64 = bool(energy_sum64)
        self.name = FAST_TEACHER_NAME
        self.settings = {"engine": "fast", "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                         "r_max": self.r_max, "r_max_lr": self.lr_cutoff, "gas_r_max_lr": self.gas_lr_cutoff,
                         "dispersion_energy_cutoff_lr_damping": float(dispersion_damping),
                         "energy": "float64 sum of per-atom energies" if energy_sum64 else "model total"}
        self.last_n_edges = (0, 0)

    @staticmethod
    def load_model(device="cpu"):
        try:
            import so3krates_torch.modules.models  # noqa: F401  (classes needed to unpickle the module)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                f"SO3LR teacher unavailable: cannot import so3krates_torch ({exc}). Install: pip install "
                "torch-geometric e3nn ase matscipy h5py && pip install --no-deps so3krates-torch==0.2.1") from exc
        res = importlib.resources.files("so3krates_torch.pretrained.so3lr").joinpath("so3lr.model")
        with importlib.resources.as_file(res) as path:
            return torch.load(path, map_location=torch.device(device), weights_only=False)

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _host_cell(cell) -> Optional[torch.Tensor]:
        """[3, 3] float64 cell on the host (the 3x3 algebra of ``build_graph`` runs there; no device sync), or
        None for a gas-phase frame (None or all zeros)."""
        if cell is None:
            return None
        c = torch.as_tensor(cell).detach().to(device="cpu", dtype=torch.float64).reshape(3, 3)
        return c if bool(torch.any(c != 0)) else None

    def batch_inputs(self, Z, positions_list, cells=None, charge=0) -> dict:
        """The batch dict the model's forward() reads for B frames of one system, as ONE disjoint graph.

        ``Z`` [N] (shared by all frames); ``positions_list`` B arrays [N, 3] or one [B, N, 3] (Å); ``cells``
        None (all gas phase) or B cells [3, 3] (or one [B, 3, 3]; None / all zeros = gas phase; all frames
        must agree); ``charge`` one total charge for all frames or B of them.  Each frame's graph is built with
        its own cell and its node indices are offset by ``b * N``; ``batch`` = frame index per atom, ``ptr`` =
        [0, N, ..., B N], ``head``/``total_spin`` zeros [B], ``total_charge`` [B], ``cell`` [B*3, 3] (the PyG
        collate of B [3, 3] cells).  B = 1 is exactly the single-frame dict of ``inputs``."""
        dev, dt = self.device, self.dtype
        z = torch.as_tensor(np.asarray(Z, dtype=np.int64) if not torch.is_tensor(Z) else Z,
                            device=dev).to(torch.long).reshape(-1)
        n = z.shape[0]
        if n == 0 or int(z.min()) < 1 or int(z.max()) > _N_ELEMENTS:
            raise ValueError("atomic numbers must be in 1..118 (and at least one atom)")
        if (torch.is_tensor(positions_list) or isinstance(positions_list, np.ndarray)) and positions_list.ndim == 3:
            pos64 = torch.as_tensor(positions_list, device=dev).to(torch.float64)   # [B, N, 3]: one transfer
        else:
            pos64 = [torch.as_tensor(p, device=dev).to(torch.float64).reshape(-1, 3) for p in positions_list]
            if any(p.shape[0] != n for p in pos64):
                raise ValueError(f"{n} atomic numbers but {[p.shape[0] for p in pos64]} positions")
            pos64 = torch.stack(pos64) if pos64 else torch.zeros(0, n, 3, dtype=torch.float64, device=dev)
        nb = pos64.shape[0]
        if nb == 0 or tuple(pos64.shape[1:]) != (n, 3):
            raise ValueError(f"{n} atomic numbers but positions of shape {tuple(pos64.shape)}")
        cell_h = [None] * nb if cells is None else [self._host_cell(c) for c in cells]
        if len(cell_h) != nb:
            raise ValueError(f"{nb} frames but {len(cell_h)} cells")
        periodic = cell_h[0] is not None
        if any((c is not None) != periodic for c in cell_h):
            raise ValueError("batch_inputs: the frames of a batch must be all periodic or all gas phase "
                             "(model.r_max_lr is one value per call)")
        charges = np.array(np.broadcast_to(np.asarray(charge, dtype=np.float64).reshape(-1), (nb,)))
        cell = (torch.stack(cell_h) if periodic else torch.zeros(nb, 3, 3, dtype=torch.float64)).to(dev)
        r_lr = self.lr_cutoff if periodic else self.gas_lr_cutoff
        edge_lr, unit_lr, shifts_lr, sr = [], [], [], []
        for b in range(nb):   # each frame's graph with its own cell, node indices offset by b * N
            i, j, s, d2 = build_graph(pos64[b], cell_h[b], r_lr)
            edge_lr.append(torch.stack([i, j]) + b * n)
            unit_lr.append(s)
            shifts_lr.append(s.to(torch.float64) @ cell[b])   # zeros (S = 0, cell 0) for gas phase
            sr.append(d2 <= self.r_max * self.r_max)
        edge_lr, s, shifts_lr64, sr = (torch.cat(edge_lr, 1), torch.cat(unit_lr), torch.cat(shifts_lr),
                                       torch.cat(sr))
        node_attrs = torch.zeros(n, _N_ELEMENTS, dtype=dt, device=dev)
        node_attrs[torch.arange(n, device=dev), z - 1] = 1.0
        self.model.r_max_lr = r_lr
        self.last_n_edges = (int(sr.sum()), int(edge_lr.shape[1]))
        return {
            "positions": pos64.reshape(nb * n, 3).to(dt),
            "edge_index": edge_lr[:, sr],
            "shifts": shifts_lr64[sr].to(dt),
            "unit_shifts": s[sr].to(dt),
            "edge_index_lr": edge_lr,
            "shifts_lr": shifts_lr64.to(dt),
            "unit_shifts_lr": s.to(dt),
            "cell": cell.reshape(nb * 3, 3).to(dt),
            "node_attrs": node_attrs.repeat(nb, 1),
            "atomic_numbers": z.repeat(nb),
            "batch": torch.arange(nb, device=dev).repeat_interleave(n),
            "ptr": torch.arange(nb + 1, device=dev) * n,
            "head": torch.zeros(nb, dtype=torch.long, device=dev),
            "total_charge": torch.as_tensor(charges, device=dev).to(dt),
            "total_spin": torch.zeros(nb, dtype=dt, device=dev),
        }

    def inputs(self, Z, positions, cell=None, charge: int = 0) -> dict:
        """The batch dict the model's forward() reads (one graph), built on the device."""
        return self.batch_inputs(Z, [positions], None if cell is None else [cell], charge)

    def energy_forces_batch_tensors(self, Z, positions_list, cells=None, charge=0, stress: bool = False):
        """(energies [B] eV, forces [B, N, 3] eV/Å) of B frames of one system in ONE model call, as detached
        tensors on the device (arguments as ``batch_inputs``).  Energies are float64 per-frame sums of the
        per-atom energies when ``energy_sum64``, else the model's per-graph totals.

        ``stress=True`` adds a third tensor, the configurational stress [B, 3, 3] (eV/Å^3, model dtype) from the
        same call: SO3LR's own strain derivative (``compute_stress``: a symmetric strain eps applied to the
        positions and the cell, the edge shifts recomputed from the strained cell), stress = (1/V) dE/deps, the
        ASE sign convention; the configurational pressure is -trace/3 = -dE/dV.  No kinetic part.  NaN for a
        gas-phase batch.  Energies and forces are those of ``stress=False`` (the strain is zero)."""
        data = self.batch_inputs(Z, positions_list, cells, charge)
        nb = int(data["ptr"].shape[0]) - 1
        periodic = bool(stress) and cells is not None and any(self._host_cell(c) is not None for c in cells)
        with _default_dtype(self.dtype), torch.enable_grad():
            out = self.model(data, compute_stress=periodic)
        if self.energy_sum64:
            # frames are contiguous and of equal size N: the per-frame float64 sum over ``batch`` is a row sum
            energy = out["node_energy"].detach().to(torch.float64).reshape(nb, -1).sum(1)
        else:
            energy = out["energy"].detach().reshape(nb)
        forces = out["forces"].detach().reshape(nb, -1, 3)
        if not stress:
            return energy, forces
        if periodic:
            sigma = out["stress"].detach().reshape(nb, 3, 3)
        else:
            sigma = torch.full((nb, 3, 3), float("nan"), dtype=forces.dtype, device=forces.device)
        return energy, forces, sigma

    def energy_forces_batch(self, Z, positions_list, cells=None, charge=0, stress: bool = False):
        """Energies (eV, float64 ndarray [B]) and forces (eV/Å, float32 ndarray [B, N, 3]) of B frames of one
        system (same Z, charge and periodicity; each frame its own cell) from one model call; ``stress=True``
        adds the stress (eV/Å^3, float64 ndarray [B, 3, 3], NaN for gas phase; see
        ``energy_forces_batch_tensors``)."""
        out = self.energy_forces_batch_tensors(Z, positions_list, cells, charge, stress)
        e, f = out[0].to(torch.float64).cpu().numpy(), out[1].to(torch.float32).cpu().numpy()
        return (e, f, out[2].to(torch.float64).cpu().numpy()) if stress else (e, f)

    def energy_forces_tensors(self, Z, positions, cell=None, charge: int = 0, stress: bool = False):
        """(energy [] eV, forces [N, 3] eV/Å[, stress [3, 3] eV/Å^3]) as detached tensors on the device (energy
        float64 when ``energy_sum64``, else the model dtype; forces and stress in the model dtype)."""
        out = self.energy_forces_batch_tensors(Z, [positions], None if cell is None else [cell], charge, stress)
        return tuple(t[0] for t in out)

    def energy_forces(self, Z, positions, cell=None, charge: int = 0, stress: bool = False):
        """Energy (eV, float) and forces (eV/Å, float32 ndarray [N, 3]) of one frame; ``stress=True`` adds the
        stress (eV/Å^3, float64 ndarray [3, 3], NaN for gas phase).

        ``positions`` and ``cell`` in Å (ndarray or tensor); ``cell`` None or all zeros = gas phase."""
        out = self.energy_forces_tensors(Z, positions, cell, charge, stress)
        e, f = float(out[0]), out[1].to(torch.float32).cpu().numpy()
        return (e, f, out[2].to(torch.float64).cpu().numpy()) if stress else (e, f)

    # label.py's teacher interface: teacher(z, pos, cell, pbc, charge, multiplicity), and the batched one
    @staticmethod
    def _periodic(pbc, multiplicity: int) -> bool:
        if multiplicity != 1:
            raise ValueError("only closed-shell (multiplicity 1) frames are labelled")
        pbc = np.asarray(pbc, dtype=bool).reshape(-1)
        if pbc.any() and not pbc.all():
            raise ValueError("fast SO3LR teacher: mixed periodicity is not supported (use --engine ase)")
        return bool(pbc.any())

    def __call__(self, z, pos, cell, pbc, charge: int, multiplicity: int, stress: bool = False):
        periodic = self._periodic(pbc, multiplicity)
        return self.energy_forces(z, pos, cell if periodic else None, int(charge), stress)

    def call_batch(self, z, positions, cells, pbc, charge: int, multiplicity: int, stress: bool = False):
        """B frames of one shard (``positions`` [B, N, 3], ``cells`` [B, 3, 3]) in one model call:
        (energies float64 [B], forces float32 [B, N, 3]), and with ``stress`` the stress float64 [B, 3, 3]
        (eV/Å^3, NaN for gas phase)."""
        periodic = self._periodic(pbc, multiplicity)
        return self.energy_forces_batch(z, positions, cells if periodic else None, int(charge), stress)
