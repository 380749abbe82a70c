"""The SO(3) pieces: spherical harmonics, Wigner rotation to +y, and the linear CG form of EAAS."""
import math

import torch

from openmm_e2former.model import so3


def test_spherical_harmonics_component_normalisation():
    u = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    Y = so3.spherical_harmonics(u)
    assert torch.allclose(Y[:, 0], torch.ones(50, dtype=torch.float64))
    assert torch.allclose(Y[:, 1:4], math.sqrt(3) * u)  # l=1 rows are Cartesian (x, y, z)
    assert torch.allclose((Y[:, 4:9] ** 2).sum(1), torch.full((50,), 5.0, dtype=torch.float64))


def test_wigner_maps_vector_to_y_and_is_orthogonal():
    p = torch.randn(20, 3, dtype=torch.float64) * 4
    D0, D1, D2 = so3.wigner_to_y(p)
    out = torch.einsum("bij,bj->bi", D1, p)
    assert torch.allclose(out[:, [0, 2]], torch.zeros(20, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out[:, 1], p.norm(dim=1))
    eye5 = torch.eye(5, dtype=torch.float64).expand(20, 5, 5)
    assert torch.allclose(D2 @ D2.transpose(1, 2), eye5, atol=1e-12)


def test_so2_route_equals_linear_cg_form():
    """TP(v, r) by rotation + sparse gather equals sum_k r_k CG_k v (the exact identity behind eaas='relative')."""
    torch.manual_seed(0)
    v = torch.randn(30, 9, 7, dtype=torch.float64)
    r = torch.randn(30, 3, dtype=torch.float64) * 3
    a = so3.tp_first_order_so2(v, r)
    b = torch.einsum("bk,krm,bmc->brc", r, so3.first_order_cg(torch.float64), v)
    assert (a - b).abs().max() < 1e-12 * a.abs().max()


def test_cg_is_equivariant():
    """Rotating both inputs rotates the output: D_out TP(v, r) = TP(D v, R r)."""
    torch.manual_seed(1)
    v = torch.randn(1, 9, 4, dtype=torch.float64)
    r = torch.randn(1, 3, dtype=torch.float64)
    blocks = so3.wigner_to_y(torch.randn(1, 3, dtype=torch.float64))
    R = blocks[1][0]  # the l=1 block is the Cartesian rotation
    rot9 = torch.block_diag(blocks[0][0], blocks[1][0], blocks[2][0])
    rot20 = torch.block_diag(blocks[0][0], *([blocks[1][0]] * 3), *([blocks[2][0]] * 2))
    cg = so3.first_order_cg(torch.float64)
    tp = torch.einsum("bk,krm,bmc->brc", r, cg, v)
    tp_rot = torch.einsum("bk,krm,bmc->brc", r @ R.T, cg, rot9 @ v)
    assert torch.allclose(rot20 @ tp, tp_rot, atol=1e-12)
