"""GPU check of ``model.layers.degree_linear`` (``_DegreeLinear``: the degree-wise linear maps as GEMMs that write
the [N, 9, C] output's rows in place and read the gradient's rows in place) against the cat of three float64
``F.linear``: forward and backward to the inputs, fresh random inputs, the V1.5 shapes (the attention's output linear
with its 3C / 2C path inputs, the C -> C linears) and the bundled model's; float32 (TF32 off) relative error <= 1e-5,
bf16 autocast within bf16 rounding.  Then the time of both forms, forward + backward, at 10k and 100k atoms: what
the in-place rows save against the cat and the copies of the gradient's slices.

    python tests/gpu/check_degree_linear.py OUT.json
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.append(str(Path(__file__).resolve().parents[2]))      # after an installed or mapped openmm_e2former
from openmm_e2former.model import layers as L  # noqa: E402


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def cat_form(xs, ws, b):
    N = xs[0].shape[0]
    return torch.cat([F.linear(xs[0], ws[0], b)[:, None],
                      F.linear(xs[1].reshape(N * 3, -1), ws[1]).view(N, 3, -1),
                      F.linear(xs[2].reshape(N * 5, -1), ws[2]).view(N, 5, -1)], dim=1)


def inputs(N, A, B, D, Co, seed, dtype=torch.float64):
    g = torch.Generator(device="cuda").manual_seed(seed)
    xs = [torch.randn(N, A, generator=g, device="cuda", dtype=dtype),
          torch.randn(N, 3, B, generator=g, device="cuda", dtype=dtype),
          torch.randn(N, 5, D, generator=g, device="cuda", dtype=dtype)]
    ws = [torch.randn(Co, k, generator=g, device="cuda", dtype=dtype) / k ** 0.5 for k in (A, B, D)]
    return xs, ws, torch.randn(Co, generator=g, device="cuda", dtype=dtype)


def main(out):
    os.environ["E2F_DEGREE_LINEAR"] = "1"
    torch.backends.cuda.matmul.allow_tf32 = False
    rows, ok = [], True
    shapes = [("V1.5 attention out", 10_000, 256, 768, 512, 256), ("V1.5 C -> C", 10_000, 256, 256, 256, 256),
              ("bundled C -> C", 115_200, 64, 64, 64, 64), ("small", 3, 16, 48, 32, 16), ("odd", 77, 40, 120, 80, 24)]
    for seed, (name, N, A, B, D, Co) in enumerate(shapes):
        xs64, ws64, b64 = inputs(N, A, B, D, Co, seed)
        r64 = [x.clone().requires_grad_(True) for x in xs64]
        ref = cat_form(r64, ws64, b64)
        G = torch.randn(ref.shape, device="cuda", dtype=torch.float64)
        gref = torch.autograd.grad(ref, r64, G)
        x32 = [x.float().requires_grad_(True) for x in xs64]
        y = L.degree_linear(*x32, *[w.float() for w in ws64], b64.float())
        g32 = torch.autograd.grad(y, x32, G.float())
        errs = [rel(y, ref)] + [rel(a, c) for a, c in zip(g32, gref)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            xb = [x.float().requires_grad_(True) for x in xs64]
            yb = L.degree_linear(*xb, *[w.float() for w in ws64], b64.float())
        gb = torch.autograd.grad(yb, xb, G.to(torch.bfloat16))
        errs_bf16 = [rel(yb.float(), ref)] + [rel(a, c) for a, c in zip(gb, gref)]
        row = {"case": name, "N": N, "fp32_rel": errs, "bf16_rel": errs_bf16,
               "pass": max(errs) <= 1e-5 and max(errs_bf16) <= 2e-2 and yb.dtype == torch.bfloat16}
        ok &= row["pass"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    for N in (10_000, 100_000):
        for prec in ("tf32", "bf16"):
            xs, ws, b = inputs(N, 256, 256, 256, 256, 7, torch.float32)
            xs = [x.requires_grad_(True) for x in xs]
            G = torch.randn(N, 9, 256, device="cuda")
            times = {}
            for label, fn in (("cat", lambda: cat_form(xs, ws, b)), ("in place", lambda: L.degree_linear(*xs, *ws, b))):
                best = 1e9
                for _ in range(3):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(10):
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=prec == "bf16"):
                            y = fn()
                        torch.autograd.grad(y, xs, G.to(y.dtype))
                    torch.cuda.synchronize()
                    best = min(best, (time.perf_counter() - t0) / 10)
                times[label] = best * 1e3
            row = {"timing": "C -> C linear, forward + backward to the inputs", "N": N, "precision": prec,
                   "ms_cat": times["cat"], "ms_in_place": times["in place"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(out).write_text(json.dumps(rows, indent=1))
    print("PASS" if ok else "FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "degree_linear_gpu_check.json"))
