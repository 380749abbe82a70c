"""Plain-PyTorch reference of the E2Former-V2 edge-degree embedding (initial node features).

    z_e    = [phi(d_e) (nb) ; T0[i] (T0) ; S0[src_e] (T0)]
    a_e^l  = RadialProfile_l(z_e) * u(d_e)                  l = 0, 1, 2   ([E, C] each)
    h[i, m, c] = (1/23.01) sum_{e->i} Y_{l(m)}(r_e)[m] a_e^{l(m)}[c]      -> [N, 9, C]

RadialProfile_l = Linear(nb+2T0 -> hid) -> LN -> SiLU -> Linear(hid -> hid) -> LN -> SiLU -> Linear(hid -> C),
parameters as ``FCParams`` (W2 is [C, hid]).  Y: e3nn "component" normalisation, rows
0 -> l0; 1..3 -> l1 (sqrt3 (x, y, z)); 4..8 -> l2.
"""
from __future__ import annotations

import math

import torch

from .attention_reference import (FCParams, csr_targets, edge_mlp, gaussian_rbf, polynomial_envelope,
                                  table_lookup)

EDGE_DEGREE_SCALE = 1.0 / 23.01
L_OF_M = (0, 1, 1, 1, 2, 2, 2, 2, 2)


def spherical_harmonics_l2(rhat: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics l = 0..2, e3nn 'component' normalisation, on unit vectors -> [E, 9]."""
    x, y, z = rhat.unbind(-1)
    s3, s5, s15 = math.sqrt(3.0), math.sqrt(5.0), math.sqrt(15.0)
    return torch.stack([
        torch.ones_like(x),
        s3 * x, s3 * y, s3 * z,
        s15 * x * z, s15 * x * y, s5 * (y * y - 0.5 * (x * x + z * z)), s15 * y * z, 0.5 * s15 * (z * z - x * x),
    ], dim=-1)


def edge_degree_reference(row_ptr, src, vec, T0, S0, radial_params, mu, gamma, cutoff,
                          scale: float = EDGE_DEGREE_SCALE, table=None):
    """Edge-degree embedding -> [N, 9, C].  ``radial_params``: 3 FCParams (l = 0, 1, 2).  ``table``: None, or
    a radial table (``attention_reference.table_lookup``) of the three MLPs' last hidden layers x2_l
    ([.., 3 hid], l-major), read instead of the MLPs up to their last Linear (experimental, inference)."""
    N = row_ptr.numel() - 1
    E = src.numel()
    tgt = csr_targets(row_ptr, E)
    d = torch.linalg.vector_norm(vec, dim=-1)
    rhat = vec / d[:, None]
    u = polynomial_envelope(d, cutoff)[:, None]
    Y = spherical_harmonics_l2(rhat)                                   # [E, 9]
    if table is not None:
        x2 = table_lookup(table, tgt, src, d)                           # [E, 3 hid]
        ps_ = [FCParams(*p) for p in radial_params]
        hid = ps_[0].W0.shape[0]
        a = [torch.nn.functional.linear(x2[:, l * hid:(l + 1) * hid], p.W2, p.b2) * u for l, p in enumerate(ps_)]
    else:
        z = torch.cat([gaussian_rbf(d, mu, gamma), T0[tgt], S0[src]], dim=-1)
        a = [edge_mlp(z, FCParams(*p)) * u for p in radial_params]      # 3 x [E, C]
    msg = torch.stack([Y[:, m, None] * a[L_OF_M[m]] for m in range(9)], dim=1)   # [E, 9, C]
    C = msg.shape[-1]
    return scale * torch.zeros((N, 9, C), dtype=msg.dtype, device=msg.device).index_add(0, tgt, msg)
