"""GPU checks and end-to-end speed of the whole model (issue #4).

Part 1 (correctness): every official parity fixture case on the GPU (fused Triton attention where it
applies, PyTorch elsewhere) against the official outputs.
Part 2 (speed): V1.5-size model (random weights of the v15 fixture), energy + conservative forces,
the paper's App. D systems: FCC carbon (a = 3.8 Å, the N atoms nearest the centre of a large block,
non-periodic) at N = 1k, 10k, 50k, 100k, and a periodic ~100k-atom water box (the 648-atom fixture box
replicated). fp32 (exact fp32 dots in the kernels), TF32, and bf16 (bf16 autocast of the node-level
matrix products, TF32 in the kernels); the force difference to fp32 is recorded. steps/s = 1 / median step time; peak memory
= torch.cuda.max_memory_allocated during one step.

    python benchmarks/gpu_end_to_end.py --out DIR [--parts parity,speed] [--sizes 1000,10000,...]
Results are appended to DIR/gpu_end_to_end.json after every measurement (resumable: done rows are skipped).
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

REPO = Path(__file__).resolve().parents[1]

FIX = next(p for p in [Path(os.environ.get("E2F_FIXTURES", "/nonexistent")),
                       REPO / "shared" / "fixtures" / "official_parity",
                       REPO.parent / "shared" / "fixtures" / "official_parity"] if p.exists())


def fcc_carbon(n: int, a: float = 3.8) -> np.ndarray:
    m = int(np.ceil((n / 4) ** (1 / 3))) + 2
    g = np.arange(m)
    base = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(float)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pts = (base[:, None, :] + basis[None]).reshape(-1, 3) * a
    c = pts.mean(0)
    order = np.argsort(np.linalg.norm(pts - c, axis=1), kind="stable")
    return pts[order[:n]]


def water_box(target: int):
    box = np.load(FIX / "v15" / "water216_pbc.npz")
    z0, p0, cell0 = box["atomic_numbers"], box["positions"], box["cell"]
    r = max(1, int((target / len(z0)) ** (1 / 3)))
    reps = [r, r, r]
    k = 0
    while np.prod(reps) * len(z0) < 0.95 * target:
        reps[2 - k % 3] += 1
        k += 1
    shifts = np.stack(np.meshgrid(*[np.arange(n) for n in reps], indexing="ij"), -1).reshape(-1, 3)
    pos = np.concatenate([p0 + s @ cell0 for s in shifts])
    return np.tile(z0, len(shifts)), pos, cell0 * np.array(reps)[:, None]


def log(rows, path):
    path.write_text(json.dumps(rows, indent=1))


def parity(out: Path, rows):
    import importlib.util
    from openmm_e2former import load_model

    spec = importlib.util.spec_from_file_location("check_parity", REPO / "tests" / "gpu" / "check_parity.py")
    check_parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_parity)
    for variant in ("tiny_qk", "tiny_qkdot", "tiny_direct", "v15"):
        m = load_model(FIX / variant / "checkpoint.pt", device="cuda")
        fused = bool(m.blocks[0].attn.use_fused(torch.zeros(1, device="cuda")))
        for case, de, df, ok in check_parity.compare_cases(m, FIX / variant):
            rows.append({"part": "parity", "variant": variant, "case": case, "dE_eV": de, "dF_eV_A": df,
                         "pass": bool(ok), "fused": fused})
            print(f"parity {variant:12s} {case:32s} dE {de:.2e} dF {df:.2e} {'OK' if ok else 'FAIL'}", flush=True)
        log(rows, out)


#: seconds of the last warm-up call of _timed (kernel compilation, torch.compile, graph capture)
LAST_WARMUP_S = float("nan")


def _timed(call, repeats, include_warmup: bool = False):
    """One warm-up ``call()`` (compilation / graph capture), then ``repeats`` synchronised calls: (median s,
    peak GiB above the memory held before the timed calls, the last call's result).  ``include_warmup``: the peak
    over the warm-up too, above the memory held before it (the CUDA-graph path allocates its memory pool while it
    captures, in the warm-up call; measured after it, its peak read ~0.2 GiB at 10k atoms)."""
    global LAST_WARMUP_S
    if include_warmup:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    LAST_WARMUP_S = time.perf_counter() - t0
    if not include_warmup:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base
    return float(np.median(times)), peak / 2**30, out


def step_time(m, z, pos, cell, pbc, repeats):
    zt = torch.as_tensor(z, device="cuda")
    pt = torch.as_tensor(pos, dtype=torch.float32, device="cuda")
    ct = None if cell is None else torch.as_tensor(cell, dtype=torch.float32, device="cuda")
    pb = None if pbc is None else torch.as_tensor(pbc, device="cuda")
    t, peak, (e, _, f) = _timed(lambda: m.energy_and_forces(zt, pt, ct, pb), repeats)
    return t, peak, float(e), f


def step_time_graphed(m, z, pos, cell, repeats):
    """``step_time`` through ``openmm_e2former.graphed.GraphedEnergyForces`` (the CUDA-graph path the OpenMM force
    takes by default for float32 systems of up to 5,000 atoms; the neighbour list inside the graph where it can):
    what an MD user of our plugin gets per force call, against the official code's eager step."""
    from openmm_e2former.graphed import GraphedEnergyForces

    pt = torch.as_tensor(pos, dtype=torch.float32, device="cuda")
    ct = None if cell is None else torch.as_tensor(cell, dtype=torch.float32, device="cuda")
    ch = None if cell is None else np.asarray(cell, dtype=np.float64)
    G = GraphedEnergyForces(m, [int(x) for x in z], periodic=cell is not None)
    t, peak, (e, f) = _timed(lambda: G(pt, ct, ch), repeats, include_warmup=True)   # the warm-up call captures
    return t, peak, float(e), f, {"neighbor_list": G.mode, "captures": G.captures,
                                                                "graph_captured": G._graph is not None}


def v15_model():
    """The V1.5 fixture checkpoint, or (when only its config.yaml was carried) the same architecture with
    random weights: speed and memory do not depend on the weight values."""
    from openmm_e2former import load_model
    from openmm_e2former.model import E2FormerV2, load_config

    if (FIX / "v15" / "checkpoint.pt").exists():
        return load_model(FIX / "v15" / "checkpoint.pt", device="cuda")
    print("v15 checkpoint not carried: V1.5 config with random weights", flush=True)
    torch.manual_seed(0)
    m = E2FormerV2(load_config(FIX / "v15" / "config.yaml")).cuda().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


#: modes "graphed_fp32" / "graphed_tf32" (the CUDA-graph path) run up to this many atoms
GRAPHED_MAX_ATOMS = 20_000


def speed(out: Path, rows, sizes, modes, budget_s, checkpoint="auto", water=True):
    t_start = time.time()
    m = v15_model()
    m.checkpoint_blocks = {"none": False}.get(checkpoint, checkpoint)
    recompute_qk = os.environ.get("E2F_RECOMPUTE_QK") == "1"     # model.set_recompute_qk (session 10, opt-in)
    m.set_recompute_qk(recompute_qk)
    # E2F_COMPILE=1: model.set_compile (session 11, experimental): torch.compile of the blocks' node-level parts;
    # E2F_COMPILE=graphs: the padded / CUDA-graph path ("graphed_*" modes) uses them as well (in_graphs=True)
    compile_env = os.environ.get("E2F_COMPILE", "")
    compiled = compile_env in ("1", "graphs")
    if compiled:
        m.set_compile(True, in_graphs=compile_env == "graphs")
    # E2F_RADIAL_TABLES=1: model.set_radial_tables (session 11, experimental): the attention's edge MLP read from
    # per-element-pair tables inside the fused kernels; each row also records the force difference to the MLP
    tables = os.environ.get("E2F_RADIAL_TABLES") == "1"
    if tables:
        m.requires_grad_(False)
        m.set_radial_tables(True)
    # E2F_EMULATE_FREE_GIB=F: a smaller card, emulated by a ballast allocation that leaves F GiB of device memory
    # free after the model (what "auto" checkpointing sees and chooses from; the ballast is not in the peak)
    emulate = os.environ.get("E2F_EMULATE_FREE_GIB")
    ballast = None
    if emulate:
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info()
        ballast = torch.empty(max(0, free - int(float(emulate) * 2**30)), dtype=torch.uint8, device="cuda")
    systems = [(f"fcc_carbon_{n}", n) for n in sizes] + ([("water_box_pbc", -1)] if water else [])
    done = {(r["system"], r["mode"]) for r in rows
            if r.get("part") == "speed" and r.get("checkpoint", "auto") == checkpoint}
    ref_forces = {}
    for name, n in systems:
        if n == -1:
            z, pos, cell = water_box(100_000)
            pbc = np.array([True] * 3)
        else:
            pos = fcc_carbon(n)
            z, cell, pbc = np.full(n, 6), None, None
        for mode in modes:
            if (name, mode) in done:
                continue
            if time.time() - t_start > budget_s:
                print("time budget reached; rerun to resume", flush=True)
                return
            graphed = mode.startswith("graphed_")
            prec = mode[len("graphed_"):] if graphed else mode
            if graphed and len(z) > GRAPHED_MAX_ATOMS:
                continue                     # the padded path has no activation checkpointing: small systems only
            torch.backends.cuda.matmul.allow_tf32 = prec in ("tf32", "bf16")
            torch.backends.cudnn.allow_tf32 = prec in ("tf32", "bf16")
            m.set_precision(prec)
            try:
                reps = 5 if len(z) <= 20_000 else 2
                extra = {}
                if graphed:
                    t, peak, e, f, extra = step_time_graphed(m, z, pos, cell, max(reps, 20))
                else:
                    t, peak, e, f = step_time(m, z, pos, cell, pbc, reps)
                row = {"part": "speed", "system": name, "n_atoms": int(len(z)), "mode": mode,
                       "checkpoint": checkpoint, "step_s": t, "steps_per_s": 1.0 / t,
                       "peak_mem_GiB": peak, "energy_eV": e, "warmup_call_s": LAST_WARMUP_S, **extra}
                if recompute_qk:
                    row["recompute_qk"] = True
                if not graphed:
                    row["checkpoint_chosen"] = getattr(m, "last_checkpoint_mode", None)
                if compiled and (m.compile_in_graphs or not graphed):
                    row["compiled_node_parts"] = True
                if ballast is not None:
                    row["emulated_free_GiB"] = float(emulate)
                if tables and not graphed:
                    m.set_radial_tables(False)
                    _t, _p, _e, f_mlp = step_time(m, z, pos, cell, pbc, 1)
                    m.set_radial_tables(True)
                    row["radial_tables"] = True
                    row["max_force_diff_vs_mlp_eV_A"] = float((f - f_mlp).abs().max())
                    row["max_force_eV_A"] = float(f_mlp.abs().max())
                if mode == "fp32":
                    ref_forces[name] = f
                elif name in ref_forces:
                    row["max_force_diff_vs_fp32_eV_A"] = float((f - ref_forces[name]).abs().max())
            except torch.cuda.OutOfMemoryError as exc:
                row = {"part": "speed", "system": name, "n_atoms": int(len(z)), "mode": mode,
                       "checkpoint": checkpoint, "error": "OOM",
                       "detail": str(exc)[:200]}
            torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
            log(rows, out)


def copy_sites(events, names=("aten::copy_", "aten::_to_copy")):
    """[(device time us, count, site)] of the copy operations in a profile recorded with ``with_stack``, grouped by
    the nearest model / kernels source lines among each one's ancestors (innermost first), largest first; copies
    nested in another copy (``_to_copy`` -> ``copy_``) count once."""
    agg = {}
    for e in events:
        if e.name not in names:
            continue
        p, nested, sites = e.cpu_parent, False, []
        while p is not None:
            if p.name in names:
                nested = True
                break
            if ("model/" in p.name or "kernels/" in p.name) and "(" in p.name:
                sites.append(p.name.split("/")[-1])
            elif p.name.startswith("autograd::engine::evaluate_function: "):     # a backward op: which node
                sites.append(p.name.split(": ", 1)[1])
            p = p.cpu_parent
        if nested:
            continue
        site = " <- ".join(sites[:3]) or "(autograd)"
        t, c = agg.get((e.name, site), (0.0, 0))
        agg[(e.name, site)] = (t + e.device_time_total, c + 1)
    return sorted(((t, c, f"{k[0]:15s} {k[1]}") for k, (t, c) in agg.items()), key=lambda r: -r[0])


def profile(out: Path, n: int = 10000, mode: str = "fp32"):
    """CUDA time per kernel (torch.profiler) of one energy + forces step, FCC carbon, written to
    ``profile_<n>_<mode>.txt``: where the step's time goes."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    m = v15_model()
    tables = os.environ.get("E2F_RADIAL_TABLES") == "1"        # as in speed(): the radial tables (session 12)
    if tables:
        m.requires_grad_(False)
        m.set_radial_tables(True)
    torch.backends.cuda.matmul.allow_tf32 = mode in ("tf32", "bf16")
    m.set_precision(mode)
    z = torch.full((n,), 6, device="cuda")
    pos = torch.as_tensor(fcc_carbon(n), dtype=torch.float32, device="cuda")
    for _ in range(2):
        m.energy_and_forces(z, pos, None, None)
    torch.cuda.synchronize()
    # shapes and Python stacks too: the copies (casts, .contiguous(), layout changes) are ~16 % of the 100k bf16
    # step (session 14) and the per-kernel view cannot say which source lines make them
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True,
                  with_stack=True) as prof:
        m.energy_and_forces(z, pos, None, None)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    # by self CUDA time too, with names wide enough to tell the kernels apart
    table_self = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=110)
    copies = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::copy_", "aten::_to_copy")]
    copies.sort(key=lambda e: -e.device_time_total)
    lines = [f"{e.device_time_total / 1e3:9.3f} ms  x{e.count:<4d} {e.key:15s} {str(e.input_shapes)[:150]}"
             for e in copies[:40]]
    lines += ["", "by the model's source lines above each copy (Python events of the profiler's tree; the backward's "
              "copies have none: '(autograd)')"]
    for t, cnt, site in copy_sites(prof.events())[:30]:
        lines.append(f"{t / 1e3:9.3f} ms  x{cnt:<4d} {site[:220]}")
    # the elementwise adds too (residual adds in the forward, gradient sums in the backward: session 17)
    lines += ["", "adds (aten::add / aten::add_) by source lines or backward node"]
    for t, cnt, site in copy_sites(prof.events(), ("aten::add", "aten::add_"))[:30]:
        lines.append(f"{t / 1e3:9.3f} ms  x{cnt:<4d} {site[:220]}")
    # every operation by input shape too (which GEMM / GEMV / elementwise pass is which)
    table_shapes = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=50,
                                                                      max_name_column_width=60,
                                                                      max_shapes_column_width=120)
    (out.parent / f"profile_{n}_{mode}{'_tables' if tables else ''}.txt").write_text(
        "## by total CUDA time\n" + table + "\n\n## by self CUDA time\n" + table_self
        + "\n\n## by self CUDA time and input shapes\n" + table_shapes
        + "\n\n## copies (aten::copy_ / aten::_to_copy) by input shape, then by model source lines\n"
        + "\n".join(lines) + "\n")
    print(table[:6000], flush=True)


def diagnose(n: int = 1000):
    """Peak GPU memory after each stage of one energy + forces evaluation (FCC carbon)."""
    m = v15_model()
    pos = torch.as_tensor(fcc_carbon(n), dtype=torch.float32, device="cuda").requires_grad_(True)
    z = torch.full((n,), 6, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gib = lambda: (torch.cuda.max_memory_allocated() - base) / 2**30  # noqa: E731
    g = m.build_graph(pos, None, None)
    print(f"diag N={n} E={g.center.numel()} graph peak {gib():.2f} GiB", flush=True)
    x = m.edge_degree(z, g)
    print(f"diag edge_degree peak {gib():.2f} GiB", flush=True)
    system = torch.zeros(1, x.shape[2], device="cuda")
    for i, b in enumerate(m.blocks):
        x = b(x, system, z, g)
        print(f"diag block {i} peak {gib():.2f} GiB fused={b.attn.use_fused(x)}", flush=True)
    e = m.heads.energy(m.norm_final(x)[:, 0], 0).sum()
    torch.autograd.grad(e, pos)
    print(f"diag backward peak {gib():.2f} GiB", flush=True)


def render_md(rows, title: str) -> str:
    """Markdown tables of a results JSON (parity per variant, then speed per system/mode/checkpoint)."""
    lines = [f"# {title}", ""]
    par = [r for r in rows if r.get("part") == "parity"]
    if par:
        lines += ["## Whole model on the GPU vs the official outputs", "",
                  "| variant | cases | pass | max dE_model (eV) | max dF (eV/Å) | fused attention |",
                  "|---|---:|---:|---:|---:|---|"]
        for v in dict.fromkeys(r["variant"] for r in par):
            rs = [r for r in par if r["variant"] == v]
            lines.append(f"| {v} | {len(rs)} | {sum(r['pass'] for r in rs)} | {max(r['dE_eV'] for r in rs):.1e} | "
                         f"{max(r['dF_eV_A'] for r in rs):.1e} | {'yes' if all(r['fused'] for r in rs) else 'no (PyTorch)'} |")
        lines += ["", "Tolerances (fixture README): |dE| <= max(1e-4, 1e-6|E|) eV, max |dF| <= 1e-3 eV/Å.", ""]
    sp = [r for r in rows if r.get("part") == "speed"]
    if sp:
        lines += ["## Energy + conservative forces, V1.5-size model (random weights)", "",
                  "| system | atoms | mode | checkpointing | ms/step | steps/s | peak GiB | max abs(F - F_fp32) eV/Å |",
                  "|---|---:|---|---|---:|---:|---:|---:|"]
        for r in sp:
            if "error" in r:
                lines.append(f"| {r['system']} | {r['n_atoms']:,} | {r['mode']} | {r.get('checkpoint', 'auto')} | "
                             f"{r['error']} | | | |")
                continue
            d = r.get("max_force_diff_vs_fp32_eV_A")
            lines.append(f"| {r['system']} | {r['n_atoms']:,} | {r['mode']} | {r.get('checkpoint', 'auto')} | "
                         f"{1e3 * r['step_s']:.1f} | {r['steps_per_s']:.3f} | {r['peak_mem_GiB']:.1f} | "
                         f"{'' if d is None else f'{d:.4f}'} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--parts", default="parity,speed")
    ap.add_argument("--sizes", default="1000,10000,20000,50000,100000")
    ap.add_argument("--modes", default="fp32,tf32,bf16")
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--checkpoint", default="auto", help="model.checkpoint_blocks: auto, block, fine, none")
    ap.add_argument("--no-water", action="store_true", help="FCC carbon only (skip the ~100k periodic water box)")
    ap.add_argument("--from-json", default=None,
                    help="comma-separated results JSONs: merge them, render --md (and --merged JSON) and exit")
    ap.add_argument("--md", default=None)
    ap.add_argument("--merged", default=None)
    ap.add_argument("--title", default="GPU end-to-end: parity and speed")
    args = ap.parse_args()
    if args.from_json:
        rows = [r for f in args.from_json.split(",") for r in json.loads(Path(f).read_text())]
        if args.merged:
            Path(args.merged).write_text(json.dumps(rows, indent=1))
        text = render_md(rows, args.title)
        if args.md:
            Path(args.md).write_text(text)
        print(text)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = Path(args.out) / "gpu_end_to_end.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    if "diagnose" in args.parts:
        diagnose()
    if "profile" in args.parts:
        given = any(a == "--modes" or a.startswith("--modes=") for a in sys.argv)
        modes = dict.fromkeys(m.replace("graphed_", "") for m in args.modes.split(",")) if given else ["fp32"]
        for mode in modes:                          # --modes: one profile each (eager; graphed_X profiles X)
            profile(out, int(args.sizes.split(",")[0]), mode)
    if "parity" in args.parts and not any(r.get("part") == "parity" for r in rows):
        parity(out, rows)
    if "speed" in args.parts:
        speed(out, rows, [int(s) for s in args.sizes.split(",") if s], args.modes.split(","), args.budget_s,
              args.checkpoint, not args.no_water)


if __name__ == "__main__":
    main()
