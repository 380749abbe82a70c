"""GPU check of the CUDA-graph path (``openmm_e2former.graphed``, opt-in ``E2FORMER_CUDA_GRAPHS=1``).

For the bundled default model on a 600-water box (1,800 atoms, periodic) and a solvated capped alanine
(ACE-ALA-NME in a 2 nm water box), float32 (the kernels) and float64 (the PyTorch route):

* correctness: graphed vs eager (``model.energy_and_forces``) energy and forces over a few perturbed steps,
  then one compressed step that needs a larger edge capacity (the graph is captured again), and both float32
  results against the float64 eager ones;
* speed: ms per call, median of ``--repeats`` calls (each followed by a device synchronisation), eager vs
  graphed; peak memory of the graphed path;
* optionally (``--openmm-steps``) OpenMM steps/s of a PythonForce-only System with and without the opt-in.

    python benchmarks/gpu_graphed_check.py --out DIR [--repeats 50] [--openmm-steps 100]
    python benchmarks/gpu_graphed_check.py --out DIR --device cpu --waters 27 --repeats 3   # smoke test

Writes DIR/gpu_graphed_check.json after every system.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("training") is None:
    # appended, not prepended: the repository's openmm_e2former/ has no model/ or kernels/ inside (the install,
    # or the GPU chain's package mapping, provides them), so it must not shadow the importable package
    sys.path.append(str(REPO))


def systems(waters: int, seed: int):
    from training.generate import build_capped, build_water_box

    for name, b in ((f"water_{waters}", build_water_box(waters, 0.997, seed)),
                    ("ace_ala_nme_solvated", build_capped("A", None, True, seed))):
        yield name, np.asarray(b.z, dtype=np.int64), b.positions * 10.0, b.box * 10.0, int(b.charge)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_ms(fn, dev, repeats):
    fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def check_system(name, z, pos, box, charge, dtype, dev, repeats):
    from openmm_e2former import load_model
    from openmm_e2former.graphed import GraphedEnergyForces

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_model(device=dev, dtype=dtype)
    zt = torch.as_tensor(z, device=dev)
    pos0 = torch.as_tensor(pos, dtype=dtype, device=dev)
    cell0 = torch.as_tensor(box, dtype=dtype, device=dev)
    pbc = torch.tensor([True, True, True], device=dev)
    eager = lambda p, c: m.energy_and_forces(zt, p, c, pbc, charge, validate=False)
    m.energy_and_forces(zt, pos0, cell0, pbc, charge)              # validated once, as the OpenMM force does
    G = GraphedEnergyForces(m, z, periodic=True, charge=charge)
    gen = torch.Generator().manual_seed(0)
    steps = [(pos0 + 0.02 * k * torch.randn(pos0.shape, generator=gen, dtype=torch.float64).to(dev, dtype), cell0)
             for k in range(4)] + [(pos0 * 0.97, cell0 * 0.97)]   # the last one: more edges -> re-capture
    rows, results = [], []
    for k, (p, c) in enumerate(steps):
        e0, _, f0 = eager(p, c)
        e1, f1 = G(p, c)
        df = float((f1 - f0).abs().max())
        rows.append({"step": k, "energy_eager_eV": float(e0), "dE_eV": abs(float(e1) - float(e0)), "dF_max_eV_A": df,
                     "dF_rel": df / float(f0.abs().max()), "edges": int(m.neighbor_edges(p, c, pbc)[0].numel()),
                     "edge_capacity": G.edge_capacity, "degree_bound": G.degree_bound, "captures": G.captures,
                     "neighbor_list": G.mode})
        results.append((float(e0), f0.double().cpu(), float(e1), f1.double().cpu()))
    p, c = steps[0]
    out = {"system": name, "atoms": len(z), "dtype": str(dtype).replace("torch.", ""), "steps": rows,
           "graph_captured": G._graph is not None, "capture_error": repr(G.capture_error) if G.capture_error else None,
           "worst_dF_rel": max(r["dF_rel"] for r in rows), "worst_dE_eV": max(r["dE_eV"] for r in rows)}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    c_host = c.detach().cpu().numpy()        # as the OpenMM force passes it (no device -> host read per call)
    out["ms_graphed"] = median_ms(lambda: G(p, c, c_host), dev, repeats)
    if dev.type == "cuda":
        out["peak_GiB_graphed"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    out["ms_eager"] = median_ms(lambda: eager(p, c), dev, repeats)
    out["speedup"] = out["ms_eager"] / out["ms_graphed"]
    out["neighbor_list"] = G.mode        # "device": inside the graph (session 6); "host": eager, before the replay
    # the same graphed call with the neighbour list forced out of the graph (the path before session 6)
    H = GraphedEnergyForces(m, z, periodic=True, charge=charge, neighbors="host")
    e2, f2 = H(p, c)
    out["host_list_dF_rel_vs_device_list"] = float((f2 - G(p, c)[1]).abs().max() / f2.abs().max())
    out["ms_graphed_host_list"] = median_ms(lambda: H(p, c, c_host), dev, repeats)
    return out, results


def openmm_steps_per_s(z, pos, box, charge, dev, steps, cuda_graphs):
    import openmm

    from openmm_e2former.force import create_python_force

    system = openmm.System()
    for zi in z:
        system.addParticle(2.0 * max(int(zi), 1))                  # heavy hydrogens: only timing matters here
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box / 10.0])
    system.addForce(create_python_force(z.tolist(), periodic=True, charge=charge, device=str(dev),
                                        cuda_graphs=cuda_graphs))
    ctx = openmm.Context(system, openmm.LangevinMiddleIntegrator(300, 1.0, 0.0005),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos / 10.0)
    ctx.getIntegrator().step(5)                                    # first (validated) call, capture, warm-up
    t0 = time.perf_counter()
    ctx.getIntegrator().step(steps)
    return steps / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--waters", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--openmm-steps", type=int, default=0, help="also time OpenMM steps (0: skip)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (use --device cpu for a smoke test of the eager padded path)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_graphed_check.json"
    report = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "repeats": args.repeats, "systems": []}
    for name, z, pos, box, charge in systems(args.waters, args.seed):
        results = {}
        for dt in args.dtypes.split(","):
            try:
                row, results[dt] = check_system(name, z, pos, box, charge, getattr(torch, dt), dev, args.repeats)
            except Exception:  # keep the other systems' results
                row = {"system": name, "dtype": dt, "error": traceback.format_exc()}
            report["systems"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "steps"}), flush=True)
            path.write_text(json.dumps(report, indent=1))
        if "float32" in results and "float64" in results:
            # for scale: float32 eager and graphed against float64 eager, per step (max |dE| eV, max |dF| / max |F|)
            cmp = {"eager": [], "graphed": []}
            for (e32, f32, g32, h32), (e64, f64, _, _) in zip(results["float32"], results["float64"]):
                scale = float(f64.abs().max())
                cmp["eager"].append([abs(e32 - e64), float((f32 - f64).abs().max()) / scale])
                cmp["graphed"].append([abs(g32 - e64), float((h32 - f64).abs().max()) / scale])
            report[f"{name}_fp32_vs_fp64_eager"] = cmp
        if args.openmm_steps:
            for flag in (False, True):
                key = f"openmm_steps_per_s_{'graphed' if flag else 'eager'}"
                try:
                    report[f"{name}_{key}"] = openmm_steps_per_s(z, pos, box, charge, dev, args.openmm_steps, flag)
                except Exception:
                    report[f"{name}_{key}"] = traceback.format_exc()
                print(key, report[f"{name}_{key}"], flush=True)
        path.write_text(json.dumps(report, indent=1))
    if "float32" in args.dtypes.split(","):
        try:
            report["batched"] = check_batched(list(systems(args.waters, args.seed)), dev, args.repeats)
        except Exception:
            report["batched"] = {"error": traceback.format_exc()}
        print("batched", json.dumps({k: v for k, v in report["batched"].items() if k != "per_system"}), flush=True)
        path.write_text(json.dumps(report, indent=1))
    print("wrote", path)


def check_batched(syss, dev, repeats):
    """``BatchedGraphedEnergyForces`` over all systems at once (float32, graphed on CUDA) against each system's
    eager ``energy_and_forces``: worst relative force difference, energy differences, ms per batched call vs the
    sum of the eager calls (what ``training.stability --engine batched --graphed`` runs)."""
    from openmm_e2former import load_model
    from openmm_e2former.graphed import BatchedGraphedEnergyForces

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = load_model(device=dev, dtype=torch.float32)
    pbc = torch.tensor([True, True, True], device=dev)
    zs = [torch.as_tensor(z, device=dev) for _, z, _, _, _ in syss]
    pos = [torch.as_tensor(p, dtype=torch.float32, device=dev) for _, _, p, _, _ in syss]
    cells = [torch.as_tensor(b, dtype=torch.float32, device=dev) for _, _, _, b, _ in syss]
    charges = [int(q) for *_, q in syss]
    B = BatchedGraphedEnergyForces(m, [z.tolist() for z in zs], [True] * len(syss), charges)
    allpos, allcell = torch.cat(pos), torch.stack(cells).cpu().numpy()   # host cells, as the stability engine
    e, f = B(allpos, allcell)
    e, f = B(allpos, allcell)                                # (a replay on CUDA)
    per, worst = [], 0.0
    for k, (fk, z, p, c, q) in enumerate(zip(f.split([len(z) for z in zs]), zs, pos, cells, charges)):
        e0, _, f0 = m.energy_and_forces(z, p, c, pbc, q, validate=False)
        rel = float((fk - f0).abs().max() / f0.abs().max())
        worst = max(worst, rel)
        per.append({"system": syss[k][0], "dE_eV": abs(float(e[k]) - float(e0)), "dF_rel": rel})
    ms_b = median_ms(lambda: B(allpos, allcell), dev, repeats)
    ms_e = sum(median_ms(lambda z=z, p=p, c=c, q=q: m.energy_and_forces(z, p, c, pbc, q, validate=False), dev,
                         repeats) for z, p, c, q in zip(zs, pos, cells, charges))
    return {"systems": len(syss), "atoms": int(allpos.shape[0]), "graph_captured": B._graph is not None,
            "capture_error": repr(B.capture_error) if B.capture_error else None, "neighbor_list": B.mode,
            "worst_dF_rel": worst, "per_system": per, "ms_batched_graphed": ms_b, "ms_eager_sum": ms_e}


if __name__ == "__main__":
    main()
