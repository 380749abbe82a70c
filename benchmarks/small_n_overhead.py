"""Where the fused attention's ~1.5 ms floor at small N comes from (issue #4, item 4a's table: the fused forward
takes 1.5-1.7 ms at 128-2048 atoms, App. A setting, while the kernel work is a few microseconds).

For each N: the median of triton's do_bench (what bench_attention.py reports), the host time of one call without
a synchronisation (the Python / launch side), the GPU time of the kernels alone from torch.profiler, and the
profiler's CPU operators sorted by their own time.

Usage (GPU): python benchmarks/small_n_overhead.py OUT.json [--ns 128,2048] [--settings appA]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_attention as BA  # noqa: E402  (the same cases and calls as item 4a's table)


def main(argv):
    out = Path(argv[0])
    ns = [int(n) for n in BA._opt(argv, "--ns", "128,2048").split(",")]
    settings = BA._opt(argv, "--settings", "appA").split(",")
    import triton
    rows = []
    for setting in settings:
        s = BA.SETTINGS[setting]
        for N in ns:
            case = BA.make_case(N, s["K"], **s["cfg"], device="cuda", seed=N, fixed_degree=True, special_rows=False)
            args = list(BA.args_of(case))
            fn = BA.make_fn("fused", args, "fwd", s["K"])
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            bench_ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
            reps = 50
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            host_ms = 1e3 * (time.perf_counter() - t0) / reps
            torch.cuda.synchronize()
            wall_ms = 1e3 * (time.perf_counter() - t0) / reps
            from torch.profiler import profile, ProfilerActivity
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    fn()
                torch.cuda.synchronize()
            ev = prof.key_averages()
            gpu_us = sum(e.self_device_time_total for e in ev) / 10
            cpu_top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]
            gpu_top = sorted(ev, key=lambda e: -e.self_device_time_total)[:6]
            row = dict(setting=setting, N=N, do_bench_ms=bench_ms, host_ms_per_call=host_ms, wall_ms_per_call=wall_ms,
                       gpu_kernels_ms_per_call=gpu_us / 1e3,
                       cpu_ops=[dict(name=e.key, self_cpu_us_per_call=e.self_cpu_time_total / 10, calls=e.count / 10)
                                for e in cpu_top],
                       gpu_ops=[dict(name=e.key[:80], us_per_call=e.self_device_time_total / 10, calls=e.count / 10)
                                for e in gpu_top])
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("setting", "N", "do_bench_ms", "host_ms_per_call",
                                                    "wall_ms_per_call", "gpu_kernels_ms_per_call")}), flush=True)
            for e in row["cpu_ops"][:8]:
                print(f"   cpu {e['self_cpu_us_per_call']:9.1f} us  x{e['calls']:5.1f}  {e['name'][:90]}")
            for e in row["gpu_ops"][:4]:
                print(f"   gpu {e['us_per_call']:9.1f} us  x{e['calls']:5.1f}  {e['name'][:90]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(device=torch.cuda.get_device_name(), rows=rows), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
