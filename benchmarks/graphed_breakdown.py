"""Where the CUDA-graph path's call goes (V1.5 size, random weights, radial tables, FCC carbon, non-periodic): the
whole ``GraphedEnergyForces`` call against its two parts, the eager neighbour list (``model.neighbor_edges``, used
above the in-graph list's 5,000 atoms) and the graph replay alone; each as the median of synchronised calls.

``--variants``: "dh" (the default code: since session 16 the Verlet list, its edges selected inside the graph; here
with ``E2F_RMS_RESIDUAL=0``, the default before session 17),
"hd_proj" (queries and keys projected as [N, H, D] and copied to the kernels' [N, D, H] layout, as before session
16: ``e2former._v2_qk_layout`` patched to False for the model side only), "host_nl" (the eager neighbour list
before each replay, ``neighbors="host"``, as before session 16) and "rms_res" (``E2F_RMS_RESIDUAL=1``: the residual
gradients summed in the norms' backward kernel, the default since session 17), "rms_res_nopre" (rms_res without the
Verlet list's pre-replay move check: ``_moved_too_far`` patched to False, valid here since the atoms do not move),
"qkv" (rms_res with ``E2F_QKV_FUSED=1``, the fused query / key / value projections, the default since session 17;
every other variant runs with ``E2F_QKV_FUSED=0``), "qkv_nopre" (qkv without the pre-replay move check) and "add"
(qkv with ``E2F_RMS_ADD=1``, the residual sums inside the norm kernels, the default since session 17; every other
variant runs with ``E2F_RMS_ADD=0``) and "l0" (add with the final norm's l = 0 row only, ``l0_only``, the default
since session 17; every other variant runs with the model's ``_norm_final`` patched to the full [N, 9, C] norm), run alternately, ``--rounds`` times each, in one
process.  A variant may add environment settings after its name, "l0+E2F_V2_BWD_NUM_WARPS=4+E2F_V2_BWD_HB=64": set
for its capture and calls only (session 18: the attention kernels' launch settings, re-swept on the graphed step).  Each variant's energy and forces are compared with the first's (float32: the same up to the float
atomics' order; TF32 amplifies that order to ~1e-3 in the forces).

    python benchmarks/graphed_breakdown.py OUT.json [--sizes 10000,20000] [--precision tf32]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_end_to_end import fcc_carbon, v15_model, water_box  # noqa: E402


def median_ms(call, repeats):
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def _base(variant: str) -> str:
    """The variant's name without its "+KEY=VALUE" environment settings."""
    return variant.split("+")[0]


def _extra_env(variant: str) -> dict:
    """The variant's "+KEY=VALUE" environment settings."""
    out = {}
    for kv in variant.split("+")[1:]:
        key, sep, val = kv.partition("=")
        if not sep or not key.startswith("E2F_"):
            raise SystemExit(f"variant {variant!r}: expected NAME+E2F_KEY=VALUE+...")
        out[key] = val
    return out


_EXTRA_KEYS: set = set()


def _variant_final_norm(m, variant: str) -> None:
    """Variants before "l0": the final norm in full (what the graph captures; replays do not run Python)."""
    from openmm_e2former.model import E2FormerV2

    if _base(variant) == "l0":
        m.__dict__.pop("_norm_final", None)
    else:
        m._norm_final = lambda x, l0_only: E2FormerV2._norm_final(m, x, False)


def _variant_env(variant: str) -> None:
    """The environment switches of a variant (read at capture and on eager calls); another variant's extra settings
    are removed first."""
    for key in _EXTRA_KEYS:
        os.environ.pop(key, None)
    extra = _extra_env(variant)
    _EXTRA_KEYS.update(extra)
    os.environ.update(extra)
    os.environ["E2F_RMS_RESIDUAL"] = "1" if variant.startswith(("rms_res", "qkv", "add", "l0")) else "0"
    os.environ["E2F_QKV_FUSED"] = "1" if variant.startswith(("qkv", "add", "l0")) else "0"
    os.environ["E2F_RMS_ADD"] = "1" if variant.startswith(("add", "l0")) else "0"


def _without_replay(G, pt, ct, ch):
    """The call ``G(pt, ct, ch)`` with the graph's replay replaced by nothing: what the call costs besides it."""
    def call():
        graph = G._graph
        try:
            G._graph = _NoReplay()
            G(pt, ct, ch)
        finally:
            G._graph = graph
    return call


def _trace(fn):
    """[(name, start µs, duration µs)] of one ``fn()`` + synchronize under torch.profiler: the host's CUDA runtime
    calls of 10 µs or more, and the first and last GPU kernel, from the first event's start."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.time_range.elapsed_us() >= 0]
    t0 = min(e.time_range.start for e in evs)
    gpu = [e for e in evs if e.device_type == torch.autograd.DeviceType.CUDA]
    host = [e for e in evs if e.device_type != torch.autograd.DeviceType.CUDA and e.name.startswith("cuda")
            and e.time_range.elapsed_us() >= 10]
    out = [(e.name[:40], round(e.time_range.start - t0, 1), round(e.time_range.elapsed_us(), 1)) for e in host]
    if gpu:
        first = min(gpu, key=lambda e: e.time_range.start)
        last = max(gpu, key=lambda e: e.time_range.end)
        out += [("GPU first kernel " + first.name[:30], round(first.time_range.start - t0, 1), 0),
                ("GPU last kernel end", round(last.time_range.end - t0, 1), 0), ("GPU kernels", len(gpu), 0)]
    return sorted(out, key=lambda r: r[1] if isinstance(r[1], float) else 1e18)


def _replay_gpu_ms(G, call, repeats):
    """Median GPU time (CUDA events on the current stream) of the graph's replay, replayed alone (``call`` None) or
    inside ``call()``."""
    graph = G._graph
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if call is None:
            start.record()
            graph.replay()
            end.record()
        else:
            G._graph = _TimedReplay(graph, start, end)
            try:
                call()
            finally:
                G._graph = graph
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


class _TimedReplay:
    def __init__(self, graph, start, end):
        self.graph, self.start, self.end = graph, start, end

    def replay(self):
        self.start.record()
        self.graph.replay()
        self.end.record()


class _NoReplay:
    def replay(self):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sizes", default="10000,20000")
    ap.add_argument("--precision", default="tf32")
    ap.add_argument("--variants", default="dh,hd_proj,host_nl")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trace", action="store_true",
                    help="also a torch.profiler trace of one call and one bare replay of the last variant: the host's "
                         "runtime calls and the GPU's first / last kernel, in µs from the call's start (session 17: "
                         "where the call's ~0.6 ms beyond the replay's GPU time goes)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--system", default="fcc", choices=["fcc", "water"],
                    help="FCC carbon (non-periodic; a lattice: many equal distances, whose order within a centre's "
                         "edges is arbitrary) or the periodic water box replicated from water216_pbc")
    args = ap.parse_args()
    from openmm_e2former.graphed import GraphedEnergyForces
    from openmm_e2former.model import e2former as E

    real_layout = E._v2_qk_layout
    prec = args.precision
    torch.backends.cuda.matmul.allow_tf32 = prec in ("tf32", "bf16")
    m = v15_model()
    m.requires_grad_(False)
    m.set_radial_tables(True)
    m.set_precision(prec)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        if args.system == "water":
            z, pos, cell = water_box(n)
            z = [int(x) for x in z]
            ct = torch.as_tensor(cell, dtype=torch.float32, device="cuda")
            ch, pbc = np.asarray(cell, dtype=np.float64), torch.tensor([True, True, True], device="cuda")
        else:
            pos, z = fcc_carbon(n), [6] * n
            ct = ch = pbc = None
        n = len(z)
        pt = torch.as_tensor(pos, dtype=torch.float32, device="cuda")
        graphs = {}
        for rnd in range(args.rounds):
            for variant in args.variants.split(","):
                E._v2_qk_layout = (lambda: False) if _base(variant) == "hd_proj" else real_layout
                _variant_env(variant)
                _variant_final_norm(m, variant)
                if variant not in graphs:          # one graph per variant (captured with its code path)
                    G = GraphedEnergyForces(m, z, periodic=ct is not None,
                                            neighbors="host" if _base(variant) == "host_nl" else None)
                    for _ in range(2):
                        G(pt, ct, ch)
                    if _base(variant).endswith("_nopre"):
                        G._moved_too_far = lambda: False
                    graphs[variant] = G
                G = graphs[variant]
                row = {"system": args.system, "n_atoms": n, "precision": prec, "variant": variant, "round": rnd,
                       "neighbor_list_mode": G.mode, "graph_captured": G._graph is not None,
                       "call_ms": median_ms(lambda: G(pt, ct, ch), args.repeats),
                       "neighbor_edges_ms": median_ms(lambda: m.neighbor_edges(pt, ct, pbc, check_overlap=False),
                                                      args.repeats)}
                if G._graph is not None:
                    row["replay_ms"] = median_ms(G._graph.replay, args.repeats)
                    # the call's other parts, each alone (session 17: the call took ~0.6 ms more than the replay)
                    row["precheck_ms"] = median_ms(G._moved_too_far, args.repeats)
                    row["stats_read_ms"] = median_ms(lambda: G._stats.tolist(), args.repeats)
                    row["call_no_replay_ms"] = median_ms(_without_replay(G, pt, ct, ch), args.repeats)
                    # the replay's GPU time (CUDA events around it), alone and inside the call; the call's wall time
                    # minus the in-call GPU time is what the GPU waits for the host
                    row["replay_gpu_ms"] = _replay_gpu_ms(G, None, args.repeats)
                    row["replay_gpu_in_call_ms"] = _replay_gpu_ms(G, lambda: G(pt, ct, ch), args.repeats)
                row["steps_per_s"] = 1e3 / row["call_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).write_text(json.dumps(rows, indent=1))
        if args.trace:
            for what, fn in (("call", lambda: G(pt, ct, ch)), ("replay", G._graph.replay)):
                rows.append({"n_atoms": n, "trace": what, "events": _trace(fn)})
                print(json.dumps(rows[-1]), flush=True)
        e = {}
        for variant, G in graphs.items():          # the code paths give the same energy and forces
            E._v2_qk_layout = (lambda: False) if _base(variant) == "hd_proj" else real_layout
            _variant_env(variant)
            _variant_final_norm(m, variant)
            e[variant] = G(pt, ct, ch)
        E._v2_qk_layout = real_layout
        names = list(e)
        ea, fa = e[names[0]]
        for other in names[1:]:
            eb, fb = e[other]
            rows.append({"n_atoms": n, "check": f"{other} vs {names[0]}", "dE_rel": float(abs(ea - eb) / abs(ea)),
                         "dF_rel": float((fa - fb).abs().max() / fa.abs().max())})
            print(json.dumps(rows[-1]), flush=True)
        del graphs
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
