"""GPU kernels of openmm-e2former (installed as ``openmm_e2former.kernels``).

Public API
----------
``fused_attention(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, *,
                  backend=None, allow_tf32=False, max_degree=None, softmax="official")  ->  U [N, 3, 9, C]``

One attention layer's edge part of E2Former-V2 (QK_alpha logits, envelope-weighted softmax with
``+1e-3`` in the denominator, first-order EAAS aggregation in relative-vector form)::

    d_e = |vec_e|, r_e = vec_e / d_e,  z_e = [phi(d_e); t[i]; s[src_e]],  [g_e; w_e] = fc(z_e)
    a_eh = g_eh <q[i,h], k[src_e,h]> / sqrt(D),   m_ih = max_{e->i} a_eh
    eps_eh = exp(a_eh - m_ih) u(d_e),   alpha_eh = eps_eh w_eh / (sum_{e'->i} eps_e'h + 1e-3)
    U[i, x, m, c] = sum_{e->i} alpha_{e, c mod H} r_e[x] v[src_e, m, c]

Arguments:
    row_ptr   [N+1] int32/int64 CSR pointer; edges sorted by target atom i.
    src       [E] int64 source atom of each edge.
    vec       [E, 3] float32 target-minus-source vector (Angstrom); differentiable.
    q, k      [N, H, D] float32 queries / keys; differentiable.
    v         [N, 9, C] float32 values; channel c belongs to head c mod H; differentiable.
    t, s      [N, T] target / source embeddings.
    fc_params ``FCParams`` (W0, b0, ln0_w, ln0_b, W1, b1, ln1_w, ln1_b, W2, b2; nn.Linear layout
              [out, in]) or a 10-tuple in that order.  W0 acts on [phi (nb); t (T); s (T)].
    mu        [nb] RBF centres (linspace(0, R, nb)); gamma: float (``rbf_gamma(R, nb)``); cutoff: float R.
    backend   "triton_v2" | "triton" | "reference" | None = "auto".  auto: the v2 (register-blocked) Triton
              kernels of ``attention_triton_v2`` when every tensor is on CUDA, triton imports and the shapes
              are supported (v1 if v2 failed to import), else the PyTorch reference.  "triton" selects the
              v1 kernels of ``attention_triton``.  The environment variable ``E2FORMER_ATTENTION_BACKEND``
              (auto | triton_v2 | triton | reference) applies where ``backend`` is None; an explicit Triton
              choice raises if it cannot run.
    allow_tf32  use TF32 tensor cores inside the fused edge MLP of v1 (default: exact fp32 "ieee" dots).
              v2 always uses ieee dots: measured faster than its TF32 variant (see ``V2_IEEE_NOTE``).
    max_degree  upper bound of the in-degree (e.g. max_neighbors); saves one device->host sync.
    softmax   "official" (the official model: +1e-3 added after the max shift, discontinuous when the
              argmax edge changes) or "smooth" (+1e-3 added before any shift: alpha = w u exp(a) /
              (sum u exp(a) + 1e-3)); see ``attention_reference``.  All backends implement both.

``fused_edge_degree(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff, scale=1/23.01, *,
                    backend=None, allow_tf32=False, max_degree=None)  ->  h [N, 9, C]``

Edge-degree embedding (initial node features): ``h[i,m,c] = scale sum_{e->i} Y_{l(m)}(r_e)[m] u(d_e)
RadialProfile_l([phi(d_e); T0[i]; S0[src_e]])[c]`` for l = 0, 1, 2 (``radial_params``: 3 FCParams whose
W2 is [C, hid]; Y in e3nn "component" normalisation).  Backend: ``backend`` if given, else
``E2FORMER_EDGE_DEGREE_BACKEND``, else ``E2FORMER_ATTENTION_BACKEND``, else "auto" (see
``select_edge_degree_backend``).  auto: the v2 edge-degree Triton kernels of ``edge_degree_triton_v2`` (last
Linear at node level, K-chunked dots) when ``vec`` is on CUDA, triton imports and hid, C are powers of two
>= 16 (v1 if v2 failed to import), else the PyTorch reference.  v2 is the default since its first H200 run
(``benchmarks/results/edge_degree_v2_h200.md``): same error vs float64 as v1, fwd+bwd 2-4x faster (100k atoms,
V1.5, K = 32: 214 ms vs 826 ms).  "triton" runs the v1 kernels of ``edge_degree_triton``, "triton_v2" the v2
kernels, "reference" the reference; so ``E2FORMER_ATTENTION_BACKEND=triton`` (when the edge-degree variable
is unset) also selects v1 here.  An explicit Triton choice raises if it cannot run.
The Triton backends compute d/d(vec) in a fused kernel; other gradients use the reference.

Gradients: all inputs are differentiable on both backends.  The Triton backend computes d/d(vec, q, k, v)
in a fused recompute kernel (dk, dv by fp32 atomics); d/d(t, s, mu, fc params) and double backward go
through the reference.

Node-level kernels, each beside its PyTorch reference, on by default on CUDA (the first three since session 14, the
gate since session 15; ``=0`` opts out):
``cg_triton.cg_contract`` (``E2F_CG_KERNEL``: the attention's CG contraction into the per-degree GEMM inputs,
reference ``cg_reference``), ``pairdot_triton.pairdot`` (``E2F_PAIRDOT_KERNEL``: the query / key invariants,
reference ``pairdot_reference``), ``rmsnorm_triton.rms_norm`` (``E2F_RMSNORM_KERNEL``: the equivariant RMS norm,
reference ``rmsnorm_reference``) and ``gate_triton.gate`` (``E2F_GATE_KERNEL``: the gated FFN's gates, reference
``gate_reference``).  The model calls them from ``Attention.node_part``, ``SO3ToScalar.scalars``,
``EquivariantRMSNorm`` / ``Block.attn_input`` and ``GatedFFN.parts``.
"""
from __future__ import annotations

import os

from .attention_reference import (FCParams, attention_reference, gaussian_rbf, polynomial_envelope,
                                  rbf_gamma, edge_mlp, csr_targets, check_softmax, SOFTMAX_MODES)
from .edge_degree_reference import edge_degree_reference, spherical_harmonics_l2, EDGE_DEGREE_SCALE
from ._node_switch import launch_device

_TRITON_ERR = None
try:  # triton is optional (CPU-only machines)
    from . import attention_triton as _attention_triton  # noqa: F401
    from . import edge_degree_triton as _edge_degree_triton  # noqa: F401
    HAS_TRITON = True
except Exception as exc:  # ImportError, or triton present but broken
    _attention_triton = None
    _edge_degree_triton = None
    HAS_TRITON = False
    _TRITON_ERR = exc
_attention_triton_v2 = None
_edge_degree_triton_v2 = None
_ED_V2_ERR = None
if HAS_TRITON:
    try:
        from . import attention_triton_v2 as _attention_triton_v2  # noqa: F401
    except Exception as exc:  # v2 failing to import must not disable v1 (auto then falls back to v1)
        _TRITON_ERR = exc
    try:
        from . import edge_degree_triton_v2 as _edge_degree_triton_v2  # noqa: F401
    except Exception as exc:  # must not disable anything else (edge-degree auto then falls back to v1)
        _ED_V2_ERR = exc

__all__ = ["fused_attention", "attention_reference", "FCParams", "rbf_gamma", "gaussian_rbf",
           "polynomial_envelope", "edge_mlp", "csr_targets", "HAS_TRITON", "select_backend", "SOFTMAX_MODES",
           "fused_edge_degree", "select_edge_degree_backend", "edge_degree_reference", "spherical_harmonics_l2",
           "EDGE_DEGREE_SCALE"]


#: Why v2 is the CUDA default and runs with exact fp32 ("ieee") dots even in TF32 mode.  H100, do_bench
#: medians (``python -m kernels._compile_report --gpu 16384 100000``), fwd / fwd+bwd in ms; v1 and v2
#: both within 1e-5 relative error of the float64 reference at N = 2000:
#:   V1.5 shapes (C 256, H 128, hid 128, nb 256, K 32), N = 16384:
#:     v1 fp32 32.9 / 119.6   v1 tf32 16.2 / 81.2   v2 fp32 (ieee) 15.1 / 68.1   v2 tf32 19.8 / 81.9
#:   V1.5 shapes, N = 100000:
#:     v1 fp32 200.0 / 745.6  v1 tf32 102.9 / 511.4  v2 fp32 91.1 / 419.5       v2 tf32 123.0 / 505.7
#:   appA shapes (H 16, K 64), N = 16384:
#:     v1 fp32 32.4 / 91.3    v1 tf32 35.9 / 117.9   v2 fp32 35.2 / 84.7
V2_IEEE_NOTE = "v2 runs with exact fp32 dots: faster than v2 TF32 and than v1 in either precision (H100)"


def select_backend(q, v, fc_params, backend=None, *, _ok=None) -> str:
    """Return "triton_v2", "triton" or "reference" for these inputs (see ``fused_attention``).

    ``_ok`` (bool) replaces the "CUDA tensors and supported shapes" test (tests without CUDA)."""
    backend = backend or os.environ.get("E2FORMER_ATTENTION_BACKEND", "auto").lower()
    if backend == "reference":
        return "reference"
    if _ok is not None:
        ok = HAS_TRITON and _ok
    else:
        ok = HAS_TRITON and v.is_cuda and q.is_cuda and _attention_triton.triton_supported(q, v, fc_params)
    return _resolve_backend(backend, ok, "", _attention_triton_v2 is not None,
                            f"triton_v2 backend requested but triton is unavailable: {_TRITON_ERR}")


def _resolve_backend(backend: str, ok: bool, label: str, v2_loaded: bool, v2_missing: str) -> str:
    """The choice shared by both kernels once ``ok`` (Triton usable for these inputs) is known: an explicit
    Triton name must be runnable (or run under the interpreter), "auto" takes v2, else v1, where ``ok``, and
    the reference elsewhere.  ``label`` prefixes the messages; ``v2_missing``: the error when v2 is asked for
    but its module did not import."""
    if backend in ("triton", "triton_v2"):
        if not HAS_TRITON:
            raise RuntimeError(f"{label}{backend} backend requested but triton is unavailable: {_TRITON_ERR}")
        if backend == "triton_v2" and not v2_loaded:
            raise RuntimeError(v2_missing)
        if not (ok or os.environ.get("TRITON_INTERPRET") == "1"):
            raise RuntimeError(f"{label}{backend} backend requested but inputs are not on CUDA or shapes unsupported")
        return backend
    if backend != "auto":
        raise ValueError(f"unknown {label}backend {backend!r}")
    if not ok:
        return "reference"
    return "triton_v2" if v2_loaded else "triton"


def fused_attention(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, *,
                    backend=None, allow_tf32=False, max_degree=None, softmax="official", table=None):
    """Attention edge part -> U [N, 3, 9, C]; see the module docstring.  ``table``: a radial table of the edge
    MLP (``attention_reference.table_lookup``; experimental, inference only), read instead of the MLP by the
    reference and the v2 kernels (v1 has no table path: it falls back to the reference)."""
    check_softmax(softmax)
    chosen = select_backend(q, v, fc_params, backend)
    if chosen == "triton_v2":   # allow_tf32 ignored on purpose: see V2_IEEE_NOTE
        # the launch on the tensors' device (a model on cuda:1 while cuda:0 is current); the backward runs on the
        # autograd engine's thread of that device, which makes it current
        with launch_device(q.device):
            return _attention_triton_v2.attention_triton_v2(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma,
                                                            cutoff, allow_tf32=False, max_degree=max_degree,
                                                            softmax=softmax, table=table)
    if table is not None:
        return attention_reference(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, softmax, table)
    if chosen == "triton":
        with launch_device(q.device):
            return _attention_triton.attention_triton(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma,
                                                      cutoff, allow_tf32=allow_tf32, max_degree=max_degree,
                                                      softmax=softmax)
    return attention_reference(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, softmax)


def select_edge_degree_backend(vec, radial_params, backend=None, *, _ok=None) -> str:
    """Return "triton_v2", "triton" or "reference" for ``fused_edge_degree`` (see the module docstring).

    ``backend`` None: ``E2FORMER_EDGE_DEGREE_BACKEND``, else ``E2FORMER_ATTENTION_BACKEND``, else "auto".
    ``_ok`` (bool) replaces the "vec on CUDA and hid, C powers of two >= 16" test (tests without CUDA)."""
    backend = (backend or os.environ.get("E2FORMER_EDGE_DEGREE_BACKEND")
               or os.environ.get("E2FORMER_ATTENTION_BACKEND") or "auto").lower()
    if backend == "reference":
        return "reference"
    if _ok is None:
        p0 = FCParams(*radial_params[0])
        hid, C = p0.W0.shape[0], p0.W2.shape[0]
        _ok = vec.is_cuda and hid >= 16 and (hid & (hid - 1)) == 0 and C >= 16 and (C & (C - 1)) == 0
    return _resolve_backend(backend, HAS_TRITON and bool(_ok), "edge-degree ", _edge_degree_triton_v2 is not None,
                            f"edge-degree triton_v2 backend requested but it failed to import: {_ED_V2_ERR}")


def fused_edge_degree(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff,
                      scale=EDGE_DEGREE_SCALE, *, backend=None, allow_tf32=False, max_degree=None, table=None):
    """Edge-degree embedding -> h [N, 9, C]; see the module docstring.  ``table``: a radial table of the three
    MLPs' last hidden layers (``edge_degree_reference``; experimental, inference), read by the reference and the
    v2 kernels (v1 has no table path: it falls back to the reference)."""
    chosen = select_edge_degree_backend(vec, radial_params, backend)
    if chosen == "triton_v2":
        with launch_device(vec.device):   # see fused_attention
            return _edge_degree_triton_v2.edge_degree_triton_v2(row_ptr, src, vec, T0, S0, radial_params, mu,
                                                                gamma, cutoff, scale, allow_tf32=allow_tf32,
                                                                max_degree=max_degree, table=table)
    if table is not None:
        return edge_degree_reference(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff, scale, table)
    if chosen == "triton":
        with launch_device(vec.device):
            return _edge_degree_triton.edge_degree_triton(row_ptr, src, vec, T0, S0, radial_params, mu, gamma,
                                                          cutoff, scale, allow_tf32=allow_tf32,
                                                          max_degree=max_degree)
    return edge_degree_reference(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff, scale)
