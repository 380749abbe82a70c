"""GPU check of the fused query / key / value projections (session 17): ``pairdot_groups`` (``kernels/pairdot_triton.py``)
against ``pairdot_reference`` of each group's columns in float64, forward and backward, fresh random inputs, several
sizes (V1.5: h = 512, two groups), float32 relative error <= 1e-5; then the V1.5-size model (random weights, FCC
carbon, float32, TF32 off) with ``E2F_QKV_FUSED`` 0 and 1: the same energy and forces.

    python tests/gpu/check_qkv_fused.py OUT.json
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))      # after an installed or mapped openmm_e2former
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))
try:
    from openmm_e2former.kernels import pairdot_reference as R, pairdot_triton as K
except ImportError:
    from kernels import pairdot_reference as R, pairdot_triton as K


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def kernels(rows):
    ok = True
    for N, h, G, seed in ((1000, 512, 2, 0), (10_000, 512, 2, 1), (3, 64, 2, 2), (20_000, 512, 2, 3), (7, 48, 3, 4)):
        g = torch.Generator(device="cuda").manual_seed(seed)
        a64 = [torch.randn(N, M, 2 * h * G, generator=g, device="cuda", dtype=torch.float64) for M in (1, 3, 5)]
        a64[0] = a64[0][:, 0].contiguous()
        b64 = [torch.randn(h, generator=g, device="cuda", dtype=torch.float64) for _ in range(G)]
        a = [x.float().requires_grad_(True) for x in a64]
        b = [x.float().requires_grad_(True) for x in b64]
        outs = K.pairdot_groups(*a, b)
        ra = [x.clone().requires_grad_(True) for x in a64]
        rb = [x.clone().requires_grad_(True) for x in b64]
        cols = [slice(i * 2 * h, (i + 1) * 2 * h) for i in range(G)]
        refs = [R.pairdot_reference(ra[0][:, c], ra[1][:, :, c], ra[2][:, :, c], rb[i]) for i, c in enumerate(cols)]
        d = [torch.randn(r.shape, generator=g, device="cuda", dtype=torch.float64) for r in refs]
        gk = torch.autograd.grad(outs, a + b, [x.float() for x in d])
        gr = torch.autograd.grad(refs, ra + rb, d)
        fwd = max(rel(x, y) for x, y in zip(outs, refs))
        bwd = max(rel(x, y) for x, y in zip(gk, gr))
        row = {"check": "pairdot_groups", "N": N, "h": h, "G": G, "fwd_rel": fwd, "bwd_rel": bwd,
               "pass": fwd <= 1e-5 and bwd <= 1e-5}
        ok &= row["pass"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return ok


def bf16(rows):
    """The pairdot kernels with bf16 projections (bf16 autocast): ``pairdot`` with float32 and bf16 outputs (``to_out``
    rounding, the session-15 path whose backward had no GPU accuracy check) and ``pairdot_groups``; forward against
    float64 of the bf16-rounded inputs (<= 1e-5 for float32 outputs, one bf16 rounding for bf16 ones), backward (bf16
    gradients) within bf16 rounding (<= 8e-3)."""
    ok = True
    for N, h, seed in ((10_000, 512, 10), (7, 48, 11)):
        g = torch.Generator(device="cuda").manual_seed(seed)
        a64 = [torch.randn(N, M, 4 * h, generator=g, device="cuda", dtype=torch.float64) for M in (1, 3, 5)]
        a64[0] = a64[0][:, 0].contiguous()
        b64 = [torch.randn(h, generator=g, device="cuda", dtype=torch.float64) for _ in range(2)]
        a = [x.to(torch.bfloat16).requires_grad_(True) for x in a64]
        b = [x.float().requires_grad_(True) for x in b64]
        ra = [x.detach().double().requires_grad_(True) for x in a]
        rb = [x.detach().double().requires_grad_(True) for x in b]
        cols = [slice(i * 2 * h, (i + 1) * 2 * h) for i in range(2)]
        refs = [R.pairdot_reference(ra[0][:, c], ra[1][:, :, c], ra[2][:, :, c], rb[i]) for i, c in enumerate(cols)]
        d = [torch.randn(r.shape, generator=g, device="cuda", dtype=torch.float64) for r in refs]
        rg = torch.autograd.grad(refs, ra + rb, d)
        # pairdot_groups (bf16 projections -> float32 invariants, bf16 gradients)
        outs = K.pairdot_groups(*a, b)
        gk = torch.autograd.grad(outs, a + b, [x.float() for x in d])
        fwd = max(rel(x, y) for x, y in zip(outs, refs))
        bwd = max(rel(x, y) for x, y in zip(gk, rg))
        row = {"check": "pairdot_groups bf16", "N": N, "h": h, "fwd_rel": fwd, "bwd_rel": bwd,
               "grad_dtype": str(gk[0].dtype), "pass": fwd <= 1e-5 and bwd <= 8e-3 and gk[0].dtype == torch.bfloat16}
        ok &= row["pass"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        # pairdot of group 0 alone, float32 and bf16 outputs (the latter rounded as torch's cast)
        a0 = [x[:, cols[0]].contiguous() if x.dim() == 2 else x[:, :, cols[0]].contiguous() for x in a]
        a0 = [x.detach().requires_grad_(True) for x in a0]
        for out_dtype, tol in ((None, 1e-5), (torch.bfloat16, 8e-3)):
            s = K.pairdot(*a0, b[0], out_dtype)
            gk = torch.autograd.grad(s, a0 + [b[0]], d[0].to(s.dtype))
            ref0 = refs[0].detach()
            ra0 = [x.detach().double().requires_grad_(True) for x in a0 + [b[0]]]
            # the reference's upstream gradient is the one the kernel saw (bf16-rounded for a bf16 output)
            rg0 = torch.autograd.grad(R.pairdot_reference(*ra0), ra0, d[0].to(s.dtype).double())
            fwd = rel(s, ref0)
            bwd = max(rel(x, y) for x, y in zip(gk, rg0))
            row = {"check": f"pairdot bf16 in, {'bf16' if out_dtype else 'float32'} out", "N": N, "h": h,
                   "fwd_rel": fwd, "bwd_rel": bwd, "pass": fwd <= tol and bwd <= 8e-3}
            ok &= row["pass"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return ok


def model(rows):
    from gpu_end_to_end import fcc_carbon, v15_model

    torch.backends.cuda.matmul.allow_tf32 = False
    m = v15_model()
    m.set_precision("fp32")
    ok = True
    for n in (1000, 10_000):
        z = torch.full((n,), 6, device="cuda")
        pos = torch.as_tensor(fcc_carbon(n), dtype=torch.float32, device="cuda")
        out = {}
        for flag in ("0", "1"):
            os.environ["E2F_QKV_FUSED"] = flag
            out[flag] = m.energy_and_forces(z, pos, None, None)
        e0, e1 = float(out["0"][0]), float(out["1"][0])
        f0, f1 = out["0"][2], out["1"][2]
        df = float((f1 - f0).abs().max() / f0.abs().max())
        row = {"check": "model E2F_QKV_FUSED 1 vs 0", "n_atoms": n, "dE_rel": abs(e1 - e0) / abs(e0), "dF_rel": df,
               "pass": abs(e1 - e0) <= 1e-6 * abs(e0) and df <= 1e-5}
        ok &= row["pass"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return ok


def main(out):
    rows = []
    ok = kernels(rows)
    ok &= bf16(rows)
    ok &= model(rows)
    Path(out).write_text(json.dumps(rows, indent=1))
    print("PASS" if ok else "FAIL", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "qkv_fused_check.json")
