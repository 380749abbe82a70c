"""Can the App. A forward's edge MLP and its aggregation overlap if they run as two kernels side by side on one GPU?

A probe for issue #4 item 4a, not a feature. The fused App. A forward (the edge MLP, logits and softmax, then the streamed
aggregation, in one kernel) takes about the sum of its two phases: ~6.1 ms + ~4.8 ms at 32k atoms with random sources
(``benchmarks/results/session21_h200.md``). Starting the CTAs of an SM out of phase did not change that. This script
runs two stand-ins for the phases as separate kernels on two CUDA streams:
- A: the MLP forward with its aggregation left out (``E2F_V2_FWD_AGG=none``);
- B: the radial-table forward (``TABLE``), which does the same gathers and aggregation with no MLP.

It times each one alone and both launched together, with the programs per SM of each (``E2F_V2_FWD_PROGS_PER_SM``)
chosen so that both can be resident at once. If "together" is close to max(A, B) rather than A + B, a pipelined
forward would pay: A writes each chunk's alpha to a bounded, L2-sized ring (never an edges x heads tensor) and B
aggregates the chunk before. If it is close to A + B, the two phases compete for the same SM resources, and no
split can help.

    python benchmarks/overlap_probe.py --out DIR [--n 32768] [--pairs 3:8,2:3,2:2,1:4]
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--pairs", default="3:8,2:3,2:2,1:4",
                    help="A:B programs per SM of the MLP-only and the table kernel, comma-separated")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from attention_stages import APPA
    from kernels import attention_triton_v2 as v2
    from kernels._testing import args_of, make_case, random_table

    dev = "cuda"
    case = make_case(args.n, args.k, **APPA, device=dev, seed=2, fixed_degree=True)    # random sources
    a = list(args_of(case))
    coef, *rest = random_table(2 * APPA["H"], args.n, torch.Generator().manual_seed(5), device=dev)
    table = (coef.float(), *rest)
    sA, sB = torch.cuda.Stream(), torch.cuda.Stream()

    def call(kind, pps):
        os.environ["E2F_V2_FWD_PROGS_PER_SM"] = str(pps)
        os.environ["E2F_V2_FWD_AGG"] = "none" if kind == "A" else "stream"
        with torch.no_grad():
            v2.attention_triton_v2(*a, max_degree=args.k, table=table if kind == "B" else None)

    def timed(fn):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        ms = []
        for _ in range(5):       # batches of back-to-back calls: the host's launch work hides under the GPU's
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(args.reps):
                fn()
            e1.record()
            torch.cuda.synchronize()
            ms.append(e0.elapsed_time(e1) / args.reps)
        return statistics.median(ms)

    def together(pa, pb):
        main_s = torch.cuda.current_stream()
        sA.wait_stream(main_s)
        sB.wait_stream(main_s)
        with torch.cuda.stream(sA):
            call("A", pa)
        with torch.cuda.stream(sB):
            call("B", pb)
        main_s.wait_stream(sA)
        main_s.wait_stream(sB)

    def fused():
        os.environ.pop("E2F_V2_FWD_PROGS_PER_SM", None)
        os.environ["E2F_V2_FWD_AGG"] = "stream"
        with torch.no_grad():
            v2.attention_triton_v2(*a, max_degree=args.k)

    os.makedirs(args.out, exist_ok=True)
    rows = [dict(what="fused App. A forward (the default launch)", ms=timed(fused))]
    print(json.dumps(rows[-1]), flush=True)
    for pair in args.pairs.split(","):
        pa, pb = (int(x) for x in pair.split(":"))
        tA = timed(lambda: call("A", pa))
        tB = timed(lambda: call("B", pb))
        tAB = timed(lambda: together(pa, pb))
        rows.append(dict(what="A (MLP, no aggregation) and B (table forward) on two streams", pps_A=pa, pps_B=pb,
                         ms_A=tA, ms_B=tB, ms_together=tAB, sum=tA + tB, max=max(tA, tB),
                         overlap=(tA + tB - tAB) / min(tA, tB)))
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.out, "overlap_probe.json"), "w") as f:
        json.dump(dict(n=args.n, k=args.k, device=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    print("| A : B programs per SM | A alone | B alone | together | A + B | overlap (share of the shorter) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows[1:]:
        print(f"| {r['pps_A']} : {r['pps_B']} | {r['ms_A']:.2f} | {r['ms_B']:.2f} | {r['ms_together']:.2f} | "
              f"{r['sum']:.2f} | {100 * r['overlap']:.0f} % |")
    print(f"fused default: {rows[0]['ms']:.2f} ms")


if __name__ == "__main__":
    main()
