"""CUDA-graph replay of the model's energy and forces (on by default for float32 CUDA systems of up to 150,000 atoms).

For small MD systems one force call is bound by the CPU: ~1,200 kernel launches and several host syncs for
~9 ms of GPU work (600 waters on an H200).  :class:`GraphedEnergyForces` captures the network's forward and
its ``torch.autograd.grad`` backward once in a ``torch.cuda.CUDAGraph`` and replays it every step:

1. the neighbour list, into fixed-capacity edge buffers (padding: ghost -> ghost edges of length 2 cutoff,
   exactly neutral, see ``E2FormerV2.padded_energy_terms``).  For gas-phase systems and orthorhombic boxes
   with every edge longer than 2 cutoffs (every MD water box or solvated solute we run) it is part of the
   graph: ``model.neighbors.dense_neighbor_edges``, all pairs with static shapes, the same edges as
   ``E2FormerV2.neighbor_edges``; one device -> host read after the replay checks that they fitted (if not,
   the buffers grow and the step is recomputed; a system with a NaN / inf position gets a NaN energy).
   Otherwise (more than ``DENSE_MAX_PAIRS`` atom pairs, triclinic or small boxes) it is a Verlet list: the
   candidates within cutoff + ``skin`` (1 Å) of every atom are built eagerly now and then
   (``model.neighbors.candidate_table``: the cell list, with host syncs), and each call selects the edges from
   them inside the graph (``candidate_neighbor_edges``, O(N K)); the same read after the replay says whether an
   atom moved more than skin / 2 since the build, and a changed cell is seen before it: then the candidates are
   rebuilt and the step recomputed.  The eager cell list before every replay (``neighbors="host"``, the only
   choice for these systems before session 16) took 3.1 of the 40.1 ms of a V1.5-size call at 10,000 atoms
   (H200); session 6 measured it at 8.6 of the 24.4 ms of a 1,800-atom call;
2. replay of the captured ``padded_energy_terms`` + backward (static shapes, no host sync).

:class:`BatchedGraphedEnergyForces` does the same for several independent systems in one graph (disjoint
blocks, per-system charge, cell and energy): many small MD systems on one GPU without one CUDA context each
(``training.stability``'s batched engine).

The edge capacity is ``headroom`` x the edge count rounded up (and the degree bound of the kernels' edge tiles
the next power of two of the largest in-degree, at most ``max_neighbors``); when a step needs more, the
buffers grow and the graph is captured again.  On the CPU, or with ``capture=False``, the same padded path
runs eagerly (this is how the CPU tests check it).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

from .kernels._node_switch import launch_device
from .model.e2former import pad_edges
from .model.neighbors import candidate_neighbor_edges, candidate_table, dense_neighbor_edges
from .model.validation import EMPTY_SYSTEM

__all__ = ["AUTO_MAX_ATOMS", "BatchedGraphedEnergyForces", "DENSE_MAX_PAIRS", "ENV_VAR", "GRAPH_MEMORY_FRACTION",
           "GraphedEnergyForces", "NEIGHBORS_ENV_VAR", "cuda_graphs_requested", "dense_box", "graph_memory_fits",
           "use_cuda_graphs"]

#: environment variable that overrides the default choice of the OpenMM force (when its ``cuda_graphs``
#: argument is None): 1 / true / yes / on forces the path on CUDA at any size, 0 / false / no / off turns it off
ENV_VAR = "E2FORMER_CUDA_GRAPHS"

#: on CUDA the path is on by default for float32 models up to this many ML atoms, where the step's estimated memory
#: fits (``graph_memory_fits``).  Small systems are bound by kernel launches, which the graph replays at once (H200,
#: benchmarks/results/graphed_check_h200.md: 39.9 -> 23.3 ms at 1,800 atoms).  Since session 16 the neighbour list
#: of large systems is a Verlet list whose edges are selected inside the graph (before, an eager cell list ran
#: before each replay), and the graph wins at every size measured with the bundled model through OpenMM (H200,
#: benchmarks/results/session16_h200.md): 32,400 atoms 32.6 -> 22.4 ms per step, 48,600 atoms 45.3 -> 32.5,
#: 115,200 atoms 90.1 -> 75.5 (with 12.8 instead of 6.7 GiB reserved).  Session 15's limit was 15,000 atoms.
#: float64 (the PyTorch route, no fused kernels) is 3-4x slower padded: never on by default.
AUTO_MAX_ATOMS = 150_000

#: the graph is on by default only where the model's estimate of a step without activation checkpointing
#: (``checkpoint_none_bytes_per_element`` x atoms x 9 x channels; the padded path never checkpoints) is at most
#: this share of the device's available memory: its pool holds the step's activations, and the warm-up runs the
#: step eagerly beside it.  The estimate is on the safe side (bundled model, 115,200 atoms: 21 GB estimated, 12.8
#: GiB reserved in all; a V1.5-size model at 20k atoms: 14.7 GB estimated, 11.1 GiB peak measured)
GRAPH_MEMORY_FRACTION = 0.5


def graph_memory_fits(model, n_atoms: int) -> bool:
    """Whether a step of ``n_atoms`` without checkpointing, as ``model`` estimates it, takes at most
    ``GRAPH_MEMORY_FRACTION`` of the available memory of its CUDA device (free plus cached-but-unused bytes);
    True where the model has no estimate or the device cannot be asked."""
    per = getattr(model, "checkpoint_none_bytes_per_element", None)
    channels = getattr(model, "channels", None) or getattr(getattr(model, "config", None), "channels", None)
    dev = getattr(model, "device", None)
    if per is None or channels is None or dev is None or getattr(dev, "type", None) != "cuda":
        return True
    try:
        free, _total = torch.cuda.mem_get_info(dev)
        avail = free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    except Exception:
        return True
    return float(per) * n_atoms * 9 * int(channels) <= GRAPH_MEMORY_FRACTION * avail


def cuda_graphs_requested(flag: Optional[bool] = None) -> Optional[bool]:
    """``flag`` if given, else ``E2FORMER_CUDA_GRAPHS`` read as True (1 / true / yes / on), False (0 / false /
    no / off, or any other set value) or None (unset or empty: the caller's default applies)."""
    if flag is not None:
        return bool(flag)
    val = os.environ.get(ENV_VAR, "").strip().lower()
    if not val:
        return None
    return val in ("1", "true", "yes", "on")


def use_cuda_graphs(flag: Optional[bool], on_cuda: bool, n_atoms: int, float32: bool = True,
                    fits: bool = True) -> bool:
    """Whether the OpenMM force takes the padded / CUDA-graph path.

    An explicit ``flag`` wins on any device (``True`` on the CPU runs the padded path eagerly, for tests).
    Otherwise the environment variable decides on CUDA, and without it the path is on for float32 CUDA systems
    of at most :data:`AUTO_MAX_ATOMS` atoms whose step ``fits`` (``graph_memory_fits``).  Never on the CPU by
    default (no graphs there; the padded path is slower than the eager one), nor for float64 models by default
    (slower padded, see above)."""
    if flag is not None:
        return bool(flag)
    if not on_cuda:
        return False
    env = cuda_graphs_requested()
    return env if env is not None else (float32 and n_atoms <= AUTO_MAX_ATOMS and fits)


#: environment variable with the default neighbour-list placement of the graphed path: auto (unset), device,
#: verlet or host (see ``GraphedEnergyForces``)
NEIGHBORS_ENV_VAR = "E2FORMER_GRAPH_NEIGHBORS"

#: the in-graph (all pairs) neighbour list is used while B x n_max^2 (systems x the largest system's atom count
#: squared: every system is padded to n_max) stays at or below this (one system of 5,000 atoms: ~0.7 GB of
#: float64 / float32 pair temporaries)
DENSE_MAX_PAIRS = 25_000_000


def dense_box(cell, periodic: bool, cutoff: float) -> Optional[np.ndarray]:
    """The [3] box edge lengths (Å) for the in-graph neighbour list, ``ones(3)`` for a non-periodic system, or
    None when the cell does not allow it (not orthorhombic, or an edge not longer than 2 ``cutoff``: an atom
    could then see two images of another within the cutoff)."""
    if not periodic:
        return np.ones(3)
    c = np.asarray(cell.detach().cpu() if isinstance(cell, torch.Tensor) else cell, dtype=np.float64).reshape(3, 3)
    diag = np.diag(c).copy()
    if not np.isfinite(c).all() or np.abs(c - np.diag(diag)).max() > 1e-9 * max(1.0, np.abs(diag).max()):
        return None
    if diag.min() <= 2.0 * cutoff * (1.0 + 1e-6):
        return None
    return diag


class _PaddedGraph:
    """Shared machinery of the two public classes: B fixed systems (concatenated atoms, one ghost node after
    them), static buffers, the neighbour list (in the graph or eager), capture and replay."""

    def __init__(self, model, atomic_numbers: Sequence[Sequence[int]], periodic: Sequence[bool],
                 charges: Sequence[int], multiplicities: Sequence[int], head: Optional[str], capture: Optional[bool],
                 headroom: float, warmup: int, neighbors: str, skin: float = 1.0):
        if neighbors is None:
            neighbors = os.environ.get(NEIGHBORS_ENV_VAR, "").strip().lower() or "auto"
        if neighbors not in ("auto", "device", "verlet", "host"):
            raise ValueError(f"neighbors must be 'auto', 'device', 'verlet' or 'host', got {neighbors!r}")
        dev = model.device
        self.model = model
        zs = [torch.as_tensor(z).reshape(-1).to(dev, torch.long) for z in atomic_numbers]
        self.sizes = [int(z.numel()) for z in zs]
        self.B = len(zs)
        # (as the eager path's check_inputs: the node-level layers cannot take zero rows, and here the padded
        # buffers failed with an index error)
        if not zs:
            raise ValueError("no systems: give the atomic numbers of at least one system")
        empty = [b for b, s in enumerate(self.sizes) if s == 0]
        if empty:
            raise ValueError(EMPTY_SYSTEM if self.B == 1
                             else f"no atoms in system(s) {empty} of the batch: every system needs at least one atom")
        self.n = sum(self.sizes)
        z = torch.cat(zs)
        self.z = torch.cat([z, z.new_zeros(1)])          # ghost node N: any valid element index
        self.periodic = [bool(p) for p in periodic]
        self.head = model.head_index(head)
        self.reference = torch.stack([model.reference(zb, self.head) for zb in zs])   # float64 [B], constant
        with torch.no_grad():
            system = model.system_embedding(torch.tensor([int(q) for q in charges], device=dev),
                                            torch.tensor([int(s) for s in multiplicities], device=dev))
        if self.B == 1:
            self.owner, self.system = None, system          # [1, C], broadcast over the nodes
        else:
            self.owner = torch.repeat_interleave(torch.arange(self.B, device=dev),
                                                 torch.tensor(self.sizes, device=dev))
            self.system = torch.cat([system[self.owner], system[:1]])[:, None, :]   # per node [N + 1, 1, C]
        nmax = max(self.sizes)
        off = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        slots = np.full((self.B, nmax), self.n, dtype=np.int64)
        for b, (o, nb) in enumerate(zip(off, self.sizes)):
            slots[b, :nb] = o + np.arange(nb)
        self.slots = torch.from_numpy(slots).to(dev)
        self.periodic_t = torch.tensor(self.periodic, device=dev)
        # the eager neighbour list's pbc (single periodic system), built once rather than on every call
        self._pbc = torch.tensor([True, True, True], device=dev) if self.B == 1 and self.periodic[0] else None
        self.dense_ok = neighbors in ("auto", "device") and self.B * nmax * nmax <= DENSE_MAX_PAIRS
        # the Verlet list (one system; any cell): candidates within cutoff + skin built eagerly now and then, the
        # edges selected from them inside the graph
        self.verlet_ok = neighbors in ("auto", "verlet") and self.B == 1
        self.skin = float(skin)
        if not (math.isfinite(self.skin) and self.skin >= 0.0):
            raise ValueError(f"the Verlet list's skin must be a finite length >= 0 Å, got {skin!r}")
        self.verlet_builds = 0                              # candidate builds so far
        self._cand = self._cand_shift = self._cand_ref = self._cand_cell = None
        self.neighbors = neighbors
        self.capture = dev.type == "cuda" if capture is None else bool(capture)
        self.headroom = float(headroom)
        self.warmup = int(warmup)
        self.edge_capacity = 0
        self.degree_bound = 0
        self.captures = 0
        self.capture_error: Optional[BaseException] = None
        self.mode: Optional[str] = None        # "device" / "verlet" / "host": where the last call's edges came from
        self._graph = None
        self._graph_mode: Optional[str] = None
        self._pos = torch.zeros(self.n, 3, dtype=model.dtype, device=dev)
        self._box = torch.ones(self.B, 3, dtype=model.dtype, device=dev)
        self._stats = torch.zeros(4, dtype=torch.long, device=dev)     # see candidate_neighbor_edges
        self._edges = None
        self._energy = self._forces = None

    # ------------------------------------------------------------------------------------------------
    def _boxes(self, cells, cells_host) -> Optional[np.ndarray]:
        """[B, 3] box lengths for the in-graph neighbour list, or None (eager neighbour list)."""
        if not self.dense_ok:
            return None
        src = cells_host if cells_host is not None else cells
        if isinstance(src, torch.Tensor):
            src = src.detach().cpu().numpy()              # one read for all systems
        out = []
        for b in range(self.B):
            c = None
            if self.periodic[b]:
                if src is None:
                    raise ValueError("a periodic system needs its cell")
                c = src if np.ndim(src) == 2 else src[b]
            box = dense_box(c, self.periodic[b], self.model.cutoff)
            if box is None:
                return None
            out.append(box)
        return np.stack(out)

    def _evaluate(self, positions: torch.Tensor, cells, cells_host=None) -> None:
        # everything (buffers, side stream, capture, replay) on the model's device, also when another CUDA device
        # is current (a model on cuda:1 while cuda:0 is current): torch.cuda.Stream() and the capture would
        # otherwise use the current device
        with launch_device(self.model.device):
            self._evaluate_on_device(positions, cells, cells_host)

    def _evaluate_on_device(self, positions: torch.Tensor, cells, cells_host=None) -> None:
        m = self.model
        pos = positions.to(m.device, m.dtype)
        boxes = self._boxes(cells, cells_host)
        if boxes is None and (self.neighbors == "device" or self.B > 1):
            raise ValueError("the in-graph neighbour list needs gas-phase systems or orthorhombic boxes with "
                             f"every edge longer than 2 x the cutoff ({2 * m.cutoff} Å), and at most "
                             f"{DENSE_MAX_PAIRS} atom pairs")
        mode = "device" if boxes is not None else ("verlet" if self.verlet_ok else "host")
        self.mode = mode
        self._pos.copy_(pos)
        if mode == "verlet":
            self._evaluate_verlet(pos, cells, cells_host)
            return
        if mode == "host":
            cell = cells if cells is None else cells.to(m.device, m.dtype)
            center, neighbor, shift = m.neighbor_edges(pos, cell, self._pbc, check_overlap=False)
            E = center.numel()
            # largest in-degree (edges are sorted by centre; the one device -> host sync added to the list's)
            degree = int((torch.arange(E, device=center.device) - torch.searchsorted(center, center)).max()) + 1 \
                if E > 0 else 1
            grown = self._edges is None or E > self.edge_capacity or degree > self.degree_bound
            if grown:
                self._grow(E, degree)
            pad_edges(center, neighbor, shift, self.n, self.edge_capacity, m.cutoff,
                      out=tuple(t[:self.edge_capacity] for t in self._edges[:3]))
            self._execute(mode, grown)
            return
        self._box.copy_(torch.as_tensor(boxes, dtype=m.dtype))
        self._replay_with_list(mode, self._neighbors_device, None, 3)

    def _replay_with_list(self, mode: str, neighbors, rebuild, tries: int) -> None:
        """The replay with an in-graph neighbour list (``neighbors(k)`` runs it eagerly at degree bound k): on the
        first call the edge buffers are sized from a dry run; after each replay the one device -> host read of the
        stats says whether the edges fitted (if not: larger buffers, a new graph, the same step again) and, with
        ``rebuild`` (the Verlet list), whether an atom moved past the skin (then ``rebuild()`` and again)."""
        m = self.model
        if self._edges is None:
            # first call: size the buffers from a dry run of the neighbour list (every edge to the scratch slot)
            self._grow(0, 1)
            neighbors(m.max_neighbors)
            E, degree = self._stats.tolist()[:2]
            self._grow(E, degree)
        moved = False
        for _ in range(tries):
            self._execute(mode, False)
            E, degree, _bad, moved = self._stats.tolist()
            moved = bool(moved) and rebuild is not None
            if moved:
                rebuild()
                continue
            if E <= self.edge_capacity and (degree <= self.degree_bound or self.degree_bound >= m.max_neighbors):
                return
            if degree > self.degree_bound and self.degree_bound < m.max_neighbors:
                # the edge count above was cut at the old bound: count again, eagerly, at the model's cap
                self._grow(0, degree)
                neighbors(m.max_neighbors)
                E, degree = self._stats.tolist()[:2]
            self._grow(E, degree)                          # did not fit: larger buffers, new graph, same step
        raise RuntimeError(f"the in-graph neighbour list did not settle in {tries} tries ({E} edges, degree "
                           f"{degree}, atoms moved past the Verlet skin: {moved})")  # pragma: no cover

    def _evaluate_verlet(self, pos: torch.Tensor, cells, cells_host) -> None:
        """One call with the Verlet list: candidates (re)built before the replay where there are none, the cell
        changed or an atom moved more than half the skin since they were built (``_moved_too_far``); should the
        graph's own check after the replay still see such a move, they are rebuilt and the step recomputed, as
        when the edge buffers overflow."""
        cell_np = None
        if self.periodic[0]:
            src = cells_host if cells_host is not None else cells
            if src is None:
                raise ValueError("a periodic system needs its cell")
            cell_np = np.asarray(src.detach().cpu() if isinstance(src, torch.Tensor) else src,
                                 dtype=np.float64).reshape(3, 3)
        if (self._cand is None or (cell_np is not None and not np.array_equal(cell_np, self._cand_cell))
                or self._moved_too_far()):
            self._build_candidates(pos, cell_np)
        self._replay_with_list("verlet", self._neighbors_verlet, lambda: self._build_candidates(pos, cell_np), 4)

    def _moved_too_far(self) -> bool:
        """Whether an atom moved more than skin / 2 since the candidates were built: asked before the replay (one
        small reduction and a device -> host read), so that an MD step that needs new candidates does not replay
        the model twice (the graph's own check, after the replay, stays as the safety net).  In MD the candidates
        are rebuilt every few to a few tens of steps; a replay thrown away each time would cost more than this read
        (a 115,200-atom replay takes ~75 ms on an H200)."""
        move = torch.linalg.vector_norm(self._pos.to(torch.float64) - self._cand_ref, dim=1)
        return move.numel() > 0 and bool(move.max() > 0.5 * self.skin)

    def _build_candidates(self, pos: torch.Tensor, cell_np) -> None:
        """The Verlet list's candidates at ``pos`` (eager, ``model.neighbors.candidate_table``), written into the
        existing buffers where they fit (the captured graph reads them there), else into larger ones (a new
        graph)."""
        m = self.model
        dev = pos.device
        cell = None if cell_np is None else torch.as_tensor(cell_np, device=dev)
        old = 0 if self._cand is None else self._cand.shape[1]
        cand, shift, count = candidate_table(pos, cell, self._pbc, m.cutoff + self.skin, self.n, old)
        if cand.shape[1] > old:                            # larger buffers, with headroom (padding columns)
            width = max(cand.shape[1], 8 * math.ceil(max(1.0, count * self.headroom) / 8))
            self._cand = torch.cat([cand, cand.new_full((self.n, width - cand.shape[1]), self.n)], dim=1)
            self._cand_shift = torch.cat([shift, shift.new_zeros(self.n, width - cand.shape[1], 3)], dim=1)
            self._cand_ref = pos.detach().to(torch.float64).clone()
            self._graph = None                             # new buffers: capture again
        else:
            self._cand.copy_(cand)
            self._cand_shift.copy_(shift)
            self._cand_ref.copy_(pos.detach())
        self._cand_cell = None if cell_np is None else cell_np.copy()
        self.verlet_builds += 1

    def _neighbors_verlet(self, k: Optional[int] = None) -> None:
        m = self.model
        candidate_neighbor_edges(self._pos, self._cand, self._cand_shift, self._cand_ref, 0.5 * self.skin, m.cutoff,
                                 m.min_dist, self.degree_bound if k is None else k, self.edge_capacity, self.n,
                                 (*self._edges, self._stats))

    def _execute(self, mode: str, grown: bool) -> None:
        if self.capture and (grown or self._graph is None or self._graph_mode != mode):
            self._capture(mode)
        if self._graph is not None and self._graph_mode == mode:
            self._graph.replay()
        else:
            self._run(mode)

    def _grow(self, edges: int, degree: int) -> None:
        m = self.model
        self._graph = None                                 # frees the old graph's memory pool
        self.edge_capacity = max(self.edge_capacity, 256 * math.ceil(max(1.0, edges * self.headroom) / 256))
        self.degree_bound = max(self.degree_bound, min(m.max_neighbors, 1 << max(0, degree - 1).bit_length()))
        cap, dev = self.edge_capacity, m.device
        # one scratch slot after the capacity (where the in-graph list drops what it does not keep)
        self._edges = (torch.empty(cap + 1, dtype=torch.long, device=dev),
                       torch.empty(cap + 1, dtype=torch.long, device=dev),
                       torch.empty(cap + 1, 3, dtype=m.dtype, device=dev))

    def _neighbors_device(self, k: Optional[int] = None) -> None:
        m = self.model
        dense_neighbor_edges(self._pos, self.slots, self._box, self.periodic_t, m.cutoff, m.min_dist,
                             self.degree_bound if k is None else k, self.edge_capacity, self.n,
                             (*self._edges, self._stats[:3]))

    def _run(self, mode: str) -> None:
        """Energies and forces from the static buffers into ``_energy`` / ``_forces`` (what the graph captures);
        ``mode`` "device": the neighbour list first."""
        m = self.model
        if mode == "device":
            self._neighbors_device()
        elif mode == "verlet":
            self._neighbors_verlet()
        cap = self.edge_capacity
        edges = tuple(t[:cap] for t in self._edges)
        autograd = not m.direct_forces
        pos = self._pos.detach().requires_grad_(autograd)
        with torch.enable_grad() if autograd else torch.no_grad():
            e, direct = m.padded_energy_terms(self.z, pos, *edges, self.system, self.head, self.degree_bound,
                                              owner=self.owner, num_systems=self.B)
            f = -torch.autograd.grad(e.sum(), pos)[0] if autograd else direct
        energy = e.detach().to(torch.float64).reshape(-1) + self.reference
        # a system with a NaN / inf position gets a NaN energy (part of the graph, so per system and without a
        # host sync): the in-graph neighbour list gives such atoms no edges, so its numbers would look valid; the
        # other systems of a batch are unaffected (no edge joins systems).  The OpenMM force then re-runs its
        # validated path, which names the atoms.
        bad = (~torch.isfinite(self._pos)).any(dim=1).to(torch.float64)
        bad = bad.sum().reshape(1) if self.owner is None else bad.new_zeros(self.B).index_add(0, self.owner, bad)
        self._energy = torch.where(bad > 0, torch.full_like(energy, float("nan")), energy)
        self._forces = f.detach()

    def _capture(self, mode: str) -> None:
        """Warm up on a side stream (lazy initialisation, Triton compilation), then capture ``_run``."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._run(mode)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._run(mode)
        except Exception as exc:  # a capture failure must not end the simulation: run eagerly instead
            self.capture, self.capture_error, self._graph = False, exc, None
            warnings.warn(f"CUDA-graph capture of the E2Former-V2 force failed ({exc!r}); running the padded "
                          "path without a graph", RuntimeWarning, stacklevel=4)
            return
        self._graph, self._graph_mode = graph, mode
        self.captures += 1


class GraphedEnergyForces(_PaddedGraph):
    """``(positions [N, 3] Å, cell [3, 3] Å or None) -> (energy eV float64 incl. reference energies, forces
    [N, 3] eV/Å)`` of one fixed system (atomic numbers, charge, multiplicity, head, periodicity), through the
    padded static-shape path; captured in a CUDA graph on CUDA unless ``capture=False``.

    ``neighbors``: "auto" (the all-pairs in-graph list where the system allows it, else the Verlet list; see the
    module docstring), "device" (the all-pairs list or an error), "verlet" (always the Verlet list) or "host" (the
    eager cell list before every replay); None: ``E2FORMER_GRAPH_NEIGHBORS`` if set, else "auto".  ``mode`` says
    which the last call used.  ``skin``: the Verlet list's skin (Å); ``verlet_builds`` counts its candidate builds.
    ``captures`` counts the graph captures (1 + the capacity increases, the Verlet list's candidate-buffer growths
    and neighbour-list switches);
    ``capture_error`` holds the exception if a capture failed (the padded path then runs eagerly, with a
    warning)."""

    def __init__(self, model, atomic_numbers: Sequence[int], periodic: bool = False, charge: int = 0,
                 multiplicity: int = 1, head: Optional[str] = None, capture: Optional[bool] = None,
                 headroom: float = 1.2, warmup: int = 3, neighbors: Optional[str] = None, skin: float = 1.0):
        super().__init__(model, [atomic_numbers], [periodic], [charge], [multiplicity], head, capture, headroom,
                         warmup, neighbors, skin)

    def __call__(self, positions: torch.Tensor, cell: Optional[torch.Tensor] = None, cell_host=None):
        """``cell_host``: the same cell as a host array, if the caller has one (saves a device -> host read
        for the neighbour-list choice)."""
        self._evaluate(positions, cell, cell_host)
        return self._energy[0].clone(), self._forces.clone()


class BatchedGraphedEnergyForces(_PaddedGraph):
    """Several fixed systems in ONE padded model call (and one CUDA graph): ``(positions [sum N_b, 3] Å,
    system after system; cells [B, 3, 3] Å, None for an all gas-phase batch) -> (energies [B] eV float64
    incl. reference energies, forces [sum N_b, 3] eV/Å)``.  Every system must allow the in-graph neighbour
    list (gas phase, or an orthorhombic box with edges longer than 2 cutoffs).  The systems are disjoint
    blocks of one graph, each with its own charge / multiplicity embedding, so each gets the energy and forces
    it gets alone (to float rounding)."""

    def __init__(self, model, atomic_numbers: Sequence[Sequence[int]], periodic: Sequence[bool],
                 charges: Optional[Sequence[int]] = None, multiplicities: Optional[Sequence[int]] = None,
                 head: Optional[str] = None, capture: Optional[bool] = None, headroom: float = 1.1,
                 warmup: int = 3):
        B = len(atomic_numbers)
        super().__init__(model, atomic_numbers, periodic, charges if charges is not None else [0] * B,
                         multiplicities if multiplicities is not None else [1] * B, head, capture, headroom,
                         warmup, "device")
        if not self.dense_ok:
            raise ValueError(f"{B} systems of up to {max(self.sizes)} atoms: B x n_max^2 = "
                             f"{B * max(self.sizes) ** 2} atom pairs exceeds DENSE_MAX_PAIRS = {DENSE_MAX_PAIRS} "
                             "(the in-graph neighbour list); use fewer or smaller systems per batch")

    def __call__(self, positions: torch.Tensor, cells=None):
        self._evaluate(positions, cells)
        return self._energy.clone(), self._forces.clone()
