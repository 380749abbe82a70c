"""Building blocks of E2Former-V2 (spec §2.2). Features are [N, 9, C] (rows: l=0 | l=1 x3 | l=2 x5)."""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .so3 import C_SIGMOID, C_SILU


class SO3Linear(nn.Module):
    """Degree-wise linear map: one [out, in] matrix per degree l, bias on the l = 0 row only."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # degree rows by split, not slicing: the backward is one cat instead of a zero-filled full-size
        # gradient per slice plus their sums (the same values; on a GPU those fills and adds cost ~10 % of a step)
        return torch.cat(self.parts(torch.split(x, [1, 3, 5], dim=1)), dim=1)

    def cat_parts(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """``cat(parts(xs), dim=1)``: [N, 9, C_out] of the degree parts, without the cat where ``degree_linear``
        runs."""
        if not torch.jit.is_scripting():
            y = degree_linear(xs[0].reshape(xs[0].shape[0], -1), xs[1], xs[2], self.weight[0], self.weight[1],
                              self.weight[2], self.bias)
            if y is not None:
                return y
        return torch.cat(self.parts(xs), dim=1)

    def parts(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """The map on degree parts ([N, 1, C], [N, 3, C], [N, 5, C]) -> the output's degree parts, so that callers
        holding parts need no cat before and no split after (each is a full pass over [N, 9, C], both ways)."""
        N, C = xs[0].shape[0], xs[0].shape[2]
        y0 = F.linear(xs[0].reshape(N, C), self.weight[0], self.bias)[:, None]
        # per-degree rows as 2-D matrices: a plain GEMM (a strided 3-D matmul falls back to a slow batched one)
        y1 = F.linear(xs[1].reshape(N * 3, C), self.weight[1]).view(N, 3, -1)
        y2 = F.linear(xs[2].reshape(N * 5, C), self.weight[2]).view(N, 5, -1)
        return [y0, y1, y2]


class SO3ToScalar(nn.Module):
    """Invariant projection used for queries and keys (official ``SO3_Linear2Scalar``):
    two degree-wise linears, per-degree inner products over m, then an MLP."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        hidden = out_features // 2
        self.weight = nn.Parameter(torch.empty(3, hidden, in_features))
        self.weight2 = nn.Parameter(torch.empty(3, hidden, in_features))
        self.bias = nn.Parameter(torch.zeros(hidden))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(in_features))
        nn.init.normal_(self.weight2, std=1.0 / math.sqrt(in_features))
        self.lin1 = nn.Linear(3 * hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.lin2 = nn.Linear(hidden, out_features)
        #: recompute the per-degree projections in the backward pass instead of keeping them (Python side only;
        #: see E2FormerV2.set_recompute_qk): they are the largest activations of a block (2 x 9 x 2h floats
        #: per atom for a query / key pair, ~74 KB at the V1.5 size), for one more projection GEMM per backward
        self.recompute = False
        #: the same, switched per evaluation by the model's automatic checkpointing (``checkpoint_blocks="auto"``
        #: where a "block" step would not fit and one with these projections recomputed does); kept apart from
        #: ``recompute`` so that the automatic choice never undoes the user's
        self.auto_recompute = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.recompute or self.auto_recompute) and not torch.jit.is_scripting() and torch.is_grad_enabled():
            s = self._scalars_recomputed(torch.split(x, [1, 3, 5], dim=1))
        else:
            s = self.scalars(x)
        return self.lin2(F.silu(self.norm(self.lin1(s))))

    @torch.jit.unused
    def from_parts(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """``forward`` of the input's degree parts ([N, 1, C], [N, 3, C], [N, 5, C]; contiguous parts need no copy
        before their GEMMs)."""
        if (self.recompute or self.auto_recompute) and torch.is_grad_enabled():
            s = self._scalars_recomputed(xs)
        else:
            s = self.scalars_parts(xs)
        return self.lin2(F.silu(self.norm(self.lin1(s))))

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_lin2_dh_cache", None)      # (.to() / .cuda() / .half(): no stale copy kept alive)
        return super()._apply(fn, *args, **kwargs)

    @torch.jit.unused
    def from_parts_dh(self, xs: List[torch.Tensor], heads: int) -> torch.Tensor:
        """``from_parts(xs).view(N, heads, D)`` (D = out_features / heads) stored as [N, D, heads]: the same values,
        as a strided [N, heads, D] view of a contiguous [N, D, heads] tensor.  The last Linear runs with its output
        rows permuted to the order (d, h) (``_lin2_dh``), so each output element is the same dot product as in
        ``lin2``.  The fused attention kernels read queries and keys as [N, D, heads] (``qk_layout``): given this
        form they take it as it is, and hand back their [N, D, heads] gradients as such, instead of one transposing
        copy per tensor each way (24 copies of [N, 1024] floats per step at the V1.5 size)."""
        if (self.recompute or self.auto_recompute) and torch.is_grad_enabled():
            s = self._scalars_recomputed(xs)
        else:
            s = self.scalars_parts(xs)
        return self.head_dh(s, heads)

    @torch.jit.unused
    def head_dh(self, s: torch.Tensor, heads: int) -> torch.Tensor:
        """The MLP after the invariants ``s`` [N, 3h] (``scalars_parts``), as ``from_parts_dh`` returns it: a strided
        [N, heads, D] view of a contiguous [N, D, heads] tensor."""
        w, b = self._lin2_dh(heads)
        out = F.linear(F.silu(self.norm(self.lin1(s))), w, b)
        N, D = out.shape[0], out.shape[1] // heads
        return out.view(N, D, heads).transpose(1, 2)

    @torch.jit.unused
    def _lin2_dh(self, heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``lin2``'s weight and bias with the output rows in (d, h) order instead of (h, d); for frozen weights
        made once and kept while the parameters stay the same tensors, unmodified (their version counters: writes
        through ``.data`` bypass them, as for the radial tables, whose weights must not change either)."""
        W, b = self.lin2.weight, self.lin2.bias
        D = W.shape[0] // heads

        def permuted():
            return (W.view(heads, D, -1).transpose(0, 1).reshape(heads * D, -1),
                    b.view(heads, D).t().reshape(heads * D))

        if W.requires_grad or b.requires_grad or torch.compiler.is_compiling():
            return permuted()     # (compiling: a data-pointer key would split the traced graph)
        try:
            key = (heads, W.data_ptr(), b.data_ptr(), W._version, b._version, str(W.device), str(W.dtype))
        except RuntimeError:        # inference tensors have no version counter
            return permuted()
        cached = self.__dict__.get("_lin2_dh_cache")
        if cached is None or cached[0] != key:
            cached = (key, *permuted())
            self.__dict__["_lin2_dh_cache"] = cached
        return cached[1], cached[2]

    @torch.jit.unused
    def _scalars_recomputed(self, xs: List[torch.Tensor]) -> torch.Tensor:
        import torch.utils.checkpoint as ckpt

        return ckpt.checkpoint(lambda a, b, c: self.scalars_parts([a, b, c]), *xs, use_reentrant=False,
                               preserve_rng_state=False)

    def scalars(self, x: torch.Tensor) -> torch.Tensor:
        """The per-degree invariants [N, 3 h] (l = 0 product with bias, l = 1, 2 inner products over m)."""
        return self.scalars_parts(torch.split(x, [1, 3, 5], dim=1))   # (see SO3Linear: split, not slices)

    def scalars_parts(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """``scalars`` of the input's degree parts."""
        N, C = xs[0].shape[0], xs[0].shape[2]
        # both per-degree linears in one GEMM per degree
        w0 = torch.cat([self.weight[0], self.weight2[0]], dim=0)
        w1 = torch.cat([self.weight[1], self.weight2[1]], dim=0)
        w2 = torch.cat([self.weight[2], self.weight2[2]], dim=0)
        h = self.weight.shape[1]
        p0 = F.linear(xs[0].reshape(N, C), w0)
        p1 = F.linear(xs[1].reshape(N * 3, C), w1).view(N, 3, 2 * h)
        p2 = F.linear(xs[2].reshape(N * 5, C), w2).view(N, 5, 2 * h)
        if not torch.jit.is_scripting():
            if self._pairdot_kernel_usable(p0):
                return self._pairdot_kernel(p0, p1, p2)
        a0 = torch.split(p0, [h, h], dim=1)
        a1 = torch.split(p1, [h, h], dim=2)
        a2 = torch.split(p2, [h, h], dim=2)
        s0 = (a0[0] + self.bias) * a0[1]
        s1 = (a1[0] * a1[1]).sum(dim=1)
        s2 = (a2[0] * a2[1]).sum(dim=1)
        return torch.cat([s0, s1, s2], dim=1)


    @torch.jit.unused
    def _pairdot_kernel_usable(self, p0: torch.Tensor) -> bool:
        """The invariants by ``kernels.pairdot_triton`` (on by default on CUDA; ``E2F_PAIRDOT_KERNEL=0`` opts out):
        float32 or bf16 projections on CUDA (or under the Triton interpreter), not inside torch.compile (set_compile
        fuses the PyTorch form itself)."""
        if p0.dtype not in (torch.float32, torch.bfloat16):
            return False
        from ..kernels._node_switch import node_kernel_usable

        return node_kernel_usable(p0, "E2F_PAIRDOT_KERNEL")

    @torch.jit.unused
    def _pairdot_kernel(self, p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
        from ..kernels.pairdot_triton import pairdot

        # s feeds only lin1: under bf16 autocast the kernel writes it in bf16 itself (bit-identical)
        return pairdot(p0, p1, p2, self.bias, torch.bfloat16 if autocast_dtype(p0) == torch.bfloat16 else None)


class RadialMLP(nn.Module):
    """Linear -> LayerNorm -> SiLU -> Linear -> LayerNorm -> SiLU -> Linear (official ``RadialProfile``).

    ``first_layer_split`` lets callers feed the first linear in pieces (the per-edge radial
    basis, and per-element tables for the two atoms), which is exactly equivalent and avoids
    building the concatenated per-edge input."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.lin0 = nn.Linear(in_features, hidden)
        self.norm0 = nn.LayerNorm(hidden)
        self.lin1 = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.lin2 = nn.Linear(hidden, out_features)

    def tail(self, h0: torch.Tensor) -> torch.Tensor:
        """Everything after the first linear (input: first linear's output, bias included)."""
        return self.lin2(self.hidden(h0))

    def hidden(self, h0: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (before the last linear) from the first linear's output."""
        h = F.silu(self.norm0(h0))
        return F.silu(self.norm1(self.lin1(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.lin0(x))


class EquivariantRMSNorm(nn.Module):
    """``rms_norm_sh``: centre the l=0 row over channels, one RMS over all degrees (each degree
    weighted 1/((2l+1)(lmax+1))), degree-wise affine weight, bias on l = 0 (spec §2.2.4)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(3, channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self._kernel_usable(x):
                return self._kernel(x, None, False)
        return torch.cat(self.parts(x), dim=1)

    def parts(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The normalised features as degree parts ([N, 1, C], [N, 3, C], [N, 5, C]; see SO3Linear.parts)."""
        if not torch.jit.is_scripting():
            if self._kernel_usable(x):
                return list(self._kernel(x, None, True))
        xs = torch.split(x, [1, 3, 5], dim=1)          # (see SO3Linear: split, not slices)
        x0 = xs[0] - xs[0].mean(dim=2, keepdim=True)
        # sum over rows of mean_c(x^2) * row weight: 1/3 for l = 0, 1/9 per l = 1 row, 1/15 per l = 2 row
        nu = (x0.pow(2).mean(dim=2).sum(dim=1) * (1.0 / 3) + xs[1].pow(2).mean(dim=2).sum(dim=1) * (1.0 / 9)
              + xs[2].pow(2).mean(dim=2).sum(dim=1) * (1.0 / 15))
        scale = torch.rsqrt(nu + self.eps)[:, None, None]
        # (scale * weight) first: [N, 1, C], so each part takes one full-size multiply (and its backward keeps
        # no full-size x * scale)
        return [x0 * (scale * self.weight[0]) + self.bias, xs[1] * (scale * self.weight[1]),
                xs[2] * (scale * self.weight[2])]

    @torch.jit.unused
    def _kernel_usable(self, x: torch.Tensor) -> bool:
        """The norm by ``kernels.rmsnorm_triton`` (on by default on CUDA; ``E2F_RMSNORM_KERNEL=0`` opts out): float32
        features on CUDA (or under the Triton interpreter), not inside torch.compile (set_compile fuses the PyTorch
        form itself)."""
        if x.dtype != torch.float32 or x.dim() != 3 or x.shape[1] != 9:
            return False
        from ..kernels._node_switch import node_kernel_usable

        return node_kernel_usable(x, "E2F_RMSNORM_KERNEL")

    @torch.jit.unused
    def _kernel(self, x: torch.Tensor, extra: Optional[torch.Tensor], parts: bool,
                out_dtype: torch.dtype = torch.float32, passthrough: bool = False,
                addend: Optional[torch.Tensor] = None):
        from ..kernels.rmsnorm_triton import rms_norm

        return rms_norm(x, self.weight, self.bias, self.eps, extra, parts, out_dtype,
                        passthrough=passthrough or addend is not None, addend=addend)

    @torch.jit.unused
    def passthrough_usable(self, x: torch.Tensor) -> bool:
        """Whether ``parts_passthrough`` may run: the kernel runs for ``x`` and ``E2F_RMS_RESIDUAL`` is "1"."""
        if not self._kernel_usable(x):
            return False
        from ..kernels.rmsnorm_triton import residual_passthrough_enabled

        return residual_passthrough_enabled()

    @torch.jit.unused
    def addend_usable(self, x: torch.Tensor, a: Optional[torch.Tensor]) -> bool:
        """Whether ``parts_passthrough(x, ..., addend=a)`` may run: ``passthrough_usable(x)``, ``E2F_RMS_ADD`` on
        (the default) and ``a`` float32 or bf16 of x's shape."""
        if a is None or a.shape != x.shape or a.dtype not in (torch.float32, torch.bfloat16):
            return False
        if not self.passthrough_usable(x):
            return False
        from ..kernels.rmsnorm_triton import residual_add_enabled

        return residual_add_enabled()

    @torch.jit.unused
    def parts_passthrough(self, x: torch.Tensor, extra: Optional[torch.Tensor] = None,
                          for_gemm: bool = False,
                          addend: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(x as the norm kernel's passthrough output, the normalised degree parts, ``extra`` added to l = 0): the
        caller sums its residual with the first instead of x, so the residual's gradient reaches the norm's
        backward kernel, which writes dx as the sum of both (``rms_norm(passthrough=True)``; ``passthrough_usable``
        first).  ``for_gemm``: the parts as ``parts_for_gemm`` writes them (bf16 under bf16 autocast).  ``addend``
        (``addend_usable`` first): the norm of x + addend, the sum written by the kernel and returned first instead
        of x."""
        out = self._kernel(x, extra, True, autocast_dtype(x) if for_gemm else torch.float32, True, addend)
        return out[0], list(out[1:])

    @torch.jit.unused
    def parts_for_gemm(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``parts`` for a caller that hands them only to matrix products (the FFN's first SO3 linear): where the
        kernel runs under bf16 autocast it writes them in bf16 itself, rounded as the products' casts would round
        them (bit-identical, one pass less each way); otherwise ``parts``."""
        if self._kernel_usable(x):
            return list(self._kernel(x, None, True, autocast_dtype(x)))
        return self.parts(x)

    @torch.jit.unused
    def with_extra(self, x: torch.Tensor, extra: torch.Tensor) -> Optional[torch.Tensor]:
        """[N, 9, C]: the norm with ``extra`` (C elements, e.g. [1, C]) added to the l = 0 row, in one kernel where
        the kernel runs, else None (the caller adds it to the parts)."""
        if extra.numel() == x.shape[2] and self._kernel_usable(x):
            return self._kernel(x, extra, False)
        return None


class GatedFFN(nn.Module):
    """FFN ``s3``: SO3 linear -> gate (SiLU for l=0, sigmoid gates for l>0 from the l=0 row) -> SO3 linear."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.lin1 = SO3Linear(channels, channels)
        self.gate = nn.Linear(channels, 3 * channels)
        self.lin2 = SO3Linear(channels, channels)
        self.c_silu = C_SILU
        self.c_sigmoid = C_SIGMOID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(torch.split(x, [1, 3, 5], dim=1))

    def parts(self, xs: List[torch.Tensor]) -> torch.Tensor:
        """The FFN of degree parts (see SO3Linear.parts) -> [N, 9, C]: one cat, at the end."""
        C = self.channels
        zs = self.lin1.parts(xs)
        logits = self.gate(zs[0].reshape(zs[0].shape[0], C))
        if not torch.jit.is_scripting():
            if self._gate_kernel_usable(logits, zs[1]):
                return self.lin2.cat_parts(self._gate_kernel(logits, zs[1], zs[2]))
        gs = torch.split(logits, [C, C, C], dim=1)
        y0 = self.c_silu * F.silu(gs[0])
        y1 = self.c_sigmoid * torch.sigmoid(gs[1])[:, None] * zs[1]
        y2 = self.c_sigmoid * torch.sigmoid(gs[2])[:, None] * zs[2]
        return self.lin2.cat_parts([y0[:, None], y1, y2])

    @torch.jit.unused
    def _gate_kernel_usable(self, logits: torch.Tensor, z1: torch.Tensor) -> bool:
        """The gates by ``kernels.gate_triton`` (``E2F_GATE_KERNEL``, on by default on CUDA since session 15): float32
        or bf16 tensors on CUDA (or under the Triton interpreter with the switch set to "1"), not inside
        torch.compile."""
        if logits.dtype not in (torch.float32, torch.bfloat16) or z1.dtype not in (torch.float32, torch.bfloat16):
            return False
        from ..kernels._node_switch import node_kernel_usable

        return node_kernel_usable(logits, "E2F_GATE_KERNEL")

    @torch.jit.unused
    def _gate_kernel(self, logits: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> List[torch.Tensor]:
        from ..kernels.gate_triton import gate

        # the outputs feed only lin2: under bf16 autocast in bf16, else the PyTorch form's dtype
        out = torch.bfloat16 if autocast_dtype(logits) == torch.bfloat16 else None
        return list(gate(logits, z1, z2, self.c_silu, self.c_sigmoid, out))


class _DegreeLinear(torch.autograd.Function):
    """(x0 [N, A], x1 [N, 3, B], x2 [N, 5, D]; w0 [Co, A], w1 [Co, B], w2 [Co, D]; bias [Co] or None) -> y [N, 9, Co]
    with y[:, 0] = x0 w0^T + bias, y[:, 1 + m] = x1[:, m] w1^T, y[:, 4 + m] = x2[:, m] w2^T, each degree's GEMMs
    written in place into y (a strided batched GEMM over m), and their backward read from the strided rows of dy:
    no cat forward, no copies of dy's degree slices backward.  All tensors share one dtype (the caller casts).
    Inputs only (the weights must not require grad); a double backward goes through differentiable ops."""

    @staticmethod
    def forward(ctx, x0, x1, x2, w0, w1, w2, bias):
        ctx.save_for_backward(w0, w1, w2)
        return _degree_linear_forward(x0, x1, x2, w0, w1, w2, bias)

    @staticmethod
    def backward(ctx, dy):
        w0, w1, w2 = ctx.saved_tensors
        nig = ctx.needs_input_grad
        if torch.is_grad_enabled():          # double backward: differentiable ops
            return (dy[:, 0] @ w0 if nig[0] else None, dy[:, 1:4] @ w1 if nig[1] else None,
                    dy[:, 4:9] @ w2 if nig[2] else None, None, None, None, None)
        return (*_degree_linear_backward(dy.to(w0.dtype), w0, w1, w2, nig[:3]), None, None, None, None)


def _degree_linear_forward(x0, x1, x2, w0, w1, w2, bias) -> torch.Tensor:
    """``_DegreeLinear``'s forward: y [N, 9, Co], each degree's GEMMs writing its rows in place."""
    N, Co = x0.shape[0], w0.shape[0]
    y = torch.empty((N, 9, Co), device=x0.device, dtype=x0.dtype)
    if bias is None:
        torch.mm(x0, w0.t(), out=y[:, 0])
    else:
        torch.addmm(bias, x0, w0.t(), out=y[:, 0])
    torch.bmm(x1.transpose(0, 1), w1.t().expand(3, -1, -1), out=y[:, 1:4].transpose(0, 1))
    torch.bmm(x2.transpose(0, 1), w2.t().expand(5, -1, -1), out=y[:, 4:9].transpose(0, 1))
    return y


def _degree_linear_backward(dy, w0, w1, w2, need=(True, True, True)) -> List[Optional[torch.Tensor]]:
    """``_DegreeLinear``'s first-order backward: [dx0 [N, A], dx1 [N, 3, B], dx2 [N, 5, D]] (None where not
    ``need``), read from dy's strided degree rows in place."""
    N = dy.shape[0]
    d0 = d1 = d2 = None
    if need[0]:
        d0 = torch.mm(dy[:, 0], w0)
    if need[1]:
        d1 = torch.empty((N, 3, w1.shape[1]), device=dy.device, dtype=dy.dtype)
        torch.bmm(dy[:, 1:4].transpose(0, 1), w1.expand(3, -1, -1), out=d1.transpose(0, 1))
    if need[2]:
        d2 = torch.empty((N, 5, w2.shape[1]), device=dy.device, dtype=dy.dtype)
        torch.bmm(dy[:, 4:9].transpose(0, 1), w2.expand(5, -1, -1), out=d2.transpose(0, 1))
    return [d0, d1, d2]


class _QKVProject(torch.autograd.Function):
    """The attention's three projections of one input, as one consumer of its degree parts: (x0 [N, C], x1 [N, 3,
    C], x2 [N, 5, C]; wp0, wp1, wp2 [P, C]: the query's and key's first per-degree projections side by side;
    wv0, wv1, wv2 [Cv, C], bias_v [Cv]: the value's ``SO3Linear``) -> (p0 [N, P], p1 [N, 3, P], p2 [N, 5, P], v [N,
    9, Cv]).  Backward: dx_l = dv_l wv_l (the value's GEMMs, as ``_DegreeLinear``) and then += dp_l wp_l as a GEMM
    accumulating into it (beta = 1).  Three consumers of each part (query, key, value) cost autograd two extra passes
    over each part's gradient (read two, write one); here the sum costs one read of dx inside the GEMM.  float32,
    frozen weights (inference: energies and forces); a double backward goes through differentiable ops."""

    @staticmethod
    def forward(ctx, x0, x1, x2, wp0, wp1, wp2, wv0, wv1, wv2, bias_v):
        N = x0.shape[0]
        p0 = torch.mm(x0, wp0.t())
        p1 = torch.mm(x1.reshape(N * 3, -1), wp1.t()).view(N, 3, -1)
        p2 = torch.mm(x2.reshape(N * 5, -1), wp2.t()).view(N, 5, -1)
        v = _degree_linear_forward(x0, x1, x2, wv0, wv1, wv2, bias_v)
        ctx.save_for_backward(wp0, wp1, wp2, wv0, wv1, wv2)
        return p0, p1, p2, v

    @staticmethod
    def backward(ctx, dp0, dp1, dp2, dv):
        wp0, wp1, wp2, wv0, wv1, wv2 = ctx.saved_tensors
        dps, wps, wvs = (dp0, dp1, dp2), (wp0, wp1, wp2), (wv0, wv1, wv2)
        if torch.is_grad_enabled():          # double backward: differentiable ops
            dvs = (None, None, None) if dv is None else (dv[:, 0], dv[:, 1:4], dv[:, 4:9])
            out = []
            for dp, wp, dvl, wv in zip(dps, wps, dvs, wvs):
                terms = [t @ w for t, w in ((dp, wp), (dvl, wv)) if t is not None]
                out.append(sum(terms[1:], terms[0]) if terms else None)
            return (*out, None, None, None, None, None, None, None)
        dx = (_degree_linear_backward(dv.to(wv0.dtype), wv0, wv1, wv2) if dv is not None
              else [None, None, None])
        for i, (dp, wp) in enumerate(zip(dps, wps)):
            if dp is None:
                continue
            dp2d = dp.to(wp.dtype).reshape(-1, wp.shape[0])
            if dx[i] is None:
                dx[i] = torch.mm(dp2d, wp).view(*dp.shape[:-1], wp.shape[1])
            else:
                dx[i].view(-1, wp.shape[1]).addmm_(dp2d, wp)
        return (*dx, None, None, None, None, None, None, None)


def qkv_project(xs: List[torch.Tensor], wp: List[torch.Tensor], wv: torch.Tensor,
                bias_v: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p0 [N, P], p1 [N, 3, P], p2 [N, 5, P], v [N, 9, Cv]) of the degree parts ``xs`` ([N, 1, C], [N, 3, C], [N, 5,
    C]): p_l = x_l wp_l^T, v = the ``SO3Linear`` of weight ``wv`` [3, Cv, C] and bias ``bias_v``, by
    ``_QKVProject`` (one autograd consumer of the parts; see there).  float32 tensors, frozen weights; the caller
    checks (``Attention._qkv_fused_usable``)."""
    N = xs[0].shape[0]
    return _QKVProject.apply(xs[0].reshape(N, -1).contiguous(), xs[1].contiguous(), xs[2].contiguous(),
                             wp[0], wp[1], wp[2], wv[0], wv[1], wv[2], bias_v)


def degree_linear(x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor,
                  w2: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[N, 9, C_out] of a degree-wise linear map of the parts x0 [N, A], x1 [N, 3, B], x2 [N, 5, D] (weights
    w_l [C_out, .], bias on the l = 0 row) by ``_DegreeLinear``: the GEMMs write y's rows in place and the
    backward reads dy's rows in place, where ``torch.cat`` of three GEMM outputs costs a copy forward and a copy of
    each strided gradient slice backward (12 + 12 per step at the V1.5 size, ~2 % of the step on an H200).  For
    frozen weights (inference: energies and forces); None where it does not run (the caller then uses the cat):
    weights that require grad, TorchScript, torch.compile, or the switch ``E2F_DEGREE_LINEAR`` ("1" the default on
    CUDA, "0" off; on the CPU only with "1").  Under bf16 autocast it computes in bf16, as the three GEMMs did."""
    from ..kernels._node_switch import env_switch

    if torch.compiler.is_compiling() or any(t is not None and t.requires_grad for t in (w0, w1, w2, bias)):
        return None
    if not env_switch("E2F_DEGREE_LINEAR", default="1" if x0.is_cuda else "0"):
        return None
    # autocast lowers float32 and keeps inputs already in its dtype (the gate kernel writes bf16 parts under bf16
    # autocast: promoting them to float32 ran the FFN's second linear in float32, at 100k bf16 +3.0 GiB at the peak
    # and ~4 % fewer steps/s, sessions 16-17, found in session 18); it leaves float64 alone
    dt = _autocast_lower(x0) if x0.dtype != torch.float64 else None
    if dt is None:
        dt = torch.promote_types(x0.dtype, w0.dtype)
    x0, x1, x2, w0, w1, w2 = (t.to(dt).contiguous() for t in (x0, x1, x2, w0, w1, w2))
    return _DegreeLinear.apply(x0, x1, x2, w0, w1, w2, None if bias is None else bias.to(dt))


def _autocast_lower(t: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast gives a matrix product on ``t``'s device where it is on (bf16 or float16), else None."""
    dev = t.device.type
    try:                                   # torch >= 2.4
        on, dtype = torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)
    except (TypeError, AttributeError):    # torch 2.3 (setup.py's floor): the per-device functions
        if dev == "cuda":
            on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        elif dev == "cpu":
            on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            return None
    return dtype if on else None


def autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """What autocast makes of a float32 input to a matrix product on ``t``'s device: bf16 under bf16 autocast (the
    model's ``set_precision("bf16")``), else float32.  Kernels whose only consumer is such a product write this
    dtype themselves, rounding as the cast would (Python side only; bit-identical).  ``E2F_BF16_NODE_OUT=0``
    keeps them in float32 (the A/B switch of ``benchmarks/gpu_bf16_out_check.py``)."""
    from ..kernels._node_switch import env_switch

    if not env_switch("E2F_BF16_NODE_OUT"):
        return torch.float32
    return torch.bfloat16 if _autocast_lower(t) == torch.bfloat16 else torch.float32


class _SharedBF16(torch.autograd.Function):
    """x (float32) -> n views of one bf16 copy of it.  The backward adds the n bf16 gradients in float32, as autograd
    does for n separate casts of a non-leaf tensor, so n matrix products under bf16 autocast see the same bits as
    before, and their gradients agree to float32 rounding (the order of the n additions may differ)."""

    @staticmethod
    def forward(ctx, x, n: int):
        y = x.to(torch.bfloat16)
        return tuple([y] + [y.view_as(y) for _ in range(n - 1)])

    @staticmethod
    def backward(ctx, *grads):
        total = None
        for g in grads:
            if g is not None:
                total = g.to(torch.float32, copy=True) if total is None else total.add_(g)
        return total, None


def gemm_input_parts(xs: List[torch.Tensor], n: int) -> List[List[torch.Tensor]]:
    """Degree parts ``xs`` (views, e.g. of a split, or contiguous tensors) for ``n`` consumers that hand each part only
    to a matrix product on its 2-D reshape: n lists of parts, each part contiguous and shared by the n consumers
    (under bf16 autocast one bf16 cast per part, ``_SharedBF16``; otherwise one contiguous float32 copy where the
    part is a view).  Without this each consumer's reshape copied each view part: n copies each way of every part
    (Python side only)."""
    cast = not torch.compiler.is_compiling() and autocast_dtype(xs[0]) == torch.bfloat16
    shared: List[Tuple[torch.Tensor, ...]] = []
    for p in xs:
        if cast and p.dtype == torch.float32:
            shared.append(_SharedBF16.apply(p, n))           # the cast of a view writes a contiguous tensor
        else:
            c = p.contiguous()
            shared.append(tuple(c for _ in range(n)))
    return [[s[i] for s in shared] for i in range(n)]


def envelope(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Smooth cutoff u(x), x = d / cutoff; zero for x >= 1."""
    if kind == "smoothstep":
        u = 1.0 - 10.0 * x ** 3 + 15.0 * x ** 4 - 6.0 * x ** 5
    else:  # official main branch: DimeNet polynomial p = 5, 1 - 21x^5 + 35x^6 - 15x^7, evaluated in the
        # factored form (1-x)^3 (1 + 3x + 6x^2 + 10x^3 + 15x^4): same polynomial, no cancellation near x = 1
        # (fp32 error ~3e-7 instead of ~1e-4 relative there); the Triton kernels use the same form
        y = 1.0 - x
        u = y * y * y * (1.0 + x * (3.0 + x * (6.0 + x * (10.0 + 15.0 * x))))
    return torch.where(x < 1.0, u, torch.zeros_like(u))


def gaussian_rbf(d: torch.Tensor, offsets: torch.Tensor, coeff: float) -> torch.Tensor:
    """exp(coeff * (d - mu_k)^2) -> [E, K]."""
    return torch.exp(coeff * (d[:, None] - offsets[None, :]) ** 2)
