"""The gated FFN's gates (``GatedFFN.parts``, between its two SO(3) linears) in PyTorch: the reference of
``gate_triton``.

From the gate logits g [N, 3C] = [g0 | g1 | g2] (one linear of the l = 0 row) and the first linear's degree parts
z1 [N, 3, C], z2 [N, 5, C]::

    y0 = c_silu * silu(g0)                    [N, 1, C]
    y1 = c_sigmoid * sigmoid(g1) * z1_m       [N, 3, C]   (m = 0, 1, 2)
    y2 = c_sigmoid * sigmoid(g2) * z2_m       [N, 5, C]   (m = 0 ... 4)

(The l = 0 part of the first linear only feeds the gate logits: its silu-gated row is y0.)
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def gate_reference(g: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, c_silu: float,
                   c_sigmoid: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y0 [N, 1, C], y1 [N, 3, C], y2 [N, 5, C]) of g [N, 3C], z1 [N, 3, C], z2 [N, 5, C] (see the module
    docstring)."""
    C = z1.shape[2]
    g0, g1, g2 = torch.split(g, [C, C, C], dim=1)
    y0 = (c_silu * F.silu(g0))[:, None]
    y1 = c_sigmoid * torch.sigmoid(g1)[:, None] * z1
    y2 = c_sigmoid * torch.sigmoid(g2)[:, None] * z2
    return y0, y1, y2
