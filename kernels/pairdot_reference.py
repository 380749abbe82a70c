"""The per-degree invariants of the query / key projection (``SO3ToScalar.scalars``) in PyTorch: the reference of
``pairdot_triton``.

Each degree's linear gives both halves side by side, a_l [N, 2l+1, 2h] = [x_l W_l | x_l W2_l]; the invariants are::

    s0 = (a0[:, :h] + bias) * a0[:, h:]                 l = 0  (a0 [N, 2h])
    s1 = sum_m a1[:, m, :h] * a1[:, m, h:]              l = 1  (a1 [N, 3, 2h])
    s2 = sum_m a2[:, m, :h] * a2[:, m, h:]              l = 2  (a2 [N, 5, 2h])
    s  = [s0 | s1 | s2]   [N, 3h]
"""
from __future__ import annotations

import torch


def pairdot_reference(a0: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """s [N, 3h] of a0 [N, 2h], a1 [N, 3, 2h], a2 [N, 5, 2h] and bias [h] (see the module docstring)."""
    h = a0.shape[1] // 2
    s0 = (a0[:, :h] + bias) * a0[:, h:]
    s1 = (a1[:, :, :h] * a1[:, :, h:]).sum(dim=1)
    s2 = (a2[:, :, :h] * a2[:, :, h:]).sum(dim=1)
    return torch.cat([s0, s1, s2], dim=1)
