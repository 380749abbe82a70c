"""CUDA-graph replay of the model's energy and forces (on by default for small float32 CUDA systems).

For small MD systems one force call is bound by the CPU: ~1,200 kernel launches and several host syncs for
~9 ms of GPU work (600 waters on an H200).  :class:`GraphedEnergyForces` captures the network's forward and
its ``torch.autograd.grad`` backward once in a ``torch.cuda.CUDAGraph`` and replays it every step:

1. eagerly (it may sync): the neighbour list (``E2FormerV2.neighbor_edges``), then the edges are copied into
   fixed-capacity buffers with ``pad_edges`` (padding: ghost -> ghost edges of length 2 cutoff, exactly
   neutral, see ``E2FormerV2.padded_energy_terms``) and the positions into a static buffer;
2. replay of the captured ``padded_energy_terms`` + backward (static shapes, no host sync).

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

import torch

from .model.e2former import pad_edges

__all__ = ["AUTO_MAX_ATOMS", "ENV_VAR", "GraphedEnergyForces", "cuda_graphs_requested", "use_cuda_graphs"]

#: environment variable that overrides the default choice of the OpenMM force (when its ``cuda_graphs``
#: argument is None): 1 / true / yes / on forces the path on CUDA at any size, 0 / false / no / off turns it off
ENV_VAR = "E2FORMER_CUDA_GRAPHS"

#: on CUDA the path is on by default for float32 models up to this many ML atoms.  Measured on an H200
#: (benchmarks/results/graphed_check_h200.md), float32 force call 39.9 -> 23.3 ms at 1,800 atoms (600 waters),
#: 32.5 -> 13.2 ms at 718 atoms: small systems are bound by kernel launches, which the graph replays at once.  The
#: padded layout does about twice the GPU work of the eager one, so above a few thousand atoms, where the GPU
#: work dominates, the eager path should be the faster one (a modelled crossover near 8,000 atoms, not
#: measured).  float64 (the PyTorch route, no fused kernels) is 3-4x slower padded: never on by default.
AUTO_MAX_ATOMS = 5000


def cuda_graphs_requested(flag: Optional[bool] = None) -> Optional[bool]:
    """``flag`` if given, else ``E2FORMER_CUDA_GRAPHS`` read as True (1 / true / yes / on), False (0 / false /
    no / off, or any other set value) or None (unset or empty: the caller's default applies)."""
    if flag is not None:
        return bool(flag)
    val = os.environ.get(ENV_VAR, "").strip().lower()
    if not val:
        return None
    return val in ("1", "true", "yes", "on")


def use_cuda_graphs(flag: Optional[bool], on_cuda: bool, n_atoms: int, float32: bool = True) -> bool:
    """Whether the OpenMM force takes the padded / CUDA-graph path.

    An explicit ``flag`` wins on any device (``True`` on the CPU runs the padded path eagerly, for tests).
    Otherwise the environment variable decides on CUDA, and without it the path is on for float32 CUDA systems
    of at most :data:`AUTO_MAX_ATOMS` atoms.  Never on the CPU by default (no graphs there; the padded path is
    slower than the eager one), nor for float64 models by default (slower padded, see above)."""
    if flag is not None:
        return bool(flag)
    if not on_cuda:
        return False
    env = cuda_graphs_requested()
    return env if env is not None else (float32 and n_atoms <= AUTO_MAX_ATOMS)


class GraphedEnergyForces:
    """``(positions [N, 3] Å, cell [3, 3] Å or None) -> (energy eV float64 incl. reference energies, forces
    [N, 3] eV/Å)`` of one fixed system (atomic numbers, charge, multiplicity, head, periodicity), through the
    padded static-shape path; captured in a CUDA graph on CUDA unless ``capture=False``.

    ``captures`` counts the graph captures (1 + the capacity increases); ``capture_error`` holds the exception
    if a capture failed (the padded path then runs eagerly, with a warning)."""

    def __init__(self, model, atomic_numbers: Sequence[int], periodic: bool = False, charge: int = 0,
                 multiplicity: int = 1, head: Optional[str] = None, capture: Optional[bool] = None,
                 headroom: float = 1.2, warmup: int = 3):
        dev = model.device
        self.model = model
        z = torch.as_tensor(atomic_numbers).to(dev, torch.long)
        self.n = z.numel()
        self.z = torch.cat([z, z.new_zeros(1)])          # ghost node N: any valid element index
        self.pbc = torch.tensor([True, True, True], device=dev) if periodic else None
        self.head = model.head_index(head)
        self.reference = model.reference(z, self.head)   # float64, constant
        with torch.no_grad():
            self.system = model.system_embedding(torch.tensor([int(charge)], device=dev),
                                                 torch.tensor([int(multiplicity)], device=dev))
        self.capture = dev.type == "cuda" if capture is None else bool(capture)
        self.headroom = float(headroom)
        self.warmup = int(warmup)
        self.edge_capacity = 0
        self.degree_bound = 0
        self.captures = 0
        self.capture_error: Optional[BaseException] = None
        self._graph = None
        self._pos = torch.zeros(self.n, 3, dtype=model.dtype, device=dev)
        self._edges = None
        self._energy = self._forces = None

    def __call__(self, positions: torch.Tensor, cell: Optional[torch.Tensor] = None):
        m = self.model
        pos = positions.to(m.device, m.dtype)
        if cell is not None:
            cell = cell.to(m.device, m.dtype)
        center, neighbor, shift = m.neighbor_edges(pos, cell, self.pbc, check_overlap=False)
        E = center.numel()
        # largest in-degree (edges are sorted by centre; the one device -> host sync added to the neighbour list's)
        degree = int((torch.arange(E, device=center.device) - torch.searchsorted(center, center)).max()) + 1 \
            if E > 0 else 1
        grown = E > self.edge_capacity or degree > self.degree_bound
        if grown:
            self._grow(E, degree)
        pad_edges(center, neighbor, shift, self.n, self.edge_capacity, m.cutoff, out=self._edges)
        self._pos.copy_(pos)
        if self.capture and (grown or self._graph is None):
            self._capture()
        if self._graph is not None:
            self._graph.replay()
        else:
            self._run()
        return self._energy.clone(), self._forces.clone()

    # ------------------------------------------------------------------------------------------------
    def _grow(self, edges: int, degree: int) -> None:
        m = self.model
        self._graph = None                                 # frees the old graph's memory pool
        self.edge_capacity = max(self.edge_capacity, 256 * math.ceil(max(1.0, edges * self.headroom) / 256))
        self.degree_bound = max(self.degree_bound, min(m.max_neighbors, 1 << max(0, degree - 1).bit_length()))
        cap, dev = self.edge_capacity, m.device
        self._edges = (torch.empty(cap, dtype=torch.long, device=dev), torch.empty(cap, dtype=torch.long, device=dev),
                       torch.empty(cap, 3, dtype=m.dtype, device=dev))

    def _run(self) -> None:
        """The padded energy and forces from the static buffers into ``_energy`` / ``_forces`` (what the graph
        captures)."""
        m = self.model
        autograd = not m.direct_forces
        pos = self._pos.detach().requires_grad_(autograd)
        with torch.enable_grad() if autograd else torch.no_grad():
            e, direct = m.padded_energy_terms(self.z, pos, *self._edges, self.system, self.head, self.degree_bound)
            f = -torch.autograd.grad(e, pos)[0] if autograd else direct
        self._energy = e.detach().to(torch.float64) + self.reference
        self._forces = f.detach()

    def _capture(self) -> None:
        """Warm up on a side stream (lazy initialisation, Triton compilation), then capture ``_run``."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._run()
        except Exception as exc:  # a capture failure must not end the simulation: run eagerly instead
            self.capture, self.capture_error, self._graph = False, exc, None
            warnings.warn(f"CUDA-graph capture of the E2Former-V2 force failed ({exc!r}); running the padded "
                          "path without a graph", RuntimeWarning, stacklevel=3)
            return
        self._graph = graph
        self.captures += 1
