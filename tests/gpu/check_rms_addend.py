"""GPU check of the RMS norm with the residual sum inside its kernel (``rms_norm(passthrough=True, addend=a)``,
session 17) against ``rms_norm_reference(x + a)`` in float64: forward (the parts and the sum, which must be the bits
of torch's x + a), backward (x, a, weight, bias), fresh random inputs, V1.5's C = 256 and the bundled model's C = 64,
float32 and bf16 addends; float32 relative error <= 1e-5.

    python tests/gpu/check_rms_addend.py OUT.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))      # after an installed or mapped openmm_e2former
try:
    from openmm_e2former.kernels import rmsnorm_reference as R, rmsnorm_triton as K
except ImportError:
    from kernels import rmsnorm_reference as R, rmsnorm_triton as K


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main(out):
    rows, ok = [], True
    for N, C, seed in ((1000, 256, 0), (10_000, 256, 1), (20_000, 256, 2), (115_200, 64, 3), (5, 64, 4)):
        for add_dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator(device="cuda").manual_seed(seed)
            x64 = 2 * torch.randn(N, 9, C, generator=g, device="cuda", dtype=torch.float64) + 0.5
            a64 = torch.randn(N, 9, C, generator=g, device="cuda", dtype=torch.float64)
            w64 = torch.randn(3, C, generator=g, device="cuda", dtype=torch.float64)
            b64 = torch.randn(C, generator=g, device="cuda", dtype=torch.float64)
            x, w, b = (t.float().requires_grad_(True) for t in (x64, w64, b64))
            a = a64.to(add_dtype).requires_grad_(True)
            xs, *ys = K.rms_norm(x, w, b, 1e-5, None, parts=True, passthrough=True, addend=a)
            bits = bool(torch.equal(xs, x + a))
            rin = [t.detach().double().requires_grad_(True) for t in (x, w, b, a)]
            xr = rin[0] + rin[3]
            yr = R.rms_norm_reference(xr, rin[1], rin[2], 1e-5)
            fwd = rel(torch.cat(ys, dim=1), yr)
            G = torch.randn(N, 9, C, generator=g, device="cuda", dtype=torch.float64)
            dy = torch.randn(N, 9, C, generator=g, device="cuda", dtype=torch.float64)
            gk = torch.autograd.grad([xs] + ys, [x, w, b, a], [G.float()] + list(torch.split(dy.float(), [1, 3, 5], 1)))
            gr = torch.autograd.grad([xr, yr], rin, [G, dy])
            bwd = max(rel(u, v) for u, v in zip(gk[:3], gr[:3]))
            da = rel(gk[3], gr[3])
            tol_a = 1e-5 if add_dtype == torch.float32 else 8e-3
            row = {"N": N, "C": C, "addend": str(add_dtype).replace("torch.", ""), "sum_bits_equal": bits,
                   "fwd_rel": fwd, "bwd_rel_x_w_b": bwd, "bwd_rel_addend": da,
                   "pass": bits and fwd <= 1e-5 and bwd <= 1e-5 and da <= tol_a}
            ok &= row["pass"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(out).write_text(json.dumps(rows, indent=1))
    print("PASS" if ok else "FAIL", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "rms_addend_check.json")
