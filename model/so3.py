"""SO(3) helpers for E2Former-V2: real spherical harmonics, Wigner rotations and the
first-order (l2 = 1) Clebsch–Gordan product used by the attention (EAAS).

Conventions (identical to the official model, see shared/docs/e2former_v2_spec.md §2.6):

* Features of one node are stored as 9 rows: row 0 is l = 0, rows 1–3 are l = 1 and rows 4–8
  are l = 2, in e3nn's real basis with **y as the polar axis**.  The l = 1 rows are exactly the
  Cartesian components (x, y, z).
* ``TP(v, r)`` couples a feature ``v`` (l1 = 0, 1, 2) with a vector ``r`` (l2 = 1) into
  l3 = 0, 1, 2, giving 20 output rows in six paths::

      rows  0      path 1 -> 0
      rows  1-3    path 0 -> 1
      rows  4-6    path 1 -> 1
      rows  7-9    path 2 -> 1
      rows 10-14   path 1 -> 2
      rows 15-19   path 2 -> 2

  The official code evaluates it in the SO(2) form of the paper: rotate ``v`` with the Wigner
  matrix that takes ``r`` onto +y, where the product is a sparse gather with fixed weights
  (``SO2_SOURCE_ROWS`` / ``SO2_WEIGHTS``), then rotate back and multiply by ``|r|``.

Because the product is linear in ``r`` we can also write ``TP(v, r) = sum_k r[k] * CG[k] @ v``
with three constant 20x9 matrices ``CG[k]``.  :func:`first_order_cg` derives them *from the
SO(2) definition itself* (Wigner matrices of the three unit vectors), so both forms are the
same function by construction; ``tests/test_so3.py`` checks the linearity numerically.
"""

import math
from functools import lru_cache

import torch

# --- constant tables ---------------------------------------------------------------------

#: degree of each of the 9 feature rows
ROW_DEGREE = (0, 1, 1, 1, 2, 2, 2, 2, 2)

#: e3nn's J matrices (change of axes used to build Wigner matrices from Euler angles), l = 0..2.
#: These are the values stored in official checkpoints as ``Jd_list.{0,1,2}``.
_S3 = math.sqrt(3.0) / 2.0
J_MATRICES = (
    ((1.0,),),
    ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    (
        (0.0, 0.0, 0.0, -1.0, 0.0),
        (0.0, 1.0, 0.0, 0.0, 0.0),
        (0.0, 0.0, -0.5, 0.0, -_S3),
        (-1.0, 0.0, 0.0, 0.0, 0.0),
        (0.0, 0.0, -_S3, 0.0, 0.5),
    ),
)

#: SO(2)-frame sparse product: output row r takes input row SO2_SOURCE_ROWS[r] times SO2_WEIGHTS[r]
#: (un-normalised real Clebsch–Gordan coefficients C^{l1,1,l3}[m1, m2 = 0, m3]).
SO2_SOURCE_ROWS = (2, 0, 0, 0, 3, 0, 1, 5, 6, 7, 0, 1, 2, 3, 0, 8, 7, 0, 5, 4)
_R3, _R2 = 1.0 / math.sqrt(3.0), 1.0 / math.sqrt(2.0)
SO2_WEIGHTS = (
    _R3,
    0.0, 1.0, 0.0,
    -_R2, 0.0, _R2,
    math.sqrt(0.3), math.sqrt(0.4), math.sqrt(0.3),
    0.0, _R2, math.sqrt(2.0 / 3.0), _R2, 0.0,
    -math.sqrt(2.0 / 3.0), -math.sqrt(1.0 / 6.0), 0.0, math.sqrt(1.0 / 6.0), math.sqrt(2.0 / 3.0),
)
#: degree of each of the 20 output rows (for the inverse rotation)
TP_ROW_DEGREE = (0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2)
#: row blocks of the six paths and their (l1, l3)
TP_PATHS = ((0, 1, 1, 0), (1, 4, 0, 1), (4, 7, 1, 1), (7, 10, 2, 1), (10, 15, 1, 2), (15, 20, 2, 2))
#: normalisation applied after mixing the paths of each output degree
PATH_NORM = (1.0, _R3, _R3, _R3, _R2, _R2, _R2, _R2, _R2)

#: Gate constants (second-moment normalisation of SiLU and sigmoid under a unit normal, as
#: computed by e3nn.math.normalize2mom); not stored in checkpoints.
C_SILU = 1.6791767923989418
C_SIGMOID = 1.8467055342154763


# --- spherical harmonics ------------------------------------------------------------------

def spherical_harmonics(unit: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics l = 0..2 of unit vectors [E, 3] -> [E, 9], e3nn "component"
    normalisation (|Y_l|^2 = 2l+1), rows in the model's order."""
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]
    s3, s5, s15 = math.sqrt(3.0), math.sqrt(5.0), math.sqrt(15.0)
    return torch.stack(
        [
            torch.ones_like(x),
            s3 * x, s3 * y, s3 * z,
            s15 * x * z,
            s15 * x * y,
            s5 * (y * y - 0.5 * (x * x + z * z)),
            s15 * y * z,
            0.5 * s15 * (z * z - x * x),
        ],
        dim=1,
    )


# --- Wigner matrices (official SO(2) route) ------------------------------------------------

def _x_matrix(l: int, angle: torch.Tensor) -> torch.Tensor:
    """[B, 2l+1, 2l+1] rotation about the polar axis in e3nn's real basis."""
    n = 2 * l + 1
    out = angle.new_zeros(angle.shape[0], n, n)
    for i in range(n):
        f = float(l - i)
        out[:, i, i] = torch.cos(f * angle)
        if i != l:
            out[:, i, n - 1 - i] = torch.sin(f * angle)
    return out


def wigner_to_y(vectors: torch.Tensor, detach_poles: bool = True):
    """Wigner blocks D_0, D_1, D_2 ([B,1,1], [B,3,3], [B,5,5]) of the rotation that maps each
    vector onto +y, computed in float64 exactly as the official model does (gamma = 0)."""
    p = vectors.to(torch.float64)
    norm = p.norm(dim=1, keepdim=True)
    norm = torch.where(norm < 1e-5, torch.ones_like(norm), norm)
    u = p / norm
    uy = u[:, 1].clamp(-1.0, 1.0)
    beta = torch.acos(uy)
    alpha = torch.atan2(u[:, 0], u[:, 2])
    if detach_poles:
        pole = torch.isclose(uy.abs(), torch.ones_like(uy), rtol=1e-5)
        beta = torch.where(pole, beta.detach(), beta)
        alpha = torch.where(pole, alpha.detach(), alpha)
    blocks = []
    for l in range(3):
        J = torch.tensor(J_MATRICES[l], dtype=torch.float64, device=p.device)
        D = _x_matrix(l, -beta)
        D = J @ D @ J
        D = D @ _x_matrix(l, -alpha)
        blocks.append(D)
    return blocks


def _block_rotate(x: torch.Tensor, blocks, degrees) -> torch.Tensor:
    """Apply per-item Wigner blocks to rows of x [B, R, C] grouped by degree."""
    out = []
    r = 0
    while r < len(degrees):
        l = degrees[r]
        n = 2 * l + 1
        out.append(torch.bmm(blocks[l], x[:, r:r + n]))
        r += n
    return torch.cat(out, dim=1)


def tp_first_order_so2(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """TP(v, r) by the official SO(2) route: rotate r to +y, sparse gather, rotate back, x|r|.
    v [B, 9, C], r [B, 3] -> [B, 20, C] (float32 matrices, float64 angles)."""
    blocks = [b.to(v.dtype) for b in wigner_to_y(r)]
    rotated = _block_rotate(v, blocks, ROW_DEGREE)
    idx = torch.tensor(SO2_SOURCE_ROWS, device=v.device)
    w = torch.tensor(SO2_WEIGHTS, dtype=v.dtype, device=v.device)
    gathered = rotated[:, idx] * w[None, :, None]
    inv = [b.transpose(1, 2) for b in blocks]
    back = _block_rotate(gathered, inv, TP_ROW_DEGREE)
    norm = r.norm(dim=1)
    norm = torch.where(norm < 1e-5, torch.ones_like(norm), norm)
    return back * norm[:, None, None].to(v.dtype)


@lru_cache(maxsize=None)
def _first_order_cg_f64() -> torch.Tensor:
    eye = torch.eye(3, dtype=torch.float64)
    basis = torch.eye(9, dtype=torch.float64)  # 9 one-hot features, C = 9
    mats = []
    for k in range(3):
        v = basis.T.unsqueeze(0)  # [1, 9 rows, 9 channels]
        out = tp_first_order_so2(v, eye[k:k + 1])[0]  # [20, 9]: column c = image of row c
        mats.append(out)
    cg = torch.stack(mats)  # [3, 20, 9]
    cg[cg.abs() < 1e-12] = 0.0
    return cg


def first_order_cg(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """[3, 20, 9] tensor with TP(v, r) = sum_k r[k] * CG[k] @ v (derived from the SO(2) form)."""
    return _first_order_cg_f64().to(dtype=dtype, device=device)
