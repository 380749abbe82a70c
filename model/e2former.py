"""E2Former-V2 (UBio-MolFM V1.5 architecture) in pure PyTorch.

The network, block by block (shared/docs/e2former_v2_spec.md §2):

1. neighbour graph: for every atom the ``max_neighbors`` nearest atoms / periodic images
   within the cutoff (official semantics, :mod:`.neighbors`);
2. edge-degree embedding: initial features [N, 9, C] built from edges only;
3. ``num_layers`` pre-norm transformer blocks: equivariant RMS norm, system (charge /
   multiplicity) embedding added to the l=0 row, attention with the first-order EAAS tensor
   product, gated FFN;
4. final norm, one energy MLP per head on the l=0 row, sum over atoms; forces by autograd or
   by the direct force head.

EAAS, two exactly equivalent evaluations (``eaas=``):

* ``"relative"`` (default): ``T_i = sum_e alpha_e (x)_h TP(v_j, r_hat_e)`` with the product
  written as ``sum_k r_hat[k] CG[k] v_j`` (CG derived from the SO(2) form, see :mod:`.so3`).
  Uses only relative vectors, so it does not lose float32 digits far from the origin.
* ``"so2"``: the official node-centric route: ``TP(v_j, p_j)`` evaluated per atom / image via
  Wigner rotations of *absolute* positions, aggregated with ``alpha/d``, and
  ``T_i = TP(sum v, p_i) - sum TP(v_j, p_j)`` (spec §2.5 step 6).
"""

import functools
import math
from typing import Dict, Final, List, Optional, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .config import E2FormerConfig
from .layers import (EquivariantRMSNorm, GatedFFN, RadialMLP, SO3Linear, SO3ToScalar, autocast_dtype,
                     _autocast_lower, degree_linear, envelope, gaussian_rbf, gemm_input_parts, qkv_project)
from .neighbors import neighbor_list
from .validation import OVERLAP_DISTANCE
from .so3 import PATH_NORM, first_order_cg, spherical_harmonics, tp_first_order_so2

EAAS_MODES = ("relative", "so2")

#: ``E2FormerV2.checkpoint_none_bytes_per_element``'s default (see there)
CHECKPOINT_NONE_BYTES_PER_ELEMENT = 320.0


def _fused_kernels_usable(x: torch.Tensor, backend: str) -> bool:
    """Whether a fused Triton kernel may run on ``x`` ('auto': float32 CUDA tensors and triton importable;
    'reference': never; 'triton': required, error if impossible)."""
    if backend == "reference":
        return False
    from ..kernels import HAS_TRITON

    ok = HAS_TRITON and x.is_cuda and x.dtype == torch.float32
    if backend == "triton" and not ok:
        raise RuntimeError("backend 'triton' requested but triton is unavailable or the tensors are not "
                           "float32 on CUDA")
    return ok


def _fc_params(mlp: RadialMLP):
    """A RadialMLP's tensors in the kernels' FCParams order."""
    from ..kernels import FCParams

    return FCParams(mlp.lin0.weight, mlp.lin0.bias, mlp.norm0.weight, mlp.norm0.bias, mlp.lin1.weight,
                    mlp.lin1.bias, mlp.norm1.weight, mlp.norm1.bias, mlp.lin2.weight, mlp.lin2.bias)


def pad_edges(center: torch.Tensor, neighbor: torch.Tensor, shift: torch.Tensor, num_atoms: int, capacity: int,
              cutoff: float, out: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The E edges of ``E2FormerV2.neighbor_edges`` followed by ``capacity - E`` padding edges from the ghost
    node (index ``num_atoms``) to itself with shift (2 cutoff, 0, 0), for ``E2FormerV2.padded_energy_terms``.
    ``out``: three buffers ([capacity], [capacity], [capacity, 3]) to fill in place (static CUDA-graph inputs);
    new tensors otherwise."""
    E = center.numel()
    if E > capacity:
        raise ValueError(f"{E} edges do not fit an edge capacity of {capacity}")
    if out is None:
        out = (center.new_empty(capacity), neighbor.new_empty(capacity), shift.new_empty(capacity, 3))
    c, nb, sh = out
    c[:E].copy_(center)
    c[E:].fill_(num_atoms)
    nb[:E].copy_(neighbor)
    nb[E:].fill_(num_atoms)
    sh[:E].copy_(shift)
    sh[E:].zero_()
    sh[E:, 0].fill_(2.0 * cutoff)
    return out


def _v2_qk_layout() -> bool:
    """Whether the v2 attention kernels read queries and keys as [N, D, H] (``attention_triton_v2.qk_layout``;
    False where they did not import: the fused route then runs v1 or the reference)."""
    from .. import kernels as _K

    v2 = getattr(_K, "_attention_triton_v2", None)
    return v2 is not None and v2.qk_layout()


class Graph:
    """Edges of one structure (target ``center`` <- source ``neighbor``), with geometry."""

    def __init__(self, center: torch.Tensor, neighbor: torch.Tensor, shift: torch.Tensor, positions: torch.Tensor,
                 cutoff: float, num_basis_offsets: torch.Tensor, rbf_coeff: float, env_kind: str):
        self.center = center
        self.neighbor = neighbor
        self.shift = shift
        # index_select, not positions[idx]: the backward of advanced indexing on CUDA is a sort-based
        # index_put that walks each run of repeated indices serially, and the padded (CUDA-graph) layout sends
        # every padding edge to the one ghost node -- ~10^4 repeats, 3.3 ms per gather at 1,800 atoms on an
        # H200 (benchmarks/results/md_step_profile_padded_*).  index_select's backward is index_add.
        vec = positions.index_select(0, center) - positions.index_select(0, neighbor) - shift
        self.vec = vec
        self.dist = torch.linalg.vector_norm(vec, dim=1)
        self.unit = vec / self.dist.clamp_min(1e-6)[:, None]
        self.rbf_offsets = num_basis_offsets
        self.rbf_coeff = rbf_coeff
        self.cutoff = cutoff
        self._rbf = torch.jit.annotate(Optional[torch.Tensor], None)
        self.env = envelope(self.dist / cutoff, env_kind)
        self.num_nodes = positions.shape[0]
        self.positions = positions
        self._padded = torch.jit.annotate(Optional[Tuple[torch.Tensor, int]], None)
        self._row_ptr = torch.jit.annotate(Optional[torch.Tensor], None)

    def set_layout(self, row_ptr: torch.Tensor, slot: torch.Tensor, max_degree: int):
        """Give the CSR pointer and the [N, K] slot layout (K = ``max_degree``, a static bound) instead of
        deriving them from the edges: the padded path's graphs (``E2FormerV2.padded_energy_terms``), whose
        layout must not cost a device -> host sync."""
        self._row_ptr = row_ptr
        self._padded = (slot, max_degree)

    def rbf(self) -> torch.Tensor:
        """[E, num_basis] Gaussian basis (built on first use: the fused GPU path never needs it)."""
        cached = self._rbf
        if cached is None:
            cached = gaussian_rbf(self.dist, self.rbf_offsets, self.rbf_coeff)
            self._rbf = cached
        return cached

    def row_ptr(self) -> torch.Tensor:
        """CSR pointer of the (centre-sorted) edges, [N+1]."""
        cached = self._row_ptr
        if cached is not None:
            return cached
        counts = torch.bincount(self.center, minlength=self.num_nodes)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    def padded(self) -> Tuple[torch.Tensor, int]:
        """Edges laid out as [N, K] slots (K = largest in-degree): (slot of each edge, K)."""
        cached = self._padded
        if cached is None:
            n = self.center.numel()
            first = torch.searchsorted(self.center, self.center)
            slot = torch.arange(n, device=self.center.device) - first
            K = int(slot.max()) + 1 if n > 0 else 1
            cached = (slot, K)
            self._padded = cached
        return cached


def _state_without(module: nn.Module, key: str) -> dict:
    """``module``'s pickling state (``nn.Module.__getstate__``) less ``key``: an inference-time attachment that
    cannot be pickled (a radial table holds closures and a weakref, compiled functions hold code objects); the
    model's ``__setstate__`` attaches it again."""
    state = nn.Module.__getstate__(module)
    state.pop(key, None)
    return state


class EdgeDegreeEmbedding(nn.Module):
    """Initial node features: h_i[l,m,c] = 1/avg_deg * sum_e Y_l(r_hat_e)[m] * u(d_e) * MLP_l(z_e)[c]."""

    def __getstate__(self):
        return _state_without(self, "_radial_table")

    def __init__(self, cfg: E2FormerConfig):
        super().__init__()
        nb, C = cfg.num_basis, cfg.channels
        self.num_basis = nb
        self.inv_avg_degree = 1.0 / cfg.avg_degree
        self.rbf_coeff = -0.5 / (2.0 * cfg.cutoff / (nb - 1)) ** 2
        self.source_embedding = nn.Embedding(cfg.degree_num_elements, nb)
        self.target_embedding = nn.Embedding(cfg.degree_num_elements, nb)
        self.radial = nn.ModuleList([RadialMLP(3 * nb, cfg.hidden, C) for _ in range(3)])
        self.channels = C
        #: edges per chunk: above this the per-edge work runs in chunks under activation checkpointing,
        #: so memory stays ~ chunk x 9 x C floats (64M) instead of edges x 9 x C (100k atoms, 32 edges: 30 GB)
        self.chunk_edges = max(4096, (1 << 26) // (9 * C))
        self.backend = "auto"      # "auto": fused Triton kernel on CUDA (float32), "reference": PyTorch

    def _messages(self, node_t: List[torch.Tensor], node_s: List[torch.Tensor], center: torch.Tensor,
                  neighbor: torch.Tensor, dist: torch.Tensor, unit: torch.Tensor, env: torch.Tensor,
                  offsets: torch.Tensor) -> torch.Tensor:
        nb = self.num_basis
        rbf = gaussian_rbf(dist, offsets, self.rbf_coeff)
        sh = spherical_harmonics(unit)  # [E, 9]
        out = []
        for l, mlp in enumerate(self.radial):
            h0 = (rbf @ mlp.lin0.weight[:, :nb].t() + mlp.lin0.bias + node_t[l].index_select(0, center)
                  + node_s[l].index_select(0, neighbor))
            a = mlp.tail(h0) * env[:, None]  # [E, C]
            lo = 0 if l == 0 else (1 if l == 1 else 4)
            hi = 1 if l == 0 else (4 if l == 1 else 9)
            out.append(sh[:, lo:hi, None] * a[:, None, :])
        return torch.cat(out, dim=1)  # [E, 9, C]

    @torch.jit.unused
    def _messages_checkpointed(self, node_t: List[torch.Tensor], node_s: List[torch.Tensor], center: torch.Tensor,
                               neighbor: torch.Tensor, dist: torch.Tensor, unit: torch.Tensor, env: torch.Tensor,
                               offsets: torch.Tensor) -> torch.Tensor:
        # (no random operations: preserve_rng_state=False also keeps the CUDA RNG out of a CUDA-graph capture)
        return torch.utils.checkpoint.checkpoint(self._messages, node_t, node_s, center, neighbor, dist, unit, env,
                                                 offsets, use_reentrant=False, preserve_rng_state=False)

    @torch.jit.unused
    def use_fused(self, x: torch.Tensor) -> bool:
        return _fused_kernels_usable(x, self.backend)

    @torch.jit.unused
    def _fused(self, z: torch.Tensor, g: Graph) -> torch.Tensor:
        from ..kernels import fused_edge_degree

        params = [_fc_params(m) for m in self.radial]
        tab = self.__dict__.get("_radial_table")
        table = None if tab is None else tab.kernel_args(z, z)
        return fused_edge_degree(g.row_ptr(), g.neighbor, g.vec, self.target_embedding(z), self.source_embedding(z),
                                 params, g.rbf_offsets, g.rbf_coeff, g.cutoff, self.inv_avg_degree,
                                 max_degree=g.padded()[1], table=table)

    def forward(self, z: torch.Tensor, g: Graph) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.use_fused(g.dist):
                return self._fused(z, g)
        if not torch.jit.is_scripting():
            if "_radial_table" in self.__dict__:
                return self._forward_table(z, g)
        nb = self.num_basis
        t = self.target_embedding(z)
        s = self.source_embedding(z)
        node_t = [t @ mlp.lin0.weight[:, nb:2 * nb].t() for mlp in self.radial]
        node_s = [s @ mlp.lin0.weight[:, 2 * nb:].t() for mlp in self.radial]
        E, N = g.center.numel(), g.num_nodes
        h = g.dist.new_zeros(N, 9, self.channels)
        step = self.chunk_edges
        for e0 in range(0, max(E, 1), step):
            e1 = min(E, e0 + step)
            center = g.center[e0:e1]
            chunked = E > step and torch.is_grad_enabled()
            if chunked and not torch.jit.is_scripting():
                msg = self._messages_checkpointed(node_t, node_s, center, g.neighbor[e0:e1], g.dist[e0:e1],
                                                  g.unit[e0:e1], g.env[e0:e1], g.rbf_offsets)
            else:
                msg = self._messages(node_t, node_s, center, g.neighbor[e0:e1], g.dist[e0:e1], g.unit[e0:e1],
                                     g.env[e0:e1], g.rbf_offsets)
            h = h.index_add(0, center, msg)
        return h * self.inv_avg_degree


    @torch.jit.unused
    def radial_fn(self, offsets: torch.Tensor, d: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
        """The three radial MLPs up to their last hidden layer, as one function of (d, Z_i, Z_j) -> [n, 3 hid]
        (l = 0 | 1 | 2): what the radial table holds (the last linear, a per-edge GEMM the fused kernels move
        to the node level, is applied after the table)."""
        nb = self.num_basis
        rbf = gaussian_rbf(d, offsets, self.rbf_coeff)
        t, s = self.target_embedding(zi), self.source_embedding(zj)
        return torch.cat([mlp.hidden(rbf @ mlp.lin0.weight[:, :nb].t() + mlp.lin0.bias
                                     + t @ mlp.lin0.weight[:, nb:2 * nb].t() + s @ mlp.lin0.weight[:, 2 * nb:].t())
                          for mlp in self.radial], dim=1)

    @torch.jit.unused
    def _forward_table(self, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """``forward`` with the radial MLPs read from their table (``E2FormerV2.set_radial_tables``)."""
        C, E, N = self.channels, g.center.numel(), g.num_nodes
        h = g.dist.new_zeros(N, 9, C)
        step = self.chunk_edges
        for e0 in range(0, max(E, 1), step):
            e1 = min(E, e0 + step)
            center = g.center[e0:e1]
            x2 = _table_lookup(self.__dict__["_radial_table"], z, g, e0, e1)
            hid = x2.shape[1] // 3
            env = g.env[e0:e1, None]
            a = [mlp.lin2(x2[:, l * hid:(l + 1) * hid]) * env for l, mlp in enumerate(self.radial)]
            sh = spherical_harmonics(g.unit[e0:e1])
            msg = torch.cat([sh[:, 0:1, None] * a[0][:, None, :], sh[:, 1:4, None] * a[1][:, None, :],
                             sh[:, 4:9, None] * a[2][:, None, :]], dim=1)
            h = h.index_add(0, center, msg)
        return h * self.inv_avg_degree


@torch.jit.unused
def _table_lookup(table, z: torch.Tensor, g: Graph, e0: int = 0, e1: Optional[int] = None) -> torch.Tensor:
    """A radial table (``model/radial_table.py``) read for the edges [e0, e1) of ``g`` (refused while training:
    ``RadialTable.ready``)."""
    table.ready(z)
    e1 = g.center.numel() if e1 is None else e1
    return table(g.dist[e0:e1], z.index_select(0, g.center[e0:e1]), z.index_select(0, g.neighbor[e0:e1]))


class Attention(nn.Module):
    """``E2AttentionArbOrder_sparse`` with ``so2-first-order`` EAAS (spec §2.5)."""

    def __getstate__(self):
        return _state_without(self, "_radial_table")

    qkdot: Final[bool]
    use_so2: Final[bool]
    smooth_softmax: Final[bool]

    def __init__(self, cfg: E2FormerConfig):
        super().__init__()
        C, H, nb, T = cfg.channels, cfg.num_heads, cfg.num_basis, cfg.atom_embed_size
        self.C, self.H, self.D, self.nb = C, H, cfg.head_dim, nb
        self.qkdot = cfg.logit_form == "QKdot_alpha"
        self.smooth_softmax = cfg.attention_softmax == "smooth"
        self.source_embedding = nn.Embedding(cfg.num_elements, T)
        self.target_embedding = nn.Embedding(cfg.num_elements, T)
        self.edge_mlp = RadialMLP(nb + 2 * T, cfg.hidden, H if self.qkdot else 2 * H)
        self.query = SO3ToScalar(C, cfg.qk_width)
        self.key = SO3ToScalar(C, cfg.qk_width)
        self.value = SO3Linear(C, C)
        if self.qkdot:
            self.dot_linear = SO3Linear(C, nb)
            self.dot_radial = RadialMLP(nb + 2 * T, cfg.hidden, 3 * nb)
            self.dot_out = nn.Linear(3 * nb, H)
        self.tp_mix = nn.ModuleList([nn.Linear(C, C, bias=False), nn.Linear(3 * C, C, bias=False),
                                     nn.Linear(2 * C, C, bias=False)])
        self.out = SO3Linear(C, C)
        # built in float64: ``to(dtype)`` rounds them to the model's precision (built in float32, a float64
        # model kept 1/sqrt(2), 1/sqrt(3) and the CG values to float32, a 3e-8 relative error)
        self.register_buffer("cg", first_order_cg(torch.float64), persistent=False)
        self.register_buffer("path_norm", torch.tensor(PATH_NORM, dtype=torch.float64), persistent=False)
        self.use_so2 = False       # EAAS route: False = relative vectors, True = official SO(2) route
        self.backend = "auto"      # "auto" (Triton on CUDA), "reference" or "triton"
        self.allow_tf32 = False    # TF32 tensor cores inside the fused edge MLP

    def _edge_first_layer(self, W: torch.Tensor, b: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """First linear of an edge MLP on [rbf(d); t(Z_i); s(Z_j)], the element parts per atom."""
        nb = self.nb
        T = self.target_embedding.weight.shape[1]
        node_t = self.target_embedding(z) @ W[:, nb:nb + T].t()
        node_s = self.source_embedding(z) @ W[:, nb + T:].t()
        return g.rbf() @ W[:, :nb].t() + b + node_t.index_select(0, g.center) + node_s.index_select(0, g.neighbor)

    def _edge_mlp_out(self, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """The edge MLP on every edge [E, F] (F = 2H: gate | w; H with QKdot), or its radial table
        (``E2FormerV2.set_radial_tables``)."""
        if not torch.jit.is_scripting():
            if "_radial_table" in self.__dict__:
                return _table_lookup(self.__dict__["_radial_table"], z, g)
        return self.edge_mlp.tail(self._edge_first_layer(self.edge_mlp.lin0.weight, self.edge_mlp.lin0.bias, z, g))

    @torch.jit.unused
    def radial_fn(self, offsets: torch.Tensor, coeff: float, d: torch.Tensor, zi: torch.Tensor,
                  zj: torch.Tensor) -> torch.Tensor:
        """The edge MLP as a function of (d, Z_i, Z_j) alone (what ``_edge_mlp_out`` computes per edge)."""
        W, nb = self.edge_mlp.lin0.weight, self.nb
        T = self.target_embedding.weight.shape[1]
        h0 = (gaussian_rbf(d, offsets, coeff) @ W[:, :nb].t() + self.edge_mlp.lin0.bias
              + self.target_embedding(zi) @ W[:, nb:nb + T].t() + self.source_embedding(zj) @ W[:, nb + T:].t())
        return self.edge_mlp.tail(h0)

    def attention_logits(self, x: torch.Tensor, z: torch.Tensor, g: Graph) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits a [E, H], post-softmax edge weights w [E, H]) of both logit forms."""
        H, N = self.H, x.shape[0]
        out = self._edge_mlp_out(z, g)
        q = self.query(x).view(N, H, self.D)
        k = self.key(x).view(N, H, self.D)
        qk = (q.index_select(0, g.center) * k.index_select(0, g.neighbor)).sum(dim=2) / math.sqrt(self.D)
        if self.qkdot:
            w = out
            d = self.dot_linear(x)  # [N, 9, nb]
            sh = spherical_harmonics(g.unit) / 3.5449077018110318  # sqrt(4 pi): e3nn "integral" norm
            di = d.index_select(0, g.center)
            proj = torch.cat([
                sh[:, 0:1] * di[:, 0],
                (sh[:, 1:4, None] * di[:, 1:4]).sum(dim=1),
                (sh[:, 4:9, None] * di[:, 4:9]).sum(dim=1),
            ], dim=1)
            radial = self.dot_radial.tail(self._edge_first_layer(self.dot_radial.lin0.weight,
                                                                 self.dot_radial.lin0.bias, z, g))
            gate = self.dot_out(proj * radial)
        else:
            gate, w = out[:, :H], out[:, H:]
        # (under bf16 autocast the projections arrive in bf16: the softmax runs in the feature dtype)
        return (gate * qk).to(x.dtype), w.to(x.dtype)

    def attention_weights(self, x: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """alpha [E, H]: envelope-weighted softmax with the +1e-3, times the edge weight w.

        official: alpha = w u exp(a - m) / (sum u exp(a - m) + 1e-3), m = max a over the centre's edges (the
        gradient flows through m); smooth (``attention_softmax="smooth"``): alpha = w u exp(a) /
        (sum u exp(a) + 1e-3), evaluated with a gradient-free shift (docs/model.md "Attention weights")."""
        H, N = self.H, x.shape[0]
        logits, w = self.attention_logits(x, z, g)
        index = g.center[:, None].expand(-1, H)
        amax = logits.new_zeros(N, H).scatter_reduce(0, index, logits, "amax", include_self=False)
        if self.smooth_softmax:
            # shift c = max(m, ln 1e-3) for range only (the value does not depend on c: no gradient through
            # it); exp(a - c) <= 1 and 1e-3 exp(-c) = exp(ln 1e-3 - c) <= 1 cannot overflow.  The denominator
            # is 0 only if every term underflowed (all u = 0): then eps = 0 and alpha = 0 (no 0/0).
            c = amax.detach().clamp_min(-6.907755278982137)  # ln(1e-3)
            eps = torch.exp(logits - c.index_select(0, g.center)) * g.env[:, None]
            denom = logits.new_zeros(N, H).index_add(0, g.center, eps) + torch.exp(-6.907755278982137 - c)
            denom = torch.where(denom > 0, denom, torch.ones_like(denom))
            return eps * w / denom.index_select(0, g.center)
        eps = torch.exp(logits - amax.index_select(0, g.center)) * g.env[:, None]
        denom = logits.new_zeros(N, H).index_add(0, g.center, eps) + 1e-3
        return eps * w / denom.index_select(0, g.center)

    def forward(self, x: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        return self.node_part(self.edge_part(x, z, g), x.dtype)

    def edge_part(self, x: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """The part that couples atoms: U [N, 3, 9, C] of the relative EAAS (``U_i[k, m, c] = sum_e alpha[e, h(c)]
        r_hat_e[k] v_j[m, c]``; fused kernel or PyTorch), or, on the ``so2`` route, T [N, 20, C] directly."""
        fused = False
        if not torch.jit.is_scripting():
            fused = self.use_fused(x)
        if fused:
            return self._fused_U_of(x, z, g)
        v = self.value(x)
        alpha = self.attention_weights(x, z, g)
        v = v.to(x.dtype)
        if self.use_so2:
            return self._eaas_so2(v, alpha.repeat(1, self.C // self.H), g)  # channel c uses head c mod H
        return self._relative_U(v, alpha, g)

    def node_part(self, U: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Everything after :meth:`edge_part`, atom by atom (no coupling between atoms): CG contraction
        T = sum_k CG_k U[k] (skipped on the ``so2`` route, whose edge part returns T), path mixing, path
        norm, output linear.  ``dtype``: the attention input's dtype (CG and path norm are cast to it)."""
        if not torch.jit.is_scripting():
            if self._cg_kernel_usable(U):
                return self._node_part_cg_kernel(U)
        T = U if self.use_so2 else torch.einsum("krm,nkmc->nrc", self.cg.to(dtype), U)
        N, C = T.shape[0], T.shape[2]
        Ts = torch.split(T, [1, 3, 3, 3, 5, 5], dim=1)   # split, not slices: one cat in the backward
        return self._out_linear(Ts[0].reshape(N, C), torch.cat([Ts[1], Ts[2], Ts[3]], dim=2),
                                torch.cat([Ts[4], Ts[5]], dim=2))

    def _out_linear(self, T0: torch.Tensor, T1: torch.Tensor, T2: torch.Tensor) -> torch.Tensor:
        """[N, 9, C] from the tensor-product rows per degree, the paths side by side on the channel axis (T0 [N, C],
        T1 [N, 3, 3C], T2 [N, 5, 2C]): mix the paths of each output degree (input channel index = path * C + c),
        scale by the path norm of the degree, then the output linear.  Per degree out_l(pn_l W_l T) =
        (pn_l out_l W_l) T: one GEMM with the product of the two weights ([C, P C], formed each call: C^2 P C
        multiply-adds, ~N / C times fewer than the products it saves) and no [N, 9, C] intermediate or scaling
        pass."""
        N, C = T0.shape[0], T0.shape[1]
        Wo, pn = self.out.weight, self.path_norm
        W0 = torch.mm(Wo[0], self.tp_mix[0].weight) * pn[0]
        W1 = torch.mm(Wo[1], self.tp_mix[1].weight) * pn[1]
        W2 = torch.mm(Wo[2], self.tp_mix[2].weight) * pn[4]
        if not torch.jit.is_scripting():
            y = degree_linear(T0, T1, T2, W0, W1, W2, self.out.bias)
            if y is not None:
                return y
        y0 = F.linear(T0, W0, self.out.bias)[:, None]
        y1 = F.linear(T1.reshape(N * 3, 3 * C), W1).view(N, 3, -1)
        y2 = F.linear(T2.reshape(N * 5, 2 * C), W2).view(N, 5, -1)
        return torch.cat([y0, y1, y2], dim=1)

    @torch.jit.unused
    def _cg_kernel_usable(self, U: torch.Tensor) -> bool:
        """node_part's CG contraction by ``kernels.cg_triton`` (on by default on CUDA; ``E2F_CG_KERNEL=0`` opts out):
        float32 U of the relative EAAS on CUDA (or under the Triton interpreter), not inside torch.compile
        (set_compile keeps the einsum, which it fuses itself)."""
        if self.use_so2 or U.dtype != torch.float32 or self.backend == "reference":
            return False
        from ..kernels._node_switch import node_kernel_usable

        return node_kernel_usable(U, "E2F_CG_KERNEL")

    @torch.jit.unused
    def _node_part_cg_kernel(self, U: torch.Tensor) -> torch.Tensor:
        """node_part with T0, T1, T2 written by the CG kernel: the same products, no einsum copies or cats."""
        from ..kernels.cg_triton import cg_contract

        # under bf16 autocast the kernel writes T in bf16 itself: the GEMMs would cast it to that anyway
        return self._out_linear(*cg_contract(U, self.cg, autocast_dtype(U)))

    @torch.jit.unused
    def use_fused(self, x: torch.Tensor) -> bool:
        """The fused Triton kernel covers the QK_alpha form with the relative-vector EAAS on CUDA."""
        if self.qkdot or self.use_so2:
            return False
        return _fused_kernels_usable(x, self.backend)

    @torch.jit.unused
    def qkv(self, x: Union[torch.Tensor, List[torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-atom inputs of the fused kernel: queries, keys [N, H, D] and values [N, 9, C], from the attention
        input ``x`` [N, 9, C] or its degree parts (``Block.attn_input_parts``).  The three projections share one
        contiguous form of each part (``gemm_input_parts``): under bf16 autocast one bf16 cast per part, else the
        parts themselves (or one copy of a view part), instead of each projection copying each part for its GEMM,
        and one gradient upcast and sum per part instead of three upcasts and two sums.  Queries and keys come
        stored as [N, D, H] where the v2 kernels read that layout (``SO3ToScalar.from_parts_dh``, ``qk_layout``)."""
        xs = list(torch.split(x, [1, 3, 5], dim=1)) if isinstance(x, torch.Tensor) else list(x)
        N, H = xs[0].shape[0], self.H
        if not torch.jit.is_scripting():
            if self._qkv_fused_usable(xs):
                return self._qkv_fused(xs)
        xq, xk, xv = gemm_input_parts(xs, 3)
        if _v2_qk_layout():
            return self.query.from_parts_dh(xq, H), self.key.from_parts_dh(xk, H), self.value.cat_parts(xv)
        return (self.query.from_parts(xq).view(N, H, self.D), self.key.from_parts(xk).view(N, H, self.D),
                self.value.cat_parts(xv))

    @torch.jit.unused
    def _qkv_fused_usable(self, xs: List[torch.Tensor]) -> bool:
        """Whether ``qkv`` runs as ``_qkv_fused`` (``E2F_QKV_FUSED``, on by default on CUDA since session 17; on the
        CPU only under the Triton interpreter with "1"): float32 parts outside autocast (bf16 keeps its shared casts,
        ``gemm_input_parts``), frozen projection weights, the pairdot kernel and ``degree_linear`` on, the v2
        kernels' [N, D, H] queries and keys, no recomputed query / key projections, not under torch.compile."""
        from ..kernels._node_switch import env_switch, node_kernel_usable

        x0 = xs[0]
        if x0.dtype != torch.float32 or _autocast_lower(x0) is not None or not _v2_qk_layout():
            return False
        q, k = self.query, self.key
        if q.recompute or q.auto_recompute or k.recompute or k.auto_recompute:
            return False
        if any(p.requires_grad for p in (*q.parameters(), *k.parameters(), *self.value.parameters())):
            return False
        return (node_kernel_usable(x0, "E2F_QKV_FUSED") and node_kernel_usable(x0, "E2F_PAIRDOT_KERNEL")
                and env_switch("E2F_DEGREE_LINEAR", default="1" if x0.is_cuda else "0"))

    @torch.jit.unused
    def _qkv_fused(self, xs: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``qkv`` with the query's and key's first projections as one GEMM per degree (their weights side by side)
        and the value's beside them in one autograd node (``layers.qkv_project``), the invariants of both by one
        ``pairdot_groups``: each degree part has one consumer, whose backward sums the three gradients inside its
        GEMMs instead of two extra passes over the part per block (~1.3 % of the V1.5 10k TF32 step on an H200)."""
        from ..kernels.pairdot_triton import pairdot_groups

        q, k = self.query, self.key
        wp = [torch.cat([q.weight[i], q.weight2[i], k.weight[i], k.weight2[i]], dim=0) for i in range(3)]
        p0, p1, p2, v = qkv_project(xs, wp, self.value.weight, self.value.bias)
        s_q, s_k = pairdot_groups(p0, p1, p2, (q.bias, k.bias))
        return q.head_dh(s_q, self.H), k.head_dh(s_k, self.H), v

    @torch.jit.unused
    def _kernel_table(self, z_t: torch.Tensor, z_s: torch.Tensor):
        """The radial table (``E2FormerV2.set_radial_tables``) as the fused kernels take it, for targets ``z_t``
        and sources ``z_s`` (see ``kernels.attention_reference.table_lookup``); None without one."""
        tab = self.__dict__.get("_radial_table")
        return None if tab is None else tab.kernel_args(z_t, z_s)

    @torch.jit.unused
    def fused_U_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                     row_ptr: torch.Tensor, src: torch.Tensor, vec: torch.Tensor, g: Graph,
                     table=None) -> torch.Tensor:
        """U of the target atoms of ``row_ptr`` (a CSR pointer into ``src`` / ``vec``) with the fused kernel:
        ``q``, ``t`` of those targets, ``k``, ``v``, ``s`` of all atoms.  With the whole graph this is the
        whole U; with a slice of targets (``row_ptr`` rebased to 0, their edges' ``src`` / ``vec``) it is
        those rows of U (the softmax runs over each target's own edges)."""
        from ..kernels import fused_attention

        return fused_attention(row_ptr, src, vec, q, k, v, t, s, _fc_params(self.edge_mlp), g.rbf_offsets,
                               g.rbf_coeff, g.cutoff, allow_tf32=self.allow_tf32, max_degree=g.padded()[1],
                               softmax="smooth" if self.smooth_softmax else "official", table=table)

    @torch.jit.unused
    def fused_U_graph(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                      g: Graph) -> torch.Tensor:
        """U of every atom of ``g`` by the fused kernel, from per-atom q, k, v (:meth:`fused_U_rows` over the
        whole graph)."""
        return self.fused_U_rows(q, k, v, self.target_embedding(z), self.source_embedding(z), g.row_ptr(),
                                 g.neighbor, g.vec, g, self._kernel_table(z, z))

    @torch.jit.unused
    def _fused_U_of(self, x: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """U of the attention input ``x`` by the fused kernel (q, k, v from :meth:`qkv`)."""
        return self.fused_U_graph(*self.qkv(x), z, g)

    @torch.jit.unused
    def _fused_U(self, x: torch.Tensor, v: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        N, H = x.shape[0], self.H
        return self.fused_U_graph(self.query(x).view(N, H, self.D), self.key(x).view(N, H, self.D), v, z, g)

    @torch.jit.unused
    def _eaas_fused(self, x: torch.Tensor, v: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """T [N, 20, C] by the fused kernel (tests compare it with :meth:`_eaas_reference`)."""
        return torch.einsum("krm,nkmc->nrc", self.cg.to(v.dtype), self._fused_U(x, v, z, g))

    def _eaas_reference(self, x: torch.Tensor, v: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        alpha = self.attention_weights(x, z, g)
        v = v.to(x.dtype)
        if self.use_so2:
            return self._eaas_so2(v, alpha.repeat(1, self.C // self.H), g)  # channel c uses head c mod H
        return self._eaas_relative(v, alpha, g)

    def _eaas_relative(self, v: torch.Tensor, alpha: torch.Tensor, g: Graph) -> torch.Tensor:
        """T_i = sum_k CG_k U_i[k] (U: :meth:`_relative_U`)."""
        return torch.einsum("krm,nkmc->nrc", self.cg.to(v.dtype), self._relative_U(v, alpha, g))

    def _relative_U(self, v: torch.Tensor, alpha: torch.Tensor, g: Graph) -> torch.Tensor:
        """U_i[k, m, c] = sum_e alpha[e, h(c)] r_hat_e[k] v_j[m, c]  ->  [N, 3, 9, C].

        U is computed head by head as small matrix products over each target's edge slots
        ([3, K] weights x [K, 9*C/H] neighbour features), so no edge x 20 x C tensor is built."""
        N, C, H = v.shape[0], v.shape[2], self.H
        G = C // H
        slot, K = g.padded()
        # weights [N, H, 3, K]
        w = (alpha[:, :, None] * g.unit[:, None, :])  # [E, H, 3]
        W = w.new_zeros(N, K, H, 3).index_put_([g.center, slot], w)
        W = W.permute(0, 2, 3, 1)
        # neighbour features per head: vh[n, h, g*9 + m] = v[n, m, g*H + h]
        vh = v.view(N, 9, G, H).permute(0, 3, 2, 1).reshape(N, H, G * 9)
        idx = torch.zeros(N, K, dtype=torch.long, device=v.device).index_put_([g.center, slot], g.neighbor)
        # gathered straight into the [N, H, K, G*9] layout of the product (rows n*H + h of vh), so the matmul
        # needs no transposed copy; index_select, whose backward is an index_add (not a sort-based index_put)
        hidx = (idx[:, None, :] * H + torch.arange(H, device=v.device)[None, :, None]).reshape(-1)
        Vg = vh.reshape(N * H, G * 9).index_select(0, hidx).view(N, H, K, G * 9)
        U = torch.matmul(W, Vg)  # [N, H, 3, G*9]
        return U.view(N, H, 3, G, 9).permute(0, 2, 4, 3, 1).reshape(N, 3, 9, C)

    def _eaas_so2(self, v: torch.Tensor, alpha_c: torch.Tensor, g: Graph) -> torch.Tensor:
        """Official route with absolute positions (spec §2.5.6)."""
        key = torch.cat([g.neighbor[:, None].to(g.shift.dtype), g.shift], dim=1)
        images, image_of_edge = torch.unique(key.detach(), dim=0, return_inverse=True)
        atom = images[:, 0].long()
        p_img = g.positions[atom] + images[:, 1:].to(g.positions.dtype)
        B = tp_first_order_so2(v[atom], p_img)  # [M, 20, C]
        wgt = alpha_c / g.dist.clamp_min(1e-6)[:, None]
        N = v.shape[0]
        sum_b = v.new_zeros(N, 20, v.shape[2]).index_add_(0, g.center, B[image_of_edge] * wgt[:, None, :])
        sum_v = v.new_zeros(N, 9, v.shape[2]).index_add_(0, g.center, v[atom][image_of_edge] * wgt[:, None, :])
        return tp_first_order_so2(sum_v, g.positions) - sum_b


class Block(nn.Module):
    def __init__(self, cfg: E2FormerConfig):
        super().__init__()
        self.norm_attn = EquivariantRMSNorm(cfg.channels)
        self.attn = Attention(cfg)
        self.norm_ffn = EquivariantRMSNorm(cfg.channels)
        self.ffn = GatedFFN(cfg.channels)

    def forward(self, x: torch.Tensor, system: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self._attn_passthrough(x, system):
                # the residual stream through the attention norm's passthrough (E2F_RMS_RESIDUAL, on by default): its
                # gradient is summed with the norm's in the norm's backward kernel instead of by autograd
                xs, parts = self._attn_ffn_norm(x, None, system, z, g)
            else:
                # (node_part(x, U) would keep U alive through the FFN: the caller's argument)
                xs, parts = self._ffn_norm(x, self.attn.node_part(self.edge_part(x, system, z, g), x.dtype))
            return xs + self.ffn.parts(parts)
        return self.node_part(x, self.edge_part(x, system, z, g))

    @torch.jit.unused
    def _attn_ffn_norm(self, x: torch.Tensor, pending: Optional[torch.Tensor], system: torch.Tensor,
                       z: torch.Tensor, g: Graph) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """On the fused route, everything before the FFN's matrix products: the attention norm (its passthrough
        output x, or x + pending summed by its kernel), the attention, its residual sum and the FFN norm
        (``_ffn_norm``).  U [N, 3, 9, C], the attention's output [N, 9, C] and the attention norm's parts live only
        in this call's frames, so none of them is alive while the caller runs the FFN (session 17's refactor kept U
        there: +0.5 GiB at the V1.5 20k graphed peak, session 18)."""
        xp, parts = self.norm_attn.parts_passthrough(x, system, addend=pending)
        y = self.attn.node_part(self.attn.fused_U_graph(*self.attn.qkv(parts), z, g), x.dtype)
        return self._ffn_norm(xp, y)

    @torch.jit.unused
    def _attn_passthrough(self, x: torch.Tensor, system: torch.Tensor) -> bool:
        return (system.numel() == x.shape[2] and self.attn.use_fused(x)
                and self.norm_attn.passthrough_usable(x))

    @torch.jit.unused
    def forward_pending(self, x: torch.Tensor, pending: Optional[torch.Tensor], system: torch.Tensor,
                        z: torch.Tensor, g: Graph) -> Tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with the residual sums left to the norms (``E2F_RMS_ADD``): the block's input is x + pending
        (pending None: x), summed by the attention norm's kernel, and the attention's output is summed with it by the
        FFN norm's kernel; returns (that sum, the FFN's output), whose sum is the block's output, for the next
        block's attention norm (or the caller) to add.  The caller checks ``E2FormerV2._pending_usable``."""
        xs, parts = self._attn_ffn_norm(x, pending, system, z, g)
        return xs, self.ffn.parts(parts)

    def attn_input(self, x: torch.Tensor, system: torch.Tensor) -> torch.Tensor:
        """Pre-norm, system embedding added to the l=0 row (per atom)."""
        if not torch.jit.is_scripting():
            y = self.norm_attn.with_extra(x, system)
            if y is not None:
                return y
        hs = self.norm_attn.parts(x)
        return torch.cat([hs[0] + system, hs[1], hs[2]], dim=1)

    @torch.jit.unused
    def attn_input_parts(self, x: torch.Tensor, system: torch.Tensor) -> List[torch.Tensor]:
        """``attn_input`` as degree parts: written as three contiguous tensors by the norm kernel where it runs (the
        q / k / v GEMMs then read them without copies), else the split of ``attn_input``."""
        if system.numel() == x.shape[2] and self.norm_attn._kernel_usable(x):
            return list(self.norm_attn._kernel(x, system, True))
        return list(torch.split(self.attn_input(x, system), [1, 3, 5], dim=1))

    def edge_part(self, x: torch.Tensor, system: torch.Tensor, z: torch.Tensor, g: Graph) -> torch.Tensor:
        """The only part of a block that couples atoms: U (or T on the so2 route), see Attention.edge_part."""
        if not torch.jit.is_scripting():
            if self.attn.use_fused(x):       # (the same test as Attention.edge_part's on the normalised input)
                return self.attn.fused_U_graph(*self.attn.qkv(self.attn_input_parts(x, system)), z, g)
        return self.attn.edge_part(self.attn_input(x, system), z, g)

    def node_part(self, x: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """The rest of the block given its input ``x`` and the attention's U, atom by atom (any subset of
        atoms gives those atoms' rows): attention output, residual, FFN, residual."""
        if not torch.jit.is_scripting():
            xs, parts = self._ffn_norm(x, self.attn.node_part(U, x.dtype))
            return xs + self.ffn.parts(parts)
        x = x + self.attn.node_part(U, x.dtype)                # (TorchScript)
        return x + self.ffn.parts(self.norm_ffn.parts(x))

    @torch.jit.unused
    def _ffn_norm(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The attention output ``y``'s residual sum and the FFN norm: (the residual stream x + y, the FFN norm's
        degree parts for the FFN's matrix products).  Every block path runs this, then ``ffn.parts`` of the parts;
        ``y`` is not saved for the backward, so a caller that passes it as a temporary has it freed before the FFN."""
        if self.norm_ffn.addend_usable(x, y):                # the residual sum by the norm's kernel (E2F_RMS_ADD)
            return self.norm_ffn.parts_passthrough(x, None, True, addend=y)
        x = x + y
        if self.norm_ffn.passthrough_usable(x):              # (see forward)
            return self.norm_ffn.parts_passthrough(x, None, True)
        return x, self.norm_ffn.parts_for_gemm(x)

    def __getstate__(self):
        """Pickling / deepcopy without the torch.compile'd functions of ``E2FormerV2.set_compile`` (they cannot be
        pickled); the model's ``__setstate__`` compiles them again."""
        return _state_without(self, "_compiled_parts")

    @torch.jit.unused
    def qkv_rows(self, x: torch.Tensor, system: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per atom: (q, k, v) of the fused kernel for the atoms of ``x``."""
        return self.attn.qkv(self.attn_input_parts(x, system))

    @torch.jit.unused
    def fused_rows(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, z: torch.Tensor,
                   s: torch.Tensor, row_ptr: torch.Tensor, src: torch.Tensor, vec: torch.Tensor,
                   g: Graph, z_all: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Block output of a slice of target atoms (``x``, ``q``, ``z`` of the slice; ``k``, ``v``, ``s``,
        ``z_all`` of all atoms; ``row_ptr`` / ``src`` / ``vec``: the slice's edges, ``row_ptr`` rebased to 0)."""
        table = None if z_all is None else self.attn._kernel_table(z, z_all)
        U = self.attn.fused_U_rows(q, k, v, self.attn.target_embedding(z), s, row_ptr, src, vec, g, table)
        return self.node_part(x, U)


class Heads(nn.Module):
    """One energy MLP (C -> C -> C -> 1, SiLU) per head, stacked; optional direct force head."""

    def __init__(self, cfg: E2FormerConfig):
        super().__init__()
        n, C = len(cfg.heads), cfg.channels
        self.w0 = nn.Parameter(torch.randn(n, C, C) / math.sqrt(C))
        self.b0 = nn.Parameter(torch.zeros(n, C))
        self.w1 = nn.Parameter(torch.randn(n, C, C) / math.sqrt(C))
        self.b1 = nn.Parameter(torch.zeros(n, C))
        self.w2 = nn.Parameter(torch.randn(n, 1, C) / math.sqrt(C))
        self.b2 = nn.Parameter(torch.zeros(n, 1))
        self.force = None if cfg.autograd_forces else nn.Parameter(torch.randn(n, C) / math.sqrt(C))

    def energy(self, x0: torch.Tensor, head: int) -> torch.Tensor:
        h = F.silu(F.linear(x0, self.w0[head], self.b0[head]))
        h = F.silu(F.linear(h, self.w1[head], self.b1[head]))
        return F.linear(h, self.w2[head], self.b2[head])[:, 0]


class E2FormerV2(nn.Module):
    """The E2Former-V2 potential. Positions in Å, energies in eV, forces in eV/Å.

    ``forward`` (and everything it calls) compiles with ``torch.jit.script`` (used for openmm-torch);
    the user API (``predict``, ``energy_and_forces``) and the GPU kernels are Python-side only."""

    __jit_unused_properties__ = ["eaas", "device", "dtype", "recompute_qk", "radial_tables"]

    def __init__(self, cfg: E2FormerConfig, reference_energies: Optional[Dict[str, List[float]]] = None):
        super().__init__()
        cfg.validate()
        self.config = cfg
        C = cfg.channels
        self.cutoff = float(cfg.cutoff)
        self.max_neighbors = int(cfg.max_neighbors)
        self.min_dist = float(cfg.min_dist)
        self.overlap_distance = float(OVERLAP_DISTANCE)
        self.envelope_kind = str(cfg.envelope)
        self.head_names: List[str] = list(cfg.heads)
        self.default_head = self.head_names[0]
        self.direct_forces = not cfg.autograd_forces
        self.charge_embedding = nn.Embedding(30, C)
        self.multiplicity_embedding = nn.Embedding(30, C)
        self.system_mix = nn.Linear(2 * C, C)
        nb = cfg.num_basis
        self.register_buffer("rbf_offsets", torch.linspace(0.0, cfg.cutoff, nb))
        delta = cfg.cutoff / (nb - 1)
        self.rbf_coeff = -0.5 / (2.0 * delta) ** 2
        self.edge_degree = EdgeDegreeEmbedding(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_final = EquivariantRMSNorm(C)
        self.heads = Heads(cfg)
        # per-head reference energies (eV per atom, index Z) and the table length (supported Z < length).
        # Kept as plain float64 attributes, not buffers: model.to(float32) must not round them
        # (a float32 sum over a few thousand atoms would be off by ~1e-3 eV).
        table = torch.zeros(len(self.head_names), cfg.num_elements, dtype=torch.float64)
        self.reference_length: List[int] = [cfg.num_elements] * len(self.head_names)
        for h, name in enumerate(self.head_names):
            ref = (reference_energies or {}).get(name)
            if ref is not None:
                n = min(len(ref), cfg.num_elements)
                table[h, :n] = torch.tensor(ref[:n], dtype=torch.float64)
                self.reference_length[h] = n
        self.reference_energy = table
        #: activation checkpointing of the transformer blocks (Python side only; TorchScript runs plain blocks):
        #:
        #: * ``False``: none;
        #: * ``True`` or ``"block"``: each whole block is one checkpoint: only the block inputs (9C floats per atom
        #:   and block) are kept, and the backward pass recomputes one block at a time with all its activations
        #:   (the peak: ~240 KB per atom at the V1.5 size, C = 256, measured on an H200 at 100k atoms);
        #: * ``"fine"``: the same outer checkpoint per block, and inside it nested checkpoints over slices of
        #:   ``checkpoint_chunk_atoms`` atoms, so that the backward pass never holds a whole block's per-atom
        #:   activations.  With the fused attention kernel (CUDA): per slice q, k, v (pre-norm, system
        #:   embedding, projections), then per slice of target atoms the kernel's U rows (the kernel runs on the
        #:   slice's CSR rows with the keys / values of all atoms) and the per-atom rest of the block (CG
        #:   contraction, path mixing, output linear, residual, FFN, residual); whole-system tensors of the
        #:   block's backward are then q, k, v (~17C floats per atom at V1.5) and their gradients.  On the
        #:   PyTorch attention routes (CPU, so2, QKdot): one checkpoint computes the whole U (or T) and the
        #:   per-atom rest runs in slices.  The block's forward runs once more than with ``"block"`` (the outer
        #:   recomputation, then the slices' own), i.e. more time for less memory;
        #: * ``"auto"`` (default): none below ``checkpoint_min_elements`` node-feature floats (N x 9 x C;
        #:   ~29k atoms at C = 256 on the GPU, 1/32 of that on the CPU), and above that, on the GPU, also none
        #:   wherever a step without checkpointing fits (session 13: ``checkpoint_none_bytes_per_element`` per
        #:   node-feature float within 90 % of the memory the device has left, fused kernels in every block; an
        #:   out-of-memory error there is caught and the step redone with checkpointing, see
        #:   ``energy_and_forces``, the only evaluation that takes this); else ``"block"``; on the GPU, where
        #:   "none" does not fit, ``"fine"`` from ``checkpoint_fine_min_elements`` (~116k atoms at C = 256) on,
        #:   and below that
        #:   wherever ``"block"`` would not fit: its peak, ``checkpoint_block_bytes_per_element`` per node-feature
        #:   float, above 90 % of the memory the device has left (free plus the allocator's cached blocks).  In
        #:   between comes ``"block+qk"``: "block" with the query / key projections recomputed in the backward
        #:   (as ``set_recompute_qk``, for this evaluation only), where its peak
        #:   (``checkpoint_block_qk_bytes_per_element``) fits and plain "block" does not.  A 100k-atom V1.5
        #:   system on an H200 (session 11): "block" 22.8 GiB at 0.529 steps/s, "block+qk" 16.4 GiB at 0.505,
        #:   "fine" ~14 GiB at ~15 % below "block" (session 4), so the slowest mode runs only where the others
        #:   would not fit.  (Never ``"fine"`` on the CPU by itself: there the attention runs in PyTorch and its
        #:   U is not split, so the gain is small for the extra forward pass.)
        #:
        #: All modes compute the same function (``"block"`` bit for bit; ``"fine"`` up to the rounding of
        #: matrix products over different row counts).
        self.checkpoint_blocks = "auto"
        self.checkpoint_min_elements = 1 << 26
        self.checkpoint_fine_min_elements = 1 << 28
        #: allocator peak of a "block" energy + forces step per node-feature float: 22.80 GiB at 100k atoms of the
        #: V1.5 size (C = 256, N x 9 x C = 230.4M floats) on an H200 (benchmarks/results/gpu_end_to_end_s11_h200.json;
        #: 25.08 GiB before session 10's node-level change) = 106.2 bytes, and 16.40 GiB = 76.4 bytes with the
        #: query / key projections recomputed (same file, "qk1_recompute")
        self.checkpoint_block_bytes_per_element = 107.0
        #: allocator peak of an energy + forces step without checkpointing per node-feature float, fused kernels:
        #: 6.24 / 6.32 GiB at 10k atoms and 12.33 / 12.50 GiB at 20k of the V1.5 size, fp32 (H200, session 13:
        #: gpu_end_to_end_tables_s13_*_h200.json, with and without radial tables agree within 1.5 %) = 291-295 bytes,
        #: linear in N; 320 leaves ~8 % of headroom (bf16 needs less: 205 bytes at 10k)
        self.checkpoint_none_bytes_per_element = CHECKPOINT_NONE_BYTES_PER_ELEMENT
        #: node-feature floats at which a step "auto" ran without checkpointing above checkpoint_min_elements ran out
        #: of memory: from there on "auto" checkpoints again, for the model's lifetime (None: no such failure yet;
        #: a pickled or deep-copied model starts without it; Python side only)
        self._auto_none_oom_elements: Optional[int] = None
        #: whether the evaluation in progress took "none" by the memory test above, and whether it may (only
        #: inside energy_and_forces, which can redo the step: not for a caller's own backward or double backward,
        #: which the estimate does not cover); Python side only
        self._auto_none_taken = False
        self._auto_none_allowed = False
        self.checkpoint_block_qk_bytes_per_element = 77.0
        self.checkpoint_chunk_atoms = 65536
        #: the mode the last evaluation used ("none", "block", "block+qk" or "fine"; Python side only)
        self.last_checkpoint_mode = "none"
        #: N x 9 x C of the last evaluation's node features (Python side only)
        self.last_node_elements = 0
        #: bf16 autocast of the node-level matrix products (see set_precision)
        self.bf16 = False
        #: torch.compile of the blocks' node-level parts (see set_compile; experimental, opt-in), and whether the
        #: padded / CUDA-graph path uses them too
        self.compile_node_parts = False
        self.compile_in_graphs = False
        self.eval()

    @property
    def recompute_qk(self) -> bool:
        """Whether the query / key projections are recomputed in the backward pass (``set_recompute_qk``)."""
        return bool(self.blocks[0].attn.query.recompute) if len(self.blocks) else False

    def set_recompute_qk(self, on: bool = True) -> "E2FormerV2":
        """Recompute the per-degree query / key projections of every block in the backward pass instead of
        keeping them (opt-in, Python side only).  They are the largest activations of a block: 2 x 9 x qk_width
        floats per atom for the pair (~74 KB at the V1.5 size, about a third of a "block"-checkpointed step's peak
        per atom), for one more projection GEMM per block in the backward.  Same function, bit for bit."""
        for b in self.blocks:
            b.attn.query.recompute = bool(on)
            b.attn.key.recompute = bool(on)
        return self

    # ------------------------------------------------------------------ configuration
    @property
    def eaas(self) -> str:
        return "so2" if self.blocks[0].attn.use_so2 else "relative"

    def set_eaas(self, mode: str) -> "E2FormerV2":
        if mode not in EAAS_MODES:
            raise ValueError(f"eaas must be one of {EAAS_MODES}, got {mode!r}")
        for b in self.blocks:
            b.attn.use_so2 = mode == "so2"
        return self

    def set_attention_backend(self, backend: str = "auto", allow_tf32: bool = False) -> "E2FormerV2":
        """'auto': fused Triton kernel on CUDA (QK_alpha, relative EAAS, float32), PyTorch elsewhere;
        'reference': always PyTorch; 'triton': require the kernel.  Which attention kernel runs is chosen
        by ``kernels.fused_attention``: v2 by default, v1 with ``E2FORMER_ATTENTION_BACKEND=triton``
        (``allow_tf32`` only affects v1 and the edge-degree kernel: v2 is fastest with exact fp32 dots)."""
        if backend not in ("auto", "reference", "triton"):
            raise ValueError(f"attention backend must be 'auto', 'reference' or 'triton', got {backend!r}")
        for b in self.blocks:
            b.attn.backend = backend
            b.attn.allow_tf32 = bool(allow_tf32)
        self.edge_degree.backend = "reference" if backend == "reference" else "auto"
        return self

    def set_precision(self, mode: str = "fp32") -> "E2FormerV2":
        """'fp32' (default: exact float32 everywhere), 'tf32' (TF32 dots in the fused GPU edge MLPs; set
        ``torch.backends.cuda.matmul.allow_tf32`` for the other matrix products) or 'bf16' (additionally
        bf16 autocast of the node-level matrix products). The model must be float32."""
        if mode not in ("fp32", "tf32", "bf16"):
            raise ValueError(f"precision mode must be 'fp32', 'tf32' or 'bf16', got {mode!r}")
        backend = self.blocks[0].attn.backend
        self.set_attention_backend(backend, allow_tf32=mode != "fp32")
        self.bf16 = mode == "bf16"
        return self

    @torch.jit.unused
    def set_radial_tables(self, on: bool = True, intervals: int = 2048) -> "E2FormerV2":
        """Inference option (session 11; the OpenMM force's default for float32 on CUDA since session 12): read the
        edge MLPs (the attention's of every block and the three
        radial MLPs of the edge-degree embedding) from cubic Hermite tables in d per pair of elements
        (``model/radial_table.py``), on the PyTorch routes and in the fused v2 kernels (TABLE: no edge MLP forward
        or backward in them; the edge-degree table holds the MLPs' last hidden layers, before the last linear,
        which the kernels apply at the node level).
        Each MLP sees an edge only through (d, Z_i, Z_j), so a table is the same function up to the interpolation
        error, ~1e-9-1e-8 of max |f| at 2048 intervals (below float32 rounding).  Inference only: the weights
        must be frozen (parameters that require grad are refused); tables grow when new elements appear.  A
        pickled or deep-copied model leaves the built tables out and sets them up again (rebuilt on first use)."""
        from .radial_table import RadialTable

        mods = [b.attn for b in self.blocks] + [self.edge_degree]
        if not on:
            for mod in mods:
                mod.__dict__.pop("_radial_table", None)
            self.__dict__.pop("_radial_table_intervals", None)
            return self
        if any(p.requires_grad for mod in mods for p in mod.parameters()):
            raise ValueError("set_radial_tables is for inference with frozen weights, but some parameters require "
                             "grad: call model.requires_grad_(False) first")
        dtype = self.rbf_offsets.dtype
        offsets = self.rbf_offsets.double()          # the model's own offsets (float32 values are exact in float64)
        coeff = self.rbf_coeff

        def attn_fn(mod, d, zi, zj):
            return mod.radial_fn(offsets.to(d.device), coeff, d, zi, zj)

        def degree_fn(mod, d, zi, zj):
            return mod.radial_fn(offsets.to(d.device), d, zi, zj)

        for b in self.blocks:
            b.attn.__dict__["_radial_table"] = RadialTable(b.attn, attn_fn, self.cutoff, intervals, dtype,
                                                           frozen=b.attn.edge_mlp.lin0.weight)
        ed = self.edge_degree
        ed.__dict__["_radial_table"] = RadialTable(ed, degree_fn, self.cutoff, intervals, dtype,
                                                   frozen=ed.radial[0].lin0.weight)
        self.__dict__["_radial_table_intervals"] = int(intervals)      # for __setstate__
        return self

    @property
    def radial_tables(self) -> bool:
        """Whether the edge MLPs are read from tables (``set_radial_tables``)."""
        return "_radial_table" in self.edge_degree.__dict__

    @torch.jit.unused
    def set_compile(self, on: bool = True, in_graphs: bool = False, **options) -> "E2FormerV2":
        """Experimental, opt-in (session 11): ``torch.compile`` the node-level parts of every block on the
        fused-kernel route, so that Inductor fuses their elementwise passes (norms, gates, residuals, casts):
        q / k / v (pre-norm, system embedding, projections) and everything after the attention kernel (CG
        contraction, output GEMMs, residual, norm, FFN, residual). The attention kernels are unchanged.

        Applies to eager evaluations with "none", "block" or "block+qk" checkpointing; "fine" checkpointing
        keeps the plain modules, and so does the padded / CUDA-graph path unless ``in_graphs`` (untimed on a GPU
        so far: the graph captures the compiled kernels, compiled in the graph's warm-up call). One backward
        pass only: energies and forces,
        not training on forces (double backward). ``options`` go to ``torch.compile`` (default
        ``dynamic=True``: one compilation serves every system size). The compiled functions live on the
        blocks; a pickled or deep-copied model leaves them out and compiles them again when unpickled."""
        options.setdefault("dynamic", True)
        self.__dict__["_compile_options"] = dict(options)
        for b in self.blocks:
            if on:
                b.__dict__["_compiled_parts"] = (torch.compile(b.qkv_rows, **options),
                                                 torch.compile(b.node_part, **options))
            else:
                b.__dict__.pop("_compiled_parts", None)
        self.compile_node_parts = bool(on)
        self.compile_in_graphs = bool(on and in_graphs)
        return self

    def __setstate__(self, state):
        super().__setstate__(state)
        # attributes added since a pickled model was written (session 13: "auto" without checkpointing where it fits)
        for key, val in (("checkpoint_none_bytes_per_element", CHECKPOINT_NONE_BYTES_PER_ELEMENT),
                         ("_auto_none_taken", False), ("_auto_none_allowed", False), ("last_node_elements", 0)):
            self.__dict__.setdefault(key, val)
        # an out-of-memory failure belongs to the device and moment it happened on, not to the model: a copy
        # starts without it
        self._auto_none_oom_elements = None
        # the submodules left their inference-time attachments out (_state_without): attach them again
        if "_radial_table_intervals" in self.__dict__:
            self.set_radial_tables(True, self._radial_table_intervals)
        if self.__dict__.get("compile_node_parts"):
            self.set_compile(True, in_graphs=self.compile_in_graphs, **self.__dict__.get("_compile_options", {}))

    @torch.jit.unused
    def _compiled_block(self, block: "Block", x: torch.Tensor, system: torch.Tensor, z: torch.Tensor,
                        g: Graph) -> torch.Tensor:
        """``block(x, system, z, g)`` on the fused-kernel route with its compiled node-level parts (set_compile):
        the same operations in the same order as Block.forward -> Block.edge_part's fused route (attn_input_parts
        -> Attention.qkv -> fused_U_graph) -> node_part."""
        qkv_rows, node_part = block.__dict__["_compiled_parts"]
        return node_part(x, block.attn.fused_U_graph(*qkv_rows(x, system), z, g))

    def head_index(self, head: Optional[str]) -> int:
        if head is None:
            return 0
        if head not in self.head_names:
            raise ValueError(f"unknown head {head!r}; this model has heads {self.head_names}")
        return self.head_names.index(head)

    # ------------------------------------------------------------------ core
    def build_graph(self, positions: torch.Tensor, cell: Optional[torch.Tensor], pbc: Optional[torch.Tensor],
                    check_overlap: bool = True) -> Graph:
        """The graph of :meth:`neighbor_edges` with its geometry."""
        center, neighbor, shift = self.neighbor_edges(positions, cell, pbc, check_overlap)
        return Graph(center, neighbor, shift, positions, self.cutoff, self.rbf_offsets.to(positions.dtype),
                     self.rbf_coeff, self.envelope_kind)

    def neighbor_edges(self, positions: torch.Tensor, cell: Optional[torch.Tensor], pbc: Optional[torch.Tensor],
                       check_overlap: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(center, neighbor, shift) with the official neighbour semantics: the ``max_neighbors`` nearest
        atoms/images with ``min_dist <= d <= cutoff``, sorted by centre, then distance; shift in the positions'
        dtype, no gradient. The list is built once with ``min_dist = 0`` so that overlapping atoms (which the
        official model silently ignores) can be reported."""
        K = self.max_neighbors
        with torch.no_grad():
            pos = positions.detach()
            center, neighbor, shift = neighbor_list(pos, cell, pbc, self.cutoff, K + 1, 0.0)
            not_self = (center != neighbor) | (shift != 0).any(dim=1)
            center, neighbor, shift = center[not_self], neighbor[not_self], shift[not_self]
            d = torch.linalg.vector_norm(pos[center] - pos[neighbor] - shift.to(pos.dtype), dim=1)
            if check_overlap and d.numel() > 0 and bool((d < self.overlap_distance).any()):
                k = int(torch.argmin(d))
                raise ValueError("atoms {} and {} overlap (distance {:.4f} Å < {} Å): check the structure "
                                 "(duplicated atoms, a blown-up simulation, or positions not in Å)".format(
                                     int(center[k]), int(neighbor[k]), float(d[k]), self.overlap_distance))
            keep = d >= self.min_dist
            center, neighbor, shift = center[keep], neighbor[keep], shift[keep]
            # re-apply the cap (edges are sorted by centre, then distance)
            rank = torch.arange(center.numel(), device=center.device) - torch.searchsorted(center, center)
            keep = rank < K
            center, neighbor, shift = center[keep], neighbor[keep], shift[keep]
        return center, neighbor, shift.to(positions.dtype)

    def system_embedding(self, charge: torch.Tensor, multiplicity: torch.Tensor) -> torch.Tensor:
        """[B, C] embedding of B systems' total charges and spin multiplicities (integer tensors [B]); values
        outside the official tables' range (charge -10..10, multiplicity 0..20) are clamped to it."""
        q = charge.to(torch.long).clamp(-10, 10) + 10
        s = multiplicity.to(torch.long).clamp(0, 20)
        return F.silu(self.system_mix(torch.cat([self.charge_embedding(q), self.multiplicity_embedding(s)], dim=1)))

    def node_features(self, z: torch.Tensor, g: Graph, charge: int, multiplicity: int,
                      l0_only: bool = False) -> torch.Tensor:
        """Final normalised node features [N, 9, C] (``l0_only``: see :meth:`node_features_system`)."""
        dev = z.device
        system = self.system_embedding(torch.tensor([int(charge)], device=dev),
                                       torch.tensor([int(multiplicity)], device=dev))
        return self.node_features_system(z, g, system, l0_only=l0_only)

    def node_features_system(self, z: torch.Tensor, g: Graph, system: torch.Tensor,
                             checkpoint: bool = True, l0_only: bool = False) -> torch.Tensor:
        """:meth:`node_features` given the [1, C] system embedding; ``checkpoint=False``: never activation
        checkpointing (the padded / CUDA-graph path).  ``l0_only``: the caller reads only the l = 0 row ([:, 0]):
        where the norm kernel runs the result is then [N, 1, C], and the final norm's backward reads no l > 0
        gradient (no zero-filled [N, 9, C] gradient of a row selection)."""
        x = self.edge_degree(z, g)
        system = system.to(x.dtype)
        if not torch.jit.is_scripting():
            # the checkpoint mode is decided once per evaluation (on the GPU it asks for the free memory)
            mode = self._checkpoint_mode(x) if checkpoint else "none"
            self.last_node_elements = x.numel()
            self._set_auto_recompute_qk(mode == "block+qk")
            self.last_checkpoint_mode = mode
            use_compiled = self.compile_node_parts and (checkpoint or self.compile_in_graphs)
            if self.bf16 or use_compiled or mode != "none":
                return self._norm_final(self._blocks_python(x, system, z, g, checkpoint, mode), l0_only)
            if self._pending_usable(x, system):
                # the residual sums by the norm kernels (E2F_RMS_ADD): each block hands its FFN output to the next
                pending: Optional[torch.Tensor] = None
                for block in self.blocks:
                    x, pending = block.forward_pending(x, pending, system, z, g)
                return self._norm_final(x if pending is None else x + pending, l0_only)
        for block in self.blocks:
            x = block(x, system, z, g)
        return self._norm_final(x, l0_only)

    def _norm_final(self, x: torch.Tensor, l0_only: bool) -> torch.Tensor:
        """The final norm: [N, 9, C], or with ``l0_only`` [N, 1, C] (its l = 0 part) where the kernel runs."""
        if l0_only and not torch.jit.is_scripting():
            if self.norm_final._kernel_usable(x):
                return self.norm_final._kernel(x, None, True)[0]
        return self.norm_final(x)

    @torch.jit.unused
    def _pending_usable(self, x: torch.Tensor, system: torch.Tensor) -> bool:
        """Whether the plain block loop may run as ``Block.forward_pending`` (the residual sums inside the norm
        kernels): every block on the fused route with the passthrough norms, and ``E2F_RMS_ADD`` on (the attention
        norm takes the previous block's FFN output; the FFN norm decides for itself, as in ``node_part``).  The FFN's
        outputs are float32 here (no autocast on this path)."""
        if not len(self.blocks) or x.dtype != torch.float32:
            return False
        return all(b._attn_passthrough(x, system) and b.norm_attn.addend_usable(x, x) for b in self.blocks)

    @torch.jit.unused
    def _checkpoint_mode(self, x: torch.Tensor) -> str:
        """'none', 'block' or 'fine' for node features ``x`` (see ``checkpoint_blocks``)."""
        ckpt = self.checkpoint_blocks
        if not torch.is_grad_enabled():
            return "none"
        if isinstance(ckpt, str):
            if ckpt == "auto":
                ok = x.numel() >= (self.checkpoint_min_elements if x.is_cuda else self.checkpoint_min_elements >> 5)
                avail = self._cuda_available_bytes(x) if ok and x.is_cuda else None
                if avail is not None and self._auto_none_allowed and self._none_fits(x, avail):
                    self._auto_none_taken = True
                    return "none"
                if x.is_cuda and x.numel() >= self.checkpoint_fine_min_elements:
                    return "fine"
                if ok and x.is_cuda:
                    if avail is not None and self.checkpoint_block_bytes_per_element * x.numel() > 0.9 * avail:
                        # q / k recomputed: a no-op where the user already asked for it, so straight to "fine"
                        if (not self.recompute_qk and
                                self.checkpoint_block_qk_bytes_per_element * x.numel() <= 0.9 * avail):
                            return "block+qk"
                        return "fine"
                return "block" if ok else "none"
            if ckpt in ("block", "fine"):
                return ckpt
            raise ValueError(f"checkpoint_blocks must be True, False, 'auto', 'block' or 'fine', got {ckpt!r}")
        return "block" if ckpt else "none"

    @torch.jit.unused
    def _none_fits(self, x: torch.Tensor, avail: int) -> bool:
        """Whether "auto" may run a step of node features ``x`` without checkpointing although it is above
        ``checkpoint_min_elements``: its estimated peak (``checkpoint_none_bytes_per_element``, measured with the
        fused kernels) within 90 % of ``avail``, the fused kernels in every block (the PyTorch attention routes
        hold edge tensors that the estimate does not count), and no out-of-memory error at this size or below."""
        n = x.numel()
        if self.checkpoint_none_bytes_per_element * n > 0.9 * avail:
            return False
        if self._auto_none_oom_elements is not None and n >= self._auto_none_oom_elements:
            return False
        return all(b.attn.use_fused(x) for b in self.blocks) and self.edge_degree.use_fused(x)

    @staticmethod
    def _cuda_available_bytes(x):
        """Free device memory plus the caching allocator's reserved-but-unused bytes on x's device (None if the
        query fails)."""
        try:
            dev = x.device
            free, _total = torch.cuda.mem_get_info(dev)
            return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        except Exception:
            return None

    @torch.jit.unused
    def _set_auto_recompute_qk(self, on: bool) -> None:
        """The automatic counterpart of ``set_recompute_qk`` ("block+qk"). It stays as set until the next
        evaluation decides again: the backward pass recomputes each checkpointed block's forward, which must take
        the same path as the forward did."""
        for b in self.blocks:
            b.attn.query.auto_recompute = bool(on)
            b.attn.key.auto_recompute = bool(on)

    @torch.jit.unused
    def _blocks_python(self, x: torch.Tensor, system: torch.Tensor, z: torch.Tensor, g: Graph,
                       checkpoint: bool, mode: str) -> torch.Tensor:
        """Blocks with the Python-only options: activation checkpointing ``mode`` (see ``checkpoint_blocks``,
        decided by ``node_features_system``; ``checkpoint=False``: the padded path), compiled node-level parts
        (``set_compile``) and/or bf16 autocast of the node-level matrix products (the residual stream, norms,
        edge kernels and sums stay float32)."""
        slices: Optional[Tuple[List[int], torch.Tensor, List[int]]] = None
        if mode != "none":
            # build the graph's lazy caches first, so that the recomputation sees the same operations
            g.padded()
            if not all(b.attn.use_fused(x) for b in self.blocks):
                g.rbf()
        if mode == "fine":
            N = x.shape[0]
            step = max(1, int(self.checkpoint_chunk_atoms))
            starts = list(range(0, N, step)) + [N]
            row_ptr = g.row_ptr()
            # edge range of every atom slice (one device -> host copy per evaluation)
            edge_bounds = [int(e) for e in row_ptr[starts].tolist()] if N > 0 else [0]
            slices = (starts, row_ptr, edge_bounds)
        compiled = self.compile_node_parts and (checkpoint or self.compile_in_graphs) and slices is None
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for block in self.blocks:
                run = block
                if compiled and "_compiled_parts" in block.__dict__ and block.attn.use_fused(x):
                    run = functools.partial(self._compiled_block, block)
                if slices is not None and x.shape[0] > 0:
                    x = torch.utils.checkpoint.checkpoint(self._block_fine, block, x, system, z, g, slices,
                                                          use_reentrant=False, preserve_rng_state=False)
                elif mode != "none":
                    x = torch.utils.checkpoint.checkpoint(run, x, system, z, g, use_reentrant=False)
                else:
                    x = run(x, system, z, g)
                x = x.float() if self.bf16 else x
        return x

    @torch.jit.unused
    def _block_fine(self, block: Block, x: torch.Tensor, system: torch.Tensor, z: torch.Tensor, g: Graph,
                    slices: Tuple[List[int], torch.Tensor, List[int]]) -> torch.Tensor:
        """One block as nested checkpoints over atom slices (``checkpoint_blocks="fine"``; runs inside the
        block's own checkpoint, so that between blocks only the block input is kept)."""
        from functools import partial

        ckpt = partial(torch.utils.checkpoint.checkpoint, use_reentrant=False, preserve_rng_state=False)
        starts, row_ptr, edge_bounds = slices
        sizes = [b - a for a, b in zip(starts[:-1], starts[1:])]
        xs = x.split(sizes)   # split / cat (not slicing): one gradient buffer per tensor, not one per slice
        zs = z.split(sizes)
        if block.attn.use_fused(x):
            qkv = [ckpt(block.qkv_rows, xc, system) for xc in xs]
            k = torch.cat([c[1] for c in qkv]) if len(qkv) > 1 else qkv[0][1]
            v = torch.cat([c[2] for c in qkv]) if len(qkv) > 1 else qkv[0][2]
            s = block.attn.source_embedding(z)
            e_sizes = [b - a for a, b in zip(edge_bounds[:-1], edge_bounds[1:])]
            srcs = g.neighbor.split(e_sizes)
            vecs = g.vec.split(e_sizes)
            outs = []
            for i, xc in enumerate(xs):
                rp = row_ptr[starts[i]:starts[i + 1] + 1] - edge_bounds[i]
                outs.append(ckpt(block.fused_rows, xc, qkv[i][0], k, v, zs[i], s, rp, srcs[i], vecs[i], g, z))
        else:
            U = ckpt(block.edge_part, x, system, z, g)
            outs = [ckpt(block.node_part, xc, Uc) for xc, Uc in zip(xs, U.split(sizes))]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def energy_terms(self, z: torch.Tensor, positions: torch.Tensor, cell: Optional[torch.Tensor] = None,
                     pbc: Optional[torch.Tensor] = None, charge: int = 0, multiplicity: int = 1,
                     head: int = 0, check_overlap: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(E_model [eV], direct forces [N,3] eV/Å or None)."""
        g = self.build_graph(positions, cell, pbc, check_overlap)
        force = self.heads.force
        x = self.node_features(z, g, charge, multiplicity, l0_only=force is None)
        energy = self.heads.energy(x[:, 0], head).sum()
        direct: Optional[torch.Tensor] = None
        if force is not None:
            direct = torch.einsum("nkc,c->nk", x[:, 1:4], force[head])
        return energy, direct

    @torch.jit.unused
    def padded_energy_terms(self, z: torch.Tensor, positions: torch.Tensor, center: torch.Tensor,
                            neighbor: torch.Tensor, shift: torch.Tensor, system: torch.Tensor, head: int,
                            max_degree: int, owner: Optional[torch.Tensor] = None,
                            num_systems: int = 1) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`energy_terms` with static shapes and no device -> host sync (the CUDA-graph path,
        ``openmm_e2former.graphed``): every shape follows from N and the edge capacity E_cap.

        z [N+1]: the atomic numbers and one ghost node (index N, any valid element index); positions [N, 3];
        center / neighbor / shift [E_cap]: :meth:`neighbor_edges` padded by :func:`pad_edges`; system [1, C]:
        :meth:`system_embedding`; max_degree: a bound of the real atoms' in-degree (sizes the kernels' edge tiles
        and the dense slot layout instead of the largest in-degree read back from the device).

        Why the padding does not change the result: the padding edges run ghost -> ghost with length
        2 cutoff, so their envelope is exactly 0 (``x < 1`` test) and every message they carry is exactly 0
        (edge degree: u Y MLP; attention: alpha = exp(a - c) u w / S, with exp(a - c) <= 1); the ghost is a
        component of its own (no edge joins it to a real atom), so no real atom's features depend on it, and
        the energy sums the real atoms only.  The real edges keep their order (sorted by centre, the ghost
        last), so every per-atom sum runs over the same terms; only matrix products over N + 1 instead of N
        rows may round differently.  The ghost's CSR row can hold more than ``max_degree`` edges: the fused
        kernels then read only its first edge tile, and the dense layout puts its extra edges in its last
        slot; neither reaches a real atom.  Not for the ``so2`` EAAS route (it groups edges by periodic image
        with ``torch.unique``).

        Several systems at once (disjoint blocks of one graph, as ``training.train.predict_batch``): ``owner``
        [N] int64 gives each real atom's system (0 .. ``num_systems`` - 1) and ``system`` is then the per-node
        embedding [N+1, 1, C] (the ghost's row: any); the energy returned is per system, [num_systems]."""
        if self.eaas == "so2":
            raise ValueError("the padded path needs eaas='relative' (the so2 route groups edges by image with "
                             "torch.unique, a data-dependent shape)")
        n = positions.shape[0]
        dev = center.device
        pos = torch.cat([positions, positions.new_zeros(1, 3)])
        g = Graph(center, neighbor, shift, pos, self.cutoff, self.rbf_offsets.to(positions.dtype), self.rbf_coeff,
                  self.envelope_kind)
        row_ptr = torch.searchsorted(center, torch.arange(n + 2, device=dev))
        slot = torch.arange(center.numel(), device=dev) - row_ptr[center]
        g.set_layout(row_ptr, slot.clamp_max(max(max_degree, 1) - 1), max(max_degree, 1))
        x = self.node_features_system(z, g, system, checkpoint=False, l0_only=self.heads.force is None)[:n]
        if owner is None:
            energy = self.heads.energy(x[:, 0], head).sum()
        else:
            e_atom = self.heads.energy(x[:, 0], head).reshape(-1)
            energy = e_atom.new_zeros(num_systems).index_add(0, owner, e_atom)
        direct: Optional[torch.Tensor] = None
        force = self.heads.force
        if force is not None:
            direct = torch.einsum("nkc,c->nk", x[:, 1:4], force[head])
        return energy, direct

    def reference(self, z: torch.Tensor, head: int) -> torch.Tensor:
        """Sum of the head's per-element reference energies (eV, float64)."""
        table = self.reference_energy
        if table.device != z.device:
            table = table.to(z.device)
            self.reference_energy = table
        return table[head][z].sum()

    def forward(self, atomic_numbers: torch.Tensor, positions: torch.Tensor, cell: Optional[torch.Tensor] = None,
                pbc: Optional[torch.Tensor] = None, charge: int = 0, multiplicity: int = 1,
                head_index: int = 0) -> torch.Tensor:
        """Total energy (eV, float64, including the head's per-element reference energies)."""
        e, _ = self.energy_terms(atomic_numbers, positions, cell, pbc, charge, multiplicity, head_index)
        return e.to(torch.float64) + self.reference(atomic_numbers, head_index)

    # ------------------------------------------------------------------ user API
    @property
    def device(self) -> torch.device:  # noqa: D401
        return self.rbf_offsets.device

    @property
    def dtype(self) -> torch.dtype:
        return self.rbf_offsets.dtype

    def energy_and_forces(self, atomic_numbers: torch.Tensor, positions: torch.Tensor,
                          cell: Optional[torch.Tensor] = None, pbc: Optional[torch.Tensor] = None,
                          charge: int = 0, multiplicity: int = 1, head: Optional[str] = None,
                          forces: bool = True, validate: bool = True):
        """(energy incl. reference [eV] tensor, energy_model [eV] tensor, forces [N,3] eV/Å tensor or None),
        on the model's device; no host copies."""
        from .validation import check_inputs

        hi = self.head_index(head)
        z = atomic_numbers.to(self.device, torch.long)
        pos = positions.to(self.device, self.dtype)
        if cell is not None:
            cell = cell.to(self.device, self.dtype)
        if pbc is not None:
            pbc = pbc.to(self.device, torch.bool)
        if validate:
            check_inputs(self, z, pos, cell, pbc, charge, multiplicity, hi)
        need_grad = forces and not self.direct_forces
        if need_grad:
            pos = pos.detach().requires_grad_(True)
        self._auto_none_allowed = True     # (both flags are cleared in the finally below)
        retry = False
        try:
            e_model, f = self._energy_forces_eval(z, pos, cell, pbc, charge, multiplicity, hi, validate, forces,
                                                  need_grad)
        except torch.cuda.OutOfMemoryError:
            if not self._auto_none_taken:
                raise
            # "auto" ran this size without checkpointing on its memory estimate and the device ran out: checkpoint
            # from this size on, and redo the step (nothing was changed by the failed one) once the handler has
            # let go of the failed step's tensors (its traceback holds them)
            n = int(self.last_node_elements)
            self._auto_none_oom_elements = min(n, self._auto_none_oom_elements or n)
            retry = True
        finally:
            self._auto_none_taken = False
            self._auto_none_allowed = False
        if retry:
            torch.cuda.empty_cache()
            e_model, f = self._energy_forces_eval(z, pos, cell, pbc, charge, multiplicity, hi, validate, forces,
                                                  need_grad)
        e_model = e_model.detach()
        total = e_model.to(torch.float64) + self.reference(z, hi)
        return total, e_model, (f.detach() if f is not None else None)

    def _energy_forces_eval(self, z, pos, cell, pbc, charge: int, multiplicity: int, hi: int, validate: bool,
                            forces: bool, need_grad: bool):
        """(energy_model, forces or None) of one evaluation (``energy_and_forces``' body)."""
        with torch.set_grad_enabled(need_grad):
            e_model, direct = self.energy_terms(z, pos, cell, pbc, charge, multiplicity, hi, validate)
            f = None
            if forces:
                if self.direct_forces:
                    f = direct
                elif pos.shape[0] > 0 and e_model.requires_grad:
                    f = -torch.autograd.grad(e_model, pos)[0]
                else:
                    f = torch.zeros_like(pos)
        return e_model, f

    def predict(self, atomic_numbers, positions, cell=None, pbc=None, charge: int = 0, multiplicity: int = 1,
                head: Optional[str] = None, forces: bool = True) -> Dict[str, object]:
        """Energy (eV, with reference energies), energy_model (eV, network alone) and forces
        (eV/Å, float64 NumPy (N, 3)). Positions in Å; cell rows are lattice vectors; ``pbc``
        three booleans (default: all True if a cell is given, else all False)."""
        from .validation import as_inputs

        z, pos, cell_t, pbc_t = as_inputs(atomic_numbers, positions, cell, pbc)
        total, e_model, f = self.energy_and_forces(z, pos, cell_t, pbc_t, int(charge), int(multiplicity), head,
                                                   forces=forces)
        out: Dict[str, object] = {"energy": float(total), "energy_model": float(e_model)}
        if forces:
            out["forces"] = f.to(torch.float64).cpu().numpy() if f is not None else None
        return out
