"""Plain-PyTorch ground truth for the E2Former-V2 attention edge part (QK_alpha, first-order EAAS).

Everything here is written for clarity, not speed: it materialises per-edge tensors of size E x hid,
E x H and E x 3 x 9 x C.  It is differentiable to every input (also twice) and is the reference the
fused Triton kernel (``attention_triton.py``) is tested against.

Notation (one attention layer, edges in CSR order by target atom ``i``):

    d_e   = |vec_e|,  r_e = vec_e / d_e                      (vec = target - source)
    z_e   = [phi(d_e) ; t[i] ; s[j]]                         (j = src[e])
    [g_e ; w_e] = fc(z_e)                                    (Linear-LN-SiLU-Linear-LN-SiLU-Linear)
    a_eh  = g_eh <q_ih, k_jh> / sqrt(D)
    m_ih  = max_{e->i} a_eh
    eps_eh = exp(a_eh - m_ih) u(d_e)
    alpha_eh = eps_eh w_eh / (sum_{e'->i} eps_e'h + 1e-3)
    U[i, x, m, c] = sum_{e->i} alpha_{e, c mod H} r_e[x] v[j, m, c]

Softmax variants (``softmax=``):

* ``"official"`` (above, the official model): the +1e-3 is added AFTER the max shift, so alpha depends on
  which edge holds the maximum logit and jumps when that changes (e.g. an edge entering the cutoff sphere
  with a large logit), although u(d) -> 0 at the cutoff.
* ``"smooth"`` (for our own models): the +1e-3 is added BEFORE any shift,
  ``alpha_eh = w_eh u(d_e) exp(a_eh) / (sum_{e'->i} u(d_e') exp(a_e'h) + 1e-3)``, a smooth function of
  the logits.  Evaluated as ``eps_eh = exp(a_eh - c_ih) u(d_e)``,
  ``alpha_eh = eps_eh w_eh / (sum eps + exp(ln(1e-3) - c_ih))`` with ``c_ih = max(m_ih, ln 1e-3)``: the
  value does not depend on ``c`` (no gradient flows through it), ``exp(a - c) <= 1`` and
  ``exp(ln(1e-3) - c) <= 1`` never overflow (for very negative logits the eps term dominates and alpha -> 0).
  The denominator can only be exactly 0 when every term underflowed (all u = 0 and c > ~80 in float32):
  then every eps is 0 too and it is replaced by 1, giving the limit alpha = 0 without 0/0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

SOFTMAX_EPS = 1e-3   # the "+1e-3" in the softmax denominator
LOG_SOFTMAX_EPS = math.log(SOFTMAX_EPS)
SOFTMAX_MODES = ("official", "smooth")
LN_EPS = 1e-5        # LayerNorm epsilon inside the edge MLP


class FCParams(NamedTuple):
    """Parameters of the edge MLP ``fc`` (nn.Linear convention: weight [out, in]).

    fc = Linear(nb+2T -> hid) -> LayerNorm(hid) -> SiLU -> Linear(hid -> hid) -> LayerNorm(hid) -> SiLU
         -> Linear(hid -> 2H)
    The input of the first Linear is ordered [phi(d) (nb) ; t[i] (T) ; s[src] (T)].
    """
    W0: torch.Tensor     # [hid, nb + 2T]
    b0: torch.Tensor     # [hid]
    ln0_w: torch.Tensor  # [hid]
    ln0_b: torch.Tensor  # [hid]
    W1: torch.Tensor     # [hid, hid]
    b1: torch.Tensor     # [hid]
    ln1_w: torch.Tensor  # [hid]
    ln1_b: torch.Tensor  # [hid]
    W2: torch.Tensor     # [2H, hid]
    b2: torch.Tensor     # [2H]

    @staticmethod
    def from_radial_profile(net: torch.nn.Module) -> "FCParams":
        """Build from an ``nn.Sequential`` laid out like RadialProfile (net.0, .1, .3, .4, .6)."""
        return FCParams(net[0].weight, net[0].bias, net[1].weight, net[1].bias,
                        net[3].weight, net[3].bias, net[4].weight, net[4].bias,
                        net[6].weight, net[6].bias)

    @staticmethod
    def random(nb: int, T: int, hid: int, H: int, *, dtype=torch.float32, device=None,
               generator: torch.Generator | None = None, scale: float = 1.0) -> "FCParams":
        """Random parameters with nn.Linear-like scales (for tests and benchmarks)."""
        def rn(*shape, std=1.0):
            return torch.randn(*shape, dtype=dtype, generator=generator).to(device) * std
        nin = nb + 2 * T
        return FCParams(
            rn(hid, nin, std=scale / math.sqrt(nin)), rn(hid, std=0.1),
            1.0 + rn(hid, std=0.1), rn(hid, std=0.1),
            rn(hid, hid, std=scale / math.sqrt(hid)), rn(hid, std=0.1),
            1.0 + rn(hid, std=0.1), rn(hid, std=0.1),
            rn(2 * H, hid, std=scale / math.sqrt(hid)), rn(2 * H, std=0.1))


def rbf_gamma(cutoff: float, nb: int) -> float:
    """gamma = -0.5 / (2 Delta)^2 with Delta = R / (nb - 1)  (GaussianSmearing, basis_width_scalar=2)."""
    delta = cutoff / (nb - 1)
    return -0.5 / (2.0 * delta) ** 2


def gaussian_rbf(d: torch.Tensor, mu: torch.Tensor, gamma: float) -> torch.Tensor:
    """phi_k(d) = exp(gamma (d - mu_k)^2)  ->  [E, nb]."""
    return torch.exp(gamma * (d[:, None] - mu[None, :]) ** 2)


def polynomial_envelope(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """u(d) = 1 - 21 x^5 + 35 x^6 - 15 x^7 for x = d/R < 1, else 0 (DimeNet envelope, p = 5).

    Evaluated in the algebraically identical factored form (1-x)^3 (1 + 3x + 6x^2 + 10x^3 + 15x^4):
    the expanded form loses all relative precision near the cutoff in fp32 (terms of size ~35 cancel to
    u ~ 1e-5), which made fp32 results of atoms whose edges all lie near R wrong by ~1e-4 relative.
    """
    x = d / cutoff
    omx = torch.clamp((cutoff - d) / cutoff, min=0.0)   # (R-d) is exact near R (Sterbenz)
    u = omx ** 3 * (1.0 + x * (3.0 + x * (6.0 + x * (10.0 + 15.0 * x))))
    return torch.where(x < 1.0, u, torch.zeros_like(u))


def edge_mlp(z: torch.Tensor, p: FCParams) -> torch.Tensor:
    """fc(z): Linear -> LN -> SiLU -> Linear -> LN -> SiLU -> Linear."""
    hid = p.W0.shape[0]
    h = F.silu(F.layer_norm(F.linear(z, p.W0, p.b0), (hid,), p.ln0_w, p.ln0_b, LN_EPS))
    h = F.silu(F.layer_norm(F.linear(h, p.W1, p.b1), (hid,), p.ln1_w, p.ln1_b, LN_EPS))
    return F.linear(h, p.W2, p.b2)


def csr_targets(row_ptr: torch.Tensor, num_edges: int) -> torch.Tensor:
    """Target atom index of every edge from the CSR row pointer  ->  [E] int64."""
    n = row_ptr.numel() - 1
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    return torch.repeat_interleave(torch.arange(n, device=row_ptr.device), counts, output_size=num_edges)


def check_softmax(softmax: str) -> bool:
    """Validate a softmax mode name; True for "smooth"."""
    if softmax not in SOFTMAX_MODES:
        raise ValueError(f"softmax must be one of {SOFTMAX_MODES}, got {softmax!r}")
    return softmax == "smooth"


def softmax_weights(a, u, w, tgt, N, softmax="official"):
    """alpha [E, H] from logits a [E, H], envelope u [E], edge weights w [E, H] and the target of every
    edge (see the module docstring for both modes).  Atoms without edges simply have no rows."""
    smooth = check_softmax(softmax)
    E, H = a.shape
    m = torch.full((N, H), -torch.inf, dtype=a.dtype, device=a.device)
    m = m.scatter_reduce(0, tgt[:, None].expand(E, H), a, reduce="amax", include_self=True)
    if smooth:
        c = m.detach().clamp_min(LOG_SOFTMAX_EPS)           # only a numerical shift: no gradient
        eps = torch.exp(a - c[tgt]) * u[:, None]
        denom = torch.zeros((N, H), dtype=a.dtype, device=a.device).index_add(0, tgt, eps) \
            + torch.exp(LOG_SOFTMAX_EPS - c)
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    else:
        eps = torch.exp(a - m[tgt]) * u[:, None]
        denom = torch.zeros((N, H), dtype=a.dtype, device=a.device).index_add(0, tgt, eps) + SOFTMAX_EPS
    return eps * w / denom[tgt]


def table_lookup(table, tgt, src, d):
    """The edge MLP [E, F] read from a radial table (``E2FormerV2.set_radial_tables``): ``table`` = (coef
    [P * P * M, 4, F] per-interval cubic coefficients, slot_t / slot_s (each target / source atom's element index
    among the P tabulated ones: the same per-atom array, or the target rows of a slice of atoms and all sources),
    P, M, h); edge e (target tgt, source src, length d; d clamped to [0, M h]) reads row
    (slot_t[tgt] P + slot_s[src]) M + k, k = floor(d / h) clamped to [0, M - 1], at t = (d - k h) / h:
    c0 + t (c1 + t (c2 + t c3)).  Differentiable in d only (a table is frozen)."""
    coef, slot_t, slot_s, P, M, h = table
    d = torch.clamp(d, 0.0, M * h)       # beyond the grid (padding, past the cutoff: enveloped to 0): its end
    k = torch.clamp(torch.floor(d.detach() / h), 0, M - 1)
    tt = ((d - k * h) / h)[:, None]
    row = (slot_t.long()[tgt] * P + slot_s.long()[src]) * M + k.long()
    c = coef.index_select(0, row).to(d.dtype)
    return c[:, 0] + tt * (c[:, 1] + tt * (c[:, 2] + tt * c[:, 3]))


def attention_reference(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, softmax="official",
                        table=None):
    """Reference attention edge part.  Returns U [N, 3, 9, C] (dtype of v).

    Args:
        row_ptr: [N+1] int32/int64 CSR pointer (edges sorted by target atom).
        src:     [E] int64 source atom of each edge.
        vec:     [E, 3] target-minus-source vectors.
        q, k:    [N, H, D] queries / keys (key of the source atom is used).
        v:       [N, 9, C] values (of the source atom); channel c uses head c mod H.
        t, s:    [N, T] target / source embeddings.
        fc_params: FCParams (or a 10-tuple in the same order).
        mu:      [nb] RBF centres; gamma: float RBF exponent (negative); cutoff: float R.
        softmax: "official" (default) or "smooth" (see the module docstring).
        table:   None, or a radial table of the edge MLP (see :func:`table_lookup`), read instead of the MLP.
    """
    p = FCParams(*fc_params)
    N, H, D = q.shape
    C = v.shape[-1]
    E = src.numel()
    tgt = csr_targets(row_ptr, E)

    d = torch.linalg.vector_norm(vec, dim=-1)                    # [E]
    rhat = vec / d[:, None]                                       # [E, 3]
    if table is not None:
        out = table_lookup(table, tgt, src, d)                    # [E, 2H]
    else:
        z = torch.cat([gaussian_rbf(d, mu, gamma), t[tgt], s[src]], dim=-1)
        out = edge_mlp(z, p)                                      # [E, 2H]
    g, w = out[:, :H], out[:, H:]

    a = g * (q[tgt] * k[src]).sum(-1) / math.sqrt(D)             # [E, H]
    alpha = softmax_weights(a, polynomial_envelope(d, cutoff), w, tgt, N, softmax)   # [E, H]

    head_of_channel = torch.arange(C, device=v.device) % H
    alpha_c = alpha[:, head_of_channel]                           # [E, C]
    v_src = v[src]                                                # [E, 9, C]
    U = []
    for x in range(3):                                            # one Cartesian component at a time
        msg = (alpha_c * rhat[:, x, None])[:, None, :] * v_src    # [E, 9, C]
        U.append(torch.zeros((N, 9, C), dtype=msg.dtype, device=msg.device).index_add(0, tgt, msg))
    return torch.stack(U, dim=1)                                  # [N, 3, 9, C]


#: positions of the differentiable inputs of the fused attention autograd Functions:
#: (row_ptr, src, vec, q, k, v, t, s, mu, gamma, cutoff, allow_tf32, max_degree, softmax, *fc)
FUSED_N_FIXED = 14


def needs_reference_backward(needs_input_grad) -> bool:
    """True when a fused kernel's backward must go through the reference: double backward (grad mode on),
    or gradients for t, s, mu or the MLP parameters (training), which the fused backward does not compute."""
    nig = needs_input_grad
    return bool(torch.is_grad_enabled() or nig[6] or nig[7] or nig[8] or any(nig[FUSED_N_FIXED:]))


def reference_backward(needs_input_grad, dU, row_ptr, src, vec, q, k, v, t, s, mu, fc, gamma, cutoff,
                       softmax="official"):
    """Gradients of the fused attention's inputs by autograd through :func:`attention_reference`
    (the training / double-backward path of the Triton Functions). Returns the full tuple of grads."""
    nig = needs_input_grad
    grads = [None] * (FUSED_N_FIXED + len(fc))
    inputs = {2: vec, 3: q, 4: k, 5: v, 6: t, 7: s, 8: mu}
    for n, x in enumerate(fc):
        inputs[FUSED_N_FIXED + n] = x
    wanted = [idx for idx in inputs if nig[idx]]
    grad_mode = torch.is_grad_enabled()
    with torch.enable_grad():
        if not grad_mode:
            # first-order backward: recompute on fresh leaves. Differentiating the saved inputs
            # themselves (they belong to the outer graph) gave wrong d/d(vec, q, k, v) whenever
            # parameters also required grad (forces off by ~1 eV/Å in the model).
            inputs = {i_: x.detach().requires_grad_(bool(nig[i_])) for i_, x in inputs.items()}
        out = attention_reference(row_ptr, src, inputs[2], inputs[3], inputs[4], inputs[5], inputs[6], inputs[7],
                                  FCParams(*[inputs[FUSED_N_FIXED + n] for n in range(len(fc))]), inputs[8],
                                  gamma, cutoff, softmax)
        res = torch.autograd.grad(out, [inputs[i_] for i_ in wanted], dU, create_graph=grad_mode,
                                  allow_unused=True)
    for idx, gr in zip(wanted, res):
        grads[idx] = gr if gr is not None else torch.zeros_like(inputs[idx])
    return tuple(grads)
