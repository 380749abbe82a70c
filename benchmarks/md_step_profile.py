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
    json.dump(res, open(os.path.join(out, "md_step_profile.json"), "w"))


if __name__ == "__main__":
    main()
