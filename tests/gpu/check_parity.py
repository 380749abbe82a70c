"""GPU parity with the official outputs, per fixture variant, with the kernels as the model launches them.

    python tests/gpu/check_parity.py FIXTURES_DIR OUT.json [--variants tiny_qk,tiny_qkdot,tiny_direct,v15]

FIXTURES_DIR holds ``<variant>/checkpoint.pt`` and the variant's ``*.npz`` cases (the layout of
``shared/fixtures/official_parity``); a variant whose checkpoint is missing is reported and skipped (the V1.5
checkpoint, 47 MB, does not fit beside the carried wheels, so it is checked in a call of its own with only that
variant carried).  Gate per case: |dE| <= max(1e-4, 1e-6 |E|) eV and max |dF| <= 1e-3 eV/A (as
``benchmarks/gpu_end_to_end.py --parts parity``).  Each row also records the RBF window the attention kernels use
for the model (``kernels.attention_triton_v2.rbf_window``: 32 for the V1.5 model's 256 centres, 0 = every centre).
Session 9 (H200): 70 of 70 pass, max |dF| 2.7e-4 eV/A (``benchmarks/results/parity_gpu_s9_h200.json``).
"""
from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch


def compare_cases(model, variant_dir):
    """[(case name, |dE| eV, max |dF| eV/A, within the gate)] of every ``*.npz`` case in variant_dir, predicted by
    ``model`` (also used by ``benchmarks/gpu_end_to_end.py --parts parity``)."""
    out = []
    for f in sorted(pathlib.Path(variant_dir).glob("*.npz")):
        d = np.load(f)
        cell = d["cell"] if d["pbc"].any() else None
        r = model.predict(d["atomic_numbers"], d["positions"], cell, d["pbc"], int(d["charge"]),
                          int(d["multiplicity"]), head=str(d["head"]))
        de = abs(r["energy_model"] - float(d["energy_model"]))
        df = float(np.abs(r["forces"] - d["forces"]).max())
        out.append((f.stem, de, df, de <= max(1e-4, 1e-6 * abs(float(d["energy_model"]))) and df <= 1e-3))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixtures")
    ap.add_argument("out")
    ap.add_argument("--variants", default="tiny_qk,tiny_qkdot,tiny_direct,v15")
    ap.add_argument("--device", default="cuda", help="cpu: a rehearsal on the reference path")
    ap.add_argument("--radial-tables", action="store_true",
                    help="frozen weights with model.set_radial_tables(True) (the edge MLPs read from tables)")
    args = ap.parse_args(argv)
    from openmm_e2former import load_model
    from openmm_e2former.kernels import attention_triton_v2 as V2

    root = pathlib.Path(args.fixtures)
    rows, skipped = [], []
    for variant in args.variants.split(","):
        ckpt = root / variant / "checkpoint.pt"
        if not ckpt.exists():
            skipped.append(variant)
            print(f"{variant}: no checkpoint at {ckpt}, skipped", flush=True)
            continue
        m = load_model(ckpt, device=args.device)
        if args.radial_tables:
            m.requires_grad_(False)
            m.set_radial_tables(True)
        win = V2.rbf_window(m.rbf_offsets, float(m.rbf_coeff), float(m.cutoff))
        for case, de, df, ok in compare_cases(m, root / variant):
            rows.append(dict(variant=variant, case=case, dE_eV=de, dF_eV_A=df, passed=bool(ok), rbf_window=win))
            print(f"{variant:12s} {case:32s} dE {de:.2e} dF {df:.2e} {'OK' if ok else 'FAIL'} window {win}",
                  flush=True)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    res = dict(device=dev, torch=torch.__version__, radial_tables=args.radial_tables, rows=rows, skipped=skipped,
               passed=sum(r["passed"] for r in rows), cases=len(rows),
               max_dF_eV_A=max((r["dF_eV_A"] for r in rows), default=None))
    pathlib.Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"{res['passed']} of {res['cases']} pass; max |dF| {res['max_dF_eV_A']}; skipped: {skipped or 'none'}")
    return 0 if res["passed"] == res["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
