"""One fused v2 attention forward + backward at a chosen size, repeated a few times: the program to put under
Nsight Compute (``ncu``) to see where the kernels' time goes (memory throughput, stall reasons, occupancy), which
timings alone cannot show.  Every atom has K edges from sources within +-300 atom indices, as in
``benchmarks/attention_stages.py``; ``--table`` reads the edge MLP from a random continuous radial table
(``TABLE``, the OpenMM force's default on CUDA), as the model does after ``set_radial_tables``.

    ncu --clock-control none -k regex:_attn_ --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
        python3 benchmarks/ncu_attention.py --setting v15 --n 10000 --k 32 --table

Without ncu it prints the median ms of the forward and of forward + backward (a check that it runs).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="v15", choices=("v15", "bundled", "appA"))
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    import time

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from attention_stages import APPA, BUNDLED, local_sources
    from kernels import attention_triton_v2 as v2
    from kernels._testing import V15, args_of, make_case, random_table

    size = {"v15": V15, "bundled": BUNDLED, "appA": APPA}[args.setting]
    case = local_sources(make_case(args.n, args.k, **size, device=args.device, seed=2, fixed_degree=True), 300, 3)
    a = list(args_of(case))
    for n in (2, 3, 4, 5):
        a[n] = a[n].clone().requires_grad_(True)
    table = None
    if args.table:
        coef, *rest = random_table(2 * size["H"], args.n, torch.Generator().manual_seed(5), device=args.device)
        table = (coef.float(), *rest)
    G = torch.randn((args.n, 3, 9, size["C"]), device=args.device)
    times = []
    for _ in range(args.repeats):          # launches: fwd, bwd, fwd, bwd, ... (ncu --launch-skip 2: a warm pair)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        U = v2.attention_triton_v2(*a, max_degree=args.k, table=table)
        torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    print(f"{args.setting} N {args.n} K {args.k} table {args.table}: fwd+bwd wall ms per repeat "
          + " ".join(f"{t:.2f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
