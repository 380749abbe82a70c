"""float32 -> bf16 rounding inside the node-level kernels, as torch's cast rounds (to nearest, ties to even; a NaN
stays a NaN, written as 0x7FC0 whatever its sign and payload, where torch's bits may differ).  Written with integer operations so that the GPU and the Triton interpreter give the same bits: the
interpreter's own float32 -> bf16 conversion truncates."""
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
