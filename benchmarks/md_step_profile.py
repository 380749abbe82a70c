"""Where the time of ONE small-system MD force call goes on the GPU (default model, a 600-water box and a
22-atom dipeptide): wall time per energy_and_forces call, CUDA-synchronised, and the top CPU-side ops of a
torch.profiler trace.  Usage: python benchmarks/md_step_profile.py PDB [--out DIR]"""
import json, sys, time, os
import numpy as np
import torch


def main():
    from openmm_e2former import load_model
    from openmm import app, unit
    pdb = app.PDBFile(sys.argv[1])
    out = sys.argv[2] if len(sys.argv) > 2 else "."
    z = torch.tensor([a.element.atomic_number for a in pdb.topology.atoms()], device="cuda")
    pos = torch.tensor(np.array(pdb.getPositions(asNumpy=True)._value) * 10.0, dtype=torch.float32, device="cuda")
    box = pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.angstrom)
    cell = torch.tensor(np.array([[c for c in v] for v in box]), dtype=torch.float32, device="cuda")
    pbc = torch.tensor([True] * 3, device="cuda")
    m = load_model(device="cuda")
    for _ in range(3):
        m.energy_and_forces(z, pos, cell, pbc, validate=False)
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        m.energy_and_forces(z, pos + 0.001 * torch.randn_like(pos), cell, pbc, validate=False)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    res = {"validate_off": {"median_ms": 1e3 * float(np.median(ts)), "min_ms": 1e3 * float(np.min(ts))}}
    print("validate_off", res["validate_off"], flush=True)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            m.energy_and_forces(z, pos, cell, pbc, validate=False)
        torch.cuda.synchronize()
    t = prof.key_averages().table(sort_by="cpu_time_total", row_limit=45)
    t2 = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    open(os.path.join(out, "md_step_profile.txt"), "w").write(t + "\n\n" + t2)
    print(t2[:6000])
    res["graphed"] = graphed_breakdown(m, z, pos, cell)
    print("graphed", res["graphed"], flush=True)
    # the padded path's GPU work kernel by kernel (run eagerly, no graph): what a replay spends its time on
    from openmm_e2former.graphed import GraphedEnergyForces
    gr = GraphedEnergyForces(m, z.tolist(), periodic=True, capture=False)
    for _ in range(3):
        gr(pos, cell)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            gr(pos, cell)
        torch.cuda.synchronize()
    t3 = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof2:
        for _ in range(3):
            m.energy_and_forces(z, pos, cell, pbc, validate=False)
        torch.cuda.synchronize()
    t4 = prof2.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
    open(os.path.join(out, "md_step_profile_padded_cuda.txt"), "w").write(
        "## padded path (eager, no graph), 3 calls, by self CUDA time\n" + t3 +
        "\n\n## eager path, 3 calls, by self CUDA time\n" + t4)
    print(t3[:4000], flush=True)
    json.dump(res, open(os.path.join(out, "md_step_profile.json"), "w"))


def graphed_breakdown(m, z, pos, cell, repeats: int = 20) -> dict:
    """The CUDA-graph path (on by default for small float32 CUDA systems), once per neighbour-list placement:
    "device" (the list inside the graph, the default for orthorhombic boxes > 2 cutoffs since session 6) and
    "host" (the eager list + edge padding before the replay, the only path before).  ms per whole
    ``GraphedEnergyForces`` call and per graph replay alone, CUDA-synchronised medians.  On a non-CUDA model the
    padded path runs without a graph (smoke test)."""
    from openmm_e2former.graphed import GraphedEnergyForces
    cuda = pos.is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def med(fn):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(ts))

    out = {}
    for where in ("device", "host"):
        gr = GraphedEnergyForces(m, z.tolist(), periodic=True, capture=cuda, neighbors=where)
        for _ in range(3):
            gr(pos, cell)
        sync()
        rec = {"call_ms": med(lambda: gr(pos, cell)), "mode": gr.mode, "captures": gr.captures,
               "edge_capacity": gr.edge_capacity, "degree_bound": gr.degree_bound}
        if gr._graph is not None:
            rec["replay_ms"] = med(gr._graph.replay)
        out[where] = rec
    return out


if __name__ == "__main__":
    main()
