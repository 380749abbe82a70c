"""GPU check of the gated FFN's gate kernels (``kernels/gate_triton.py``) against their PyTorch reference in float64:
forward and backward, fresh random inputs, several sizes (V1.5's C = 256 and the bundled model's C = 64), float32
relative error <= 1e-5; bf16 inputs within bf16 rounding; and 1.7M atoms at C = 256 (offsets past 2^31), its last
rows checked.

    python tests/gpu/check_gate.py OUT.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))      # after an installed or mapped openmm_e2former
try:
    from openmm_e2former.kernels import gate_reference as R, gate_triton as K
except ImportError:
    from kernels import gate_reference as R, gate_triton as K

CS, CG = 1.6791767923989418, 1.8467055342154763


def rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main(out):
    rows, ok = [], True
    for N, C, seed in ((1000, 256, 0), (10_000, 256, 1), (3, 64, 2), (115_200, 64, 3), (7, 160, 4)):
        g = torch.Generator(device="cuda").manual_seed(seed)
        ins64 = [3 * torch.randn(N, 3 * C, generator=g, device="cuda", dtype=torch.float64),
                 torch.randn(N, 3, C, generator=g, device="cuda", dtype=torch.float64),
                 torch.randn(N, 5, C, generator=g, device="cuda", dtype=torch.float64)]
        ins = [x.float().requires_grad_(True) for x in ins64]
        ys = K.gate(*ins, CS, CG)
        r64 = [x.clone().requires_grad_(True) for x in ins64]
        ref = R.gate_reference(*r64, CS, CG)
        d = [torch.randn(y.shape, generator=g, device="cuda", dtype=torch.float64) for y in ref]
        gk = torch.autograd.grad(ys, ins, [x.float() for x in d])
        gr = torch.autograd.grad(ref, r64, d)
        fwd = max(rel(a, b) for a, b in zip(ys, ref))
        bwd = max(rel(a, b) for a, b in zip(gk, gr))
        ib = [x.to(torch.bfloat16) for x in ins64]
        bf = max(rel(a, b) for a, b in zip(K.gate(*ib, CS, CG), R.gate_reference(*[x.double() for x in ib], CS, CG)))
        row = {"N": N, "C": C, "fwd_rel": fwd, "bwd_rel": bwd, "bf16_fwd_rel": bf,
               "pass": fwd <= 1e-5 and bwd <= 1e-5 and bf < 8e-3}
        ok &= row["pass"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    # offsets past 2^31: N 5 C > 2^31 from N ~ 1.68M at C = 256; the kernels on all atoms, the last 500 checked in
    # float64 (about 70 GB of float32 tensors: skipped on a smaller card)
    N, C = 1_700_000, 256
    try:
        g = torch.Generator(device="cuda").manual_seed(9)
        ins = [3 * torch.randn(N, 3 * C, generator=g, device="cuda"), torch.randn(N, 3, C, generator=g, device="cuda"),
               torch.randn(N, 5, C, generator=g, device="cuda")]
        ins = [x.requires_grad_(True) for x in ins]
        ys = K.gate(*ins, CS, CG)
        d = [torch.randn(y.shape, generator=g, device="cuda") for y in ys]
        gk = torch.autograd.grad(ys, ins, d)
        tail = [x.detach()[-500:].double().requires_grad_(True) for x in ins]
        ref = R.gate_reference(*tail, CS, CG)
        gr = torch.autograd.grad(ref, tail, [x[-500:].double() for x in d])
        fwd = max(rel(a[-500:], b) for a, b in zip(ys, ref))
        bwd = max(rel(a[-500:], b) for a, b in zip(gk, gr))
        row = {"N": N, "C": C, "last_rows": 500, "offsets_past_2_31": N * 5 * C > 2**31, "fwd_rel": fwd,
               "bwd_rel": bwd, "pass": fwd <= 1e-5 and bwd <= 1e-5}
        ok &= row["pass"]
        del ins, ys, d, gk
    except torch.cuda.OutOfMemoryError:
        row = {"N": N, "C": C, "skipped": "out of memory"}
    torch.cuda.empty_cache()
    rows.append(row)
    print(json.dumps(row), flush=True)
    Path(out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows, "pass": ok}, indent=1))
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main(sys.argv[1])
