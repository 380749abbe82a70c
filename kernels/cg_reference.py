"""The attention's Clebsch-Gordan contraction in PyTorch: the reference of ``cg_triton``.

After the fused attention kernel, each atom's U [3, 9, C] (``U[k, m, c] = sum_e alpha r_hat[k] v_j[m, c]``) becomes
the tensor-product rows T [20, C] = sum_{k, m} CG[k, r, m] U[k, m, c] (rows: l = 0 | three l = 1 paths of 3 |
two l = 2 paths of 5), which the output GEMMs then read per degree with the paths side by side on the channel
axis::

    T0 [N, C]       = T[:, 0]
    T1 [N, 3, 3 C]  = [T[:, 1:4] | T[:, 4:7] | T[:, 7:10]]      (channel index p C + c for path p)
    T2 [N, 5, 2 C]  = [T[:, 10:15] | T[:, 15:20]]

This is what ``Attention.node_part`` computes with an einsum and two cats; the kernel writes the three tensors
directly.
"""
from __future__ import annotations

import torch

#: rows of T per output degree group (see the module docstring)
T_SPLIT = (1, 3, 3, 3, 5, 5)


def cg_matrix(cg: torch.Tensor) -> torch.Tensor:
    """The [3, 20, 9] CG tensor ("krm") as the [20, 27] matrix CGM[r, 9 k + m] = CG[k, r, m]."""
    return cg.permute(1, 0, 2).reshape(cg.shape[1], cg.shape[0] * cg.shape[2])


def cg_contract_reference(U: torch.Tensor, cg: torch.Tensor):
    """(T0 [N, C], T1 [N, 3, 3C], T2 [N, 5, 2C]) of U [N, 3, 9, C] and CG [3, 20, 9]."""
    N, C = U.shape[0], U.shape[3]
    T = torch.einsum("krm,nkmc->nrc", cg.to(U.dtype), U)
    Ts = torch.split(T, T_SPLIT, dim=1)
    return (Ts[0].reshape(N, C), torch.cat([Ts[1], Ts[2], Ts[3]], dim=2), torch.cat([Ts[4], Ts[5]], dim=2))


def cg_adjoint_reference(T0: torch.Tensor, T1: torch.Tensor, T2: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
    """dU [N, 3, 9, C] of upstream gradients (dT0, dT1, dT2): the adjoint (transpose) of cg_contract_reference."""
    N, C = T0.shape
    T = torch.cat([T0[:, None], *torch.split(T1, C, dim=2), *torch.split(T2, C, dim=2)], dim=1)   # [N, 20, C]
    return torch.einsum("krm,nrc->nkmc", cg.to(T.dtype), T)
