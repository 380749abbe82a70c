"""Triton helpers shared by the node-level kernels.

``to_out``: float32 -> bf16 rounding as torch's cast rounds (to nearest, ties to even; a NaN stays a NaN, written
as 0x7FC0 whatever its sign and payload, where torch's bits may differ).  Written with integer operations so that
the GPU and the Triton interpreter give the same bits: the interpreter's own float32 -> bf16 conversion truncates.

``atom_tile``: a program's tile of BLOCK_N atoms x BLOCK_W columns of a per-atom row of W columns; ``tile_grid`` its
launch grid with the tile the pairdot and gate kernels use (``TILE_N`` x ``TILE_W``, ``TILE_WARPS`` warps)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def to_out(x, OUT_BF16: tl.constexpr):
    """``x`` (float32) as the output dtype: unchanged, or rounded to bf16 (``OUT_BF16``)."""
    if OUT_BF16:
        b = x.to(tl.uint32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(x == x, r, 0x7FC0)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x


#: the atom tile of the pairdot and gate kernels: TILE_N atoms x TILE_W columns per program, TILE_WARPS warps
TILE_N = 4
TILE_W = 128
TILE_WARPS = 4


def tile_grid(N: int, W: int):
    """The launch grid of ``atom_tile`` over N atoms x W columns with the TILE_N x TILE_W tile."""
    return (triton.cdiv(N, TILE_N), triton.cdiv(W, TILE_W))


@triton.jit
def atom_tile(N, W, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """(atom index [BLOCK_N, 1] as int64, column index [1, BLOCK_W], mask) of the program's tile (grid axis 0:
    atoms, axis 1: columns)."""
    n = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    j = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    return n[:, None], j[None, :], (n < N)[:, None] & (j < W)[None, :]
