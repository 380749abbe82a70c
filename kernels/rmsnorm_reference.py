"""The equivariant RMS norm (``EquivariantRMSNorm``, spec §2.2.4) in PyTorch: the reference of ``rmsnorm_triton``.

Features x [N, 9, C] (rows: l = 0 | l = 1 x3 | l = 2 x5)::

    xc      = x with its l = 0 row centred over the channels
    nu      = sum_r a_r mean_c(xc[r]^2)          a_r = 1/3 (l = 0), 1/9 (each l = 1 row), 1/15 (each l = 2 row)
    y[r, c] = xc[r, c] / sqrt(nu + eps) * w[l(r), c]   (+ bias[c] + extra[c] on the l = 0 row)

``extra`` is an optional per-system vector added to the l = 0 row after the norm (the block's charge / multiplicity
embedding: ``Block.attn_input``).
"""
from __future__ import annotations

from typing import Optional

import torch

#: per-row weight a_r of the mean square (see the module docstring)
ROW_WEIGHTS = (1.0 / 3,) + (1.0 / 9,) * 3 + (1.0 / 15,) * 5


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y [N, 9, C] of x [N, 9, C], weight [3, C], bias [C] and the optional extra [C] (see the module docstring)."""
    xs = torch.split(x, [1, 3, 5], dim=1)
    x0 = xs[0] - xs[0].mean(dim=2, keepdim=True)
    nu = (x0.pow(2).mean(dim=2).sum(dim=1) * (1.0 / 3) + xs[1].pow(2).mean(dim=2).sum(dim=1) * (1.0 / 9)
          + xs[2].pow(2).mean(dim=2).sum(dim=1) * (1.0 / 15))
    scale = torch.rsqrt(nu + eps)[:, None, None]
    b = bias if extra is None else bias + extra.reshape(-1)
    return torch.cat([x0 * (scale * weight[0]) + b, xs[1] * (scale * weight[1]), xs[2] * (scale * weight[2])], dim=1)
