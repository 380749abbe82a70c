"""Tabulated radial functions of the edge MLPs (inference only; experimental, opt-in, session 11).

Every edge MLP of the model sees an edge only through its length d and the elements of its two atoms: its input
is [rbf(d); t(Z_i); s(Z_j)], with per-element embeddings.  So for one pair of elements the MLP is a smooth
function of one variable, f_{Z_i Z_j}(d) -> R^F, and for frozen weights it can be tabulated once on a grid over
[0, cutoff] and read back by cubic Hermite interpolation from the values and d-derivatives at the grid points
(both exact: the derivative by forward-mode AD, in float64).  The interpolation error falls as h^4: with 2048
intervals it was 1.5e-9 of max |f| for the bundled model and 1.8e-8 for a V1.5-size model with perturbed random
weights (float64, session 11), below float32 rounding (6e-8); forces (the interpolant's slope) converge as h^3.

What a table replaces, per edge: the first layer (nb x HID, the RBF included), two LayerNorms and SiLUs and two
more layers (HID x HID, HID x F); what it costs instead: 4 F loads and ~8 F multiply-adds.  Forces stay exact
derivatives of the interpolant (C1 across grid points).

Limits: the weights must not change after a table is built (no gradients reach the MLP weights through it, so
building one refuses parameters that require grad), and a table only knows the elements it was built for (it
grows, rebuilding itself, when new ones appear)."""
from __future__ import annotations

import math
import threading
import weakref
from typing import Callable, List, Optional

import torch

#: held while a table is built: the build's derivatives come from forward-mode AD (``torch.func.jvp``), whose dual
#: levels are global to the process, not per thread, so two builds at once (two models, one per GPU, run from two
#: threads) failed with "Trying to create a dual Tensor for forward AD but no level exists" (H200 x2, session 16)
_BUILD_LOCK = threading.Lock()


class RadialTable:
    """Cubic Hermite table of ``fn(module, d [n], Z_i [n], Z_j [n]) -> [n, F]`` on equal steps of [0, M h] (h the
    largest power of two <= cutoff / ``intervals``, M h >= cutoff), for every ordered pair of the elements it has
    been asked about (``ensure``).

    Built in float64 from a float64 copy of ``module`` (the float32 weights are exact in float64), and stored per
    interval as the four coefficients of its cubic in the local coordinate t in [0, 1):
    p(t) = c0 + t (c1 + t (c2 + t c3)), with c0 = f_k, c1 = h f'_k, c2 = 3 (f_k+1 - f_k) - h (2 f'_k + f'_k+1),
    c3 = 2 (f_k - f_k+1) + h (f'_k + f'_k+1).  Storing coefficients rather than node values matters in float32:
    the slope of an interpolant read from stored values comes from differences of nearby values, (f_k+1 - f_k) / h,
    and float32 rounding of f (6e-8 of |f|) over a step h where f changes by ~1e-3 of |f| would cost ~1e-4 in the
    forces; the differences are formed in float64 here instead."""

    def __init__(self, module: torch.nn.Module,
                 fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 cutoff: float, intervals: int = 2048, dtype: torch.dtype = torch.float32,
                 frozen: Optional[torch.Tensor] = None):
        if intervals < 2:
            raise ValueError(f"a radial table needs at least 2 intervals, got {intervals}")
        self.module = module
        self.fn = fn
        #: a weight of the tabulated MLP: while it requires grad (with grad enabled) the table refuses to be read,
        #: since it would give the weights no gradient (training)
        self.frozen = frozen
        self.cutoff = float(cutoff)
        # the step is a power of two (at most cutoff / intervals), so that k h and d - k h are exact in float32 and
        # t = (d - k h) / h carries only d's own rounding (with a step like 4.5 / 2048, k h is rounded, ~5e-7 Å);
        # the grid then covers [0, M h], M h >= cutoff
        self.h = 2.0 ** math.floor(math.log2(self.cutoff / int(intervals)))
        self.intervals = int(math.ceil(self.cutoff / self.h - 1e-9))
        self.dtype = dtype
        self.elements: List[int] = []
        self.slot = torch.zeros(0, dtype=torch.long)      # element -> index among self.elements (-1: absent)
        self.coef = torch.zeros(0)                        # [P * P * M, 4, F]
        self.builds = 0
        self._last_z = None

    def ready(self, z: torch.Tensor) -> None:
        """Refuse training (see ``frozen``), then ``ensure(z)``: what every reader calls first."""
        if self.frozen is not None and self.frozen.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("radial tables are for inference with frozen weights, but the tabulated MLP's "
                               "weights require grad: call set_radial_tables(False) before training (or "
                               "model.requires_grad_(False))")
        self.ensure(z)

    def kernel_args(self, z_t: torch.Tensor, z_s: torch.Tensor):
        """The table as the fused kernels take it (``kernels.attention_reference.table_lookup``), for target
        atoms ``z_t`` and source atoms ``z_s`` (``ready`` first)."""
        self.ready(z_s)
        return (self.coef, self.slot.index_select(0, z_t), self.slot.index_select(0, z_s), len(self.elements),
                self.intervals, self.h)

    def ensure(self, z: torch.Tensor) -> None:
        """Make sure every element of ``z`` is in the table (one host sync for the unique elements; a rebuild
        over the union when some are new).  While a CUDA graph is being captured no sync is allowed: the table
        must then already hold the elements (the graphed path's warm-up call builds it), and is used as it is."""
        if z.is_cuda and torch.cuda.is_current_stream_capturing():
            if not self.elements:
                raise RuntimeError("a radial table is first used inside a CUDA-graph capture: evaluate the model "
                                   "once outside the capture (the warm-up call) so that the table is built")
            return
        try:        # the same tensor object, unmodified, as last time (an MD run's fixed atoms): no sync
            version = z._version
        except RuntimeError:    # an inference tensor has no version counter
            version = None
        last = self._last_z
        if version is not None and last is not None and last[0]() is z and last[1] == version:
            return
        new = sorted(set(int(e) for e in torch.unique(z).tolist()) - set(self.elements))
        if new:
            self._build(new, z.device)
        self._last_z = None if version is None else (weakref.ref(z), version)

    def _build(self, new: List[int], device: torch.device) -> None:
        """Rebuild over the union of the table's elements and ``new``, decided under the lock: two threads sharing
        one model (one table) each keep the other's elements."""
        with _BUILD_LOCK:
            union = sorted(set(self.elements) | set(int(e) for e in new))
            if union != self.elements:
                self._build_locked(union, device)

    @torch.no_grad()
    def _build_locked(self, elements: List[int], device: torch.device) -> None:
        import copy

        from torch.func import jvp

        saved = self.module.__dict__.pop("_radial_table", None)     # (not copied along with the module)
        try:
            mod64 = copy.deepcopy(self.module).to(device=device, dtype=torch.float64)
        finally:
            if saved is not None:
                self.module.__dict__["_radial_table"] = saved
        P, M, h = len(elements), self.intervals, self.h
        grid = torch.arange(M + 1, device=device, dtype=torch.float64) * h
        rows = []
        for zi in elements:
            for zj in elements:
                a = torch.full((M + 1,), zi, dtype=torch.long, device=device)
                b = torch.full((M + 1,), zj, dtype=torch.long, device=device)
                f, df = jvp(lambda d: self.fn(mod64, d, a, b), (grid,), (torch.ones_like(grid),))
                f0, f1, s0, s1 = f[:-1], f[1:], h * df[:-1], h * df[1:]
                rows.append(torch.stack([f0, s0, 3 * (f1 - f0) - 2 * s0 - s1, 2 * (f0 - f1) + s0 + s1], dim=1))
        self.coef = torch.cat(rows, dim=0).to(self.dtype).contiguous()
        slot = torch.full((max(elements) + 1,), -1, dtype=torch.long, device=device)
        slot[torch.tensor(elements, device=device)] = torch.arange(P, device=device)
        self.slot = slot
        self.elements = list(elements)
        self.builds += 1

    def __call__(self, d: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        """f(d) for each edge [E, F], differentiable in ``d`` (not in the MLP weights)."""
        P, M, h = len(self.elements), self.intervals, self.h
        # d beyond the grid (padding edges, edges past the cutoff: the envelope zeroes them) reads its end
        d = torch.clamp(d, 0.0, M * h)
        k = torch.clamp(torch.floor(d.detach() / h), 0, M - 1)
        t = ((d - k * h) / h)[:, None]       # d - k h first: t keeps its relative precision in float32
        row = (self.slot.index_select(0, zi) * P + self.slot.index_select(0, zj)) * M + k.long()
        c = self.coef.index_select(0, row)   # [E, 4, F]
        return c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
