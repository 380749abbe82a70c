"""GPU check of the streamed forward's unroll (E2F_V2_FWD_STREAM_U, session 19): at the App. A size (H 16, hid 128,
where the default launch takes SU 8 since session 20, 4 before) and at the bundled / V1.5 sizes, U with SU 4, with
SU 8 and with the default must equal U with SU 1 bit for bit (the same additions in the same order), with the MLP and
with a radial table, on rows of random degree 0..K (partial unrolled groups, empty rows); the default's U and gradients
against float64.

Usage (GPU): python tests/gpu/check_stream_unroll.py OUT.json
(CPU rehearsal: TRITON_INTERPRET=1 CHECK_DEVICE=cpu CHECK_N=40 ...)"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
try:
    import openmm_e2former.kernels as K
    from openmm_e2former.kernels._testing import make_case, args_of, random_table, V15, env_vars
except ImportError:
    import kernels as K
    from kernels._testing import make_case, args_of, random_table, V15, env_vars

DEV = os.environ.get("CHECK_DEVICE", "cuda")
N = int(os.environ.get("CHECK_N", "3000"))
SIZES = {"appA": (dict(V15, H=16), 64), "v15": (dict(V15), 32),
         "bundled": (dict(C=64, H=16, D=4, nb=64, T=32, hid=32), 64)}


def main(out):
    rows, ok_all = [], True
    rel = lambda x, y: ((x.double() - y).norm() / y.norm().clamp_min(1e-30)).item()
    for name, (cfg, Kd) in SIZES.items():
        for table in (False, True):
            case = make_case(N, Kd, **cfg, device=DEV, seed=7)
            tab = None
            if table:
                coef, *rest = random_table(2 * cfg["H"], N, torch.Generator().manual_seed(3), device=DEV)
                tab = (coef.float(), *rest)
            us = {}
            for su in ("1", "4", "8", "default"):
                env = {} if su == "default" else {"E2F_V2_FWD_STREAM_U": su}
                with env_vars(env), torch.no_grad():
                    us[su] = K.fused_attention(*args_of(case), backend="triton_v2", max_degree=Kd, table=tab)
            equal = {su: bool(torch.equal(us["1"], us[su])) for su in ("4", "8", "default")}
            # the default launch against float64, forward and backward
            c64 = make_case(N, Kd, **cfg, device=DEV, seed=7, dtype=torch.float64)
            a32, a64 = list(args_of(case)), list(args_of(c64))
            for n in (2, 3, 4, 5):
                a32[n] = a32[n].clone().requires_grad_(True)
                a64[n] = a64[n].clone().requires_grad_(True)
            tab64 = None
            if table:
                tab64 = random_table(2 * cfg["H"], N, torch.Generator().manual_seed(3), device=DEV)
            U = K.fused_attention(*a32, backend="triton_v2", max_degree=Kd, table=tab)
            U64 = K.attention_reference(*a64, table=tab64)
            G = torch.randn(U64.shape, dtype=torch.float64, device=DEV, generator=torch.Generator(DEV).manual_seed(1))
            g32 = torch.autograd.grad(U, [a32[n] for n in (2, 3, 4, 5)], G.float())
            g64 = torch.autograd.grad(U64, [a64[n] for n in (2, 3, 4, 5)], G)
            errs = [rel(U, U64)] + [rel(a, b) for a, b in zip(g32, g64)]
            ok = all(equal.values()) and max(errs) <= 1e-5
            ok_all &= ok
            row = dict(size=name, table=table, equal_to_su1=equal, rel_err_U_dvec_dq_dk_dv=errs, passed=ok,
                       default_SU=K._attention_triton_v2.launch_config(cfg["H"], cfg["hid"], cfg["nb"], Kd, "fwd",
                                                                       table=table)["SU"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    dev_name = torch.cuda.get_device_name() if DEV == "cuda" else DEV
    Path(out).write_text(json.dumps(dict(device=dev_name, rows=rows, passed=ok_all), indent=1))
    print("ALL PASS" if ok_all else "FAIL", flush=True)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
