"""Radial tables of the edge MLPs (``E2FormerV2.set_radial_tables``, session 11) on the CPU: speed of an energy +
forces call with and without them, and what they change in the forces (against the float64 model without
tables, beside the float32 model's own distance to it).

    python benchmarks/radial_table_cpu.py [--out benchmarks/results/radial_table_cpu.json]

Systems: the bundled model on a 648-atom water box, and a V1.5-size model (the v15 fixture config, random
weights) on an 81-atom one; float32, 2 threads, best of 3 calls after a warm-up (which builds the tables)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _best(call, n=3):
    call()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = call()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


def measure(name, make_model, n_side):
    from helpers import water_box

    z, pos, cell = water_box(n_side, 3.1, seed=0)
    z = torch.tensor(z)
    pbc = torch.tensor([True] * 3)
    m64 = make_model(torch.float64)
    ref = m64.energy_and_forces(z, torch.tensor(pos), torch.tensor(cell), pbc)[2]
    m = make_model(torch.float32)
    p32, c32 = torch.tensor(pos, dtype=torch.float32), torch.tensor(cell, dtype=torch.float32)
    t_exact, out = _best(lambda: m.energy_and_forces(z, p32, c32, pbc))
    t_build0 = time.perf_counter()
    m.set_radial_tables(True)
    m.energy_and_forces(z, p32, c32, pbc)
    t_first = time.perf_counter() - t_build0
    t_tab, out_t = _best(lambda: m.energy_and_forces(z, p32, c32, pbc))
    scale = float(ref.abs().max())
    row = {"system": name, "n_atoms": int(len(z)), "exact_s": t_exact, "tables_s": t_tab,
           "speedup": t_exact / t_tab, "first_call_with_tables_s": t_first,
           "fp32_exact_force_err_rel": float((out[2].double() - ref).abs().max()) / scale,
           "fp32_tables_force_err_rel": float((out_t[2].double() - ref).abs().max()) / scale,
           "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "radial_table_cpu.json"))
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    from openmm_e2former import load_model
    from openmm_e2former.model import E2FormerV2, load_config
    from helpers import FIXTURES

    def bundled(dtype):
        m = load_model(dtype=dtype)
        return m.requires_grad_(False)

    sd = {}

    def v15(dtype):
        torch.manual_seed(0)
        m = E2FormerV2(load_config(FIXTURES / "v15" / "config.yaml")).to(dtype).eval()
        if not sd:
            sd.update(m.state_dict())
        m.load_state_dict(sd)
        return m.requires_grad_(False)

    rows = [measure("bundled model, water box", bundled, 6), measure("V1.5 size (random), water box", v15, 3)]
    Path(args.out).write_text(json.dumps(rows, indent=1))
    md = ["| system | atoms | exact s | tables s | speed-up | force error vs float64: exact fp32 / tables fp32 |",
          "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['system']} | {r['n_atoms']} | {r['exact_s']:.3f} | {r['tables_s']:.3f} | "
                  f"{r['speedup']:.2f}x | {r['fp32_exact_force_err_rel']:.1e} / {r['fp32_tables_force_err_rel']:.1e} |")
    Path(args.out).with_suffix(".md").write_text(
        "# Radial tables on the CPU (`benchmarks/radial_table_cpu.py`, 2 threads, float32)\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
