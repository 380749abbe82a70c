"""EAAS first-order tensor product vs e3nn's SO(3) tensor product (issue #4b; paper: > 6x).

Per edge: features x (lmax 2, C channels) coupled with the edge direction r (l = 1) into l3 <= 2, channel-wise,
the six paths of E2Former-V2 (1->0, 0->1, 1->1, 2->1, 1->2, 2->2), no weights. Implementations:

* ``e3nn``      : ``e3nn.o3.TensorProduct`` with 'uvu' instructions for exactly these paths (parity
                  ignored, as in the official model: all irreps 'e');
* ``so2``       : the paper's EAAS route: rotate x into the edge frame (Wigner matrices), sparse
                  gather of 20 rows with fixed CG weights, rotate back (``model.so3.tp_first_order_so2``);
* ``linear_cg`` : our exactly equivalent form sum_k r_k CG_k x with the [3, 20, 9] constant (no Wigner).

The three are checked to agree (e3nn up to one normalisation constant per path), then timed for forward
and forward+backward. Usage: ``python benchmarks/bench_eaas_tp.py [--device cuda] [--edges 20000]
[--channels 128] --out benchmarks/results/eaas_tp_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openmm_e2former.model.so3 import first_order_cg, tp_first_order_so2

PATHS = ((1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (2, 2))  # (l1, l3) in our 20-row order


def e3nn_tp(C: int):
    from e3nn import o3

    irreps_in = o3.Irreps(f"{C}x0e+{C}x1e+{C}x2e")
    irreps_out = o3.Irreps("+".join(f"{C}x{l3}e" for _, l3 in PATHS))
    instr = [(l1, 0, i, "uvu", False) for i, (l1, _) in enumerate(PATHS)]
    return o3.TensorProduct(irreps_in, "1x1e", irreps_out, instr), irreps_in


def to_e3nn(x: torch.Tensor) -> torch.Tensor:
    """[E, 9, C] (row = (l, m)) -> e3nn layout [E, C*1 + C*3 + C*5] (per irrep: channel-major, then m)."""
    E, _, C = x.shape
    return torch.cat([x[:, 0:1].transpose(1, 2).reshape(E, C), x[:, 1:4].transpose(1, 2).reshape(E, 3 * C),
                      x[:, 4:9].transpose(1, 2).reshape(E, 5 * C)], dim=1)


def from_e3nn(y: torch.Tensor, C: int) -> torch.Tensor:
    """e3nn output of the six path slots -> [E, 20, C] in our row order."""
    out, off = [], 0
    for _, l3 in PATHS:
        d = 2 * l3 + 1
        out.append(y[:, off:off + C * d].reshape(-1, C, d).transpose(1, 2))
        off += C * d
    return torch.cat(out, dim=1)


def timeit(fn, device, reps=10):
    for _ in range(3):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--edges", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev, E, C = args.device, args.edges, args.channels
    torch.manual_seed(0)
    x = torch.randn(E, 9, C, device=dev)
    r = torch.nn.functional.normalize(torch.randn(E, 3, device=dev), dim=1)
    cg = first_order_cg(torch.float32, dev)
    tp, _ = e3nn_tp(C)
    tp = tp.to(dev)
    xe = to_e3nn(x)

    impl = {
        "e3nn": lambda xx, rr: from_e3nn(tp(to_e3nn(xx), rr), C),
        "so2": lambda xx, rr: tp_first_order_so2(xx, rr),
        "linear_cg": lambda xx, rr: torch.einsum("ek,krm,emc->erc", rr, cg, xx),
    }
    # agreement (e3nn: one constant per path)
    ref = impl["linear_cg"](x, r)
    check = {"so2_max_abs_diff": float((impl["so2"](x, r) - ref).abs().max())}
    ye = impl["e3nn"](x, r)
    row = 0
    ratios = []
    for _, l3 in PATHS:
        d = 2 * l3 + 1
        a, b = ye[:, row:row + d], ref[:, row:row + d]
        s = float((a * b).sum() / (b * b).sum())
        ratios.append(s)
        check.setdefault("e3nn_rel_residual_after_path_scale", 0.0)
        check["e3nn_rel_residual_after_path_scale"] = max(check["e3nn_rel_residual_after_path_scale"],
                                                           float((a - s * b).norm() / a.norm()))
        row += d
    check["e3nn_path_scales"] = ratios

    results = []
    for name, fn in impl.items():
        fwd = timeit(lambda: fn(x, r), dev)
        xg = x.clone().requires_grad_(True)
        rg = r.clone().requires_grad_(True)

        def fb():
            out = fn(xg, rg)
            torch.autograd.grad(out.sum(), (xg, rg))
        both = timeit(fb, dev)
        results.append({"impl": name, "fwd_ms": fwd * 1e3, "fwd_bwd_ms": both * 1e3})
        print(f"{name:10s} fwd {fwd * 1e3:8.2f} ms   fwd+bwd {both * 1e3:8.2f} ms", flush=True)
    base = {r_["impl"]: r_ for r_ in results}["e3nn"]
    for r_ in results:
        r_["speedup_vs_e3nn_fwd"] = base["fwd_ms"] / r_["fwd_ms"]
        r_["speedup_vs_e3nn_fwd_bwd"] = base["fwd_bwd_ms"] / r_["fwd_bwd_ms"]
    meta = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
            "edges": E, "channels": C, "threads": torch.get_num_threads(), "check": check}
    print(json.dumps(meta["check"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
