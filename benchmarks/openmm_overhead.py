"""Per-step overhead of the E2Former-V2 OpenMM force's data path on the CUDA platform.

For N = 1k / 10k / 100k particles this times MD steps of

* ``base``    : N particles in a periodic box with a cheap MM force (CustomExternalForce restraint),
* ``empty``   : base + an empty ``openmm.PythonForce`` (returns 0 and a preallocated zero array),
* ``naive``   : base + the usual openmm-ml pattern (``getPositions(asNumpy=True)`` -> ``torch.tensor`` on the
                GPU -> autograd -> ``.cpu().numpy()``) around a trivial model,
* ``ours_analytic``: as ``ours`` with analytic forces (F = -2 k r, no autograd): our data path alone,
* ``ours``    : base + :func:`openmm_e2former.force.create_python_force` with the trivial
                ``QuadraticTestModel`` (E = k sum r^2, autograd forces): exactly the buffers and copies of
                the real force (pinned host buffers, one H2D + one D2H copy, one sync per step),
* ``model``   : optional (``--model PATH``): the real E2Former-V2 checkpoint through the same force,

and reports the time added per step relative to ``base``.  Every variant runs in its own Context; the
median of ``--repeats`` timed blocks of ``--steps`` steps (after warm-up) is used.

Usage: python benchmarks/openmm_overhead.py --json out.json --md out.md [--sizes 1000,10000,100000]
       python benchmarks/openmm_overhead.py --from-json out.json --md out.md   (markdown of an existing JSON;
       needs neither openmm nor a GPU)

The markdown has columns only for the variants that ran: ms per step of each, the time added to ``base`` (if
it ran) and the time added over ``empty`` (if it ran: what the force's own work costs above OpenMM's
PythonForce floor), and, with ``--breakdown``, a table of the pieces of our force's step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:  # running from a checkout that is not pip-installed: map model/ and kernels/ like setup.py does
    import openmm_e2former.model  # noqa: F401
except ImportError:
    import importlib.util

    _REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

    class _SubpackageFinder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            sub = {"openmm_e2former.model": "model", "openmm_e2former.kernels": "kernels"}.get(name)
            if sub is None:
                return None
            d = os.path.join(_REPO, sub)
            return importlib.util.spec_from_file_location(name, os.path.join(d, "__init__.py"),
                                                          submodule_search_locations=[d])

    sys.meta_path.insert(0, _SubpackageFinder)

_IMPORT_ERR = None
try:  # not needed for --from-json (rewriting the markdown of an existing JSON)
    import torch  # noqa: E402  (import torch before openmm: harmless and matches openmm-torch's rule)
    import openmm  # noqa: E402
    from openmm import unit  # noqa: E402

    from openmm_e2former.force import (  # noqa: E402
        QUADRATIC_TEST_MODEL,
        QUADRATIC_TEST_MODEL_ANALYTIC,
        QuadraticTestModel,
        create_python_force,
    )
except ImportError as _exc:
    _IMPORT_ERR = _exc


class EmptyCompute:
    def __init__(self, n):
        self.zeros = np.zeros((n, 3))

    def __call__(self, state):
        return 0.0, self.zeros


class NaiveCompute:
    """The common openmm-ml pattern (no pinned buffers, Quantity conversions, fresh tensors each step)."""

    def __init__(self, n, device):
        self.n = n
        self.device = device
        self.model = None

    def __getstate__(self):
        return {"n": self.n, "device": self.device}

    def __setstate__(self, s):
        self.__init__(s["n"], s["device"])

    def __call__(self, state):
        if self.model is None:
            self.model = QuadraticTestModel(device=self.device)
        pos = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        p = torch.tensor(pos, dtype=torch.float32, device=self.device)
        c = torch.tensor(box, dtype=torch.float32, device=self.device)
        e, f = self.model.energy_and_forces(None, p, c, None, 0, 1, None)
        return float(e) * 96.48533212331002, f.cpu().numpy() * 964.8533212331002


def make_system(n, density=100.0):
    """n particles on a jittered lattice at `density` particles/nm^3, periodic cubic box, with a weak
    restraint to the origin that is *identical for every particle*.

    (Per-particle parameters, e.g. one restraint centre per particle, make every particle a distinct
    "molecule" for OpenMM's CUDA/OpenCL ComputeContext::findMoleculeGroups, whose grouping is
    O(molecules x distinct molecules): minutes of Context creation at 100k particles.)"""
    L = (n / density) ** (1.0 / 3.0)
    m = int(np.ceil(n ** (1.0 / 3.0)))
    g = (np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] + 0.5) * (L / m)
    rng = np.random.default_rng(0)
    pos = g + rng.normal(scale=0.01, size=g.shape)
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(L, 0, 0), openmm.Vec3(0, L, 0), openmm.Vec3(0, 0, L))
    restraint = openmm.CustomExternalForce("0.5*k*(x^2+y^2+z^2)")
    restraint.addGlobalParameter("k", 1e-3)
    for i in range(n):
        system.addParticle(12.0)
        restraint.addParticle(i, [])
    system.addForce(restraint)
    return system, pos


def time_variant(system, pos, platform_name, props, steps, warmup, repeats):
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.001 * unit.picosecond)
    plat = openmm.Platform.getPlatformByName(platform_name)
    ctx = openmm.Context(system, integ, plat, props)
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integ.step(warmup)
    ctx.getState(getPositions=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        integ.step(steps)
        ctx.getState(getPositions=True)
        times.append((time.perf_counter() - t0) / steps * 1e3)
    del ctx, integ
    return statistics.median(times), times


def gpu_check(npz_path, model_path, platform_name, props, device):
    """Energy/forces of a fixture structure through our force on `platform_name`/`device` vs
    model.predict on the CPU (float32 both)."""
    from openmm import app
    from openmm_e2former.force import get_model

    d = np.load(npz_path)
    z = d["atomic_numbers"].astype(int)
    pos = np.asarray(d["positions"], dtype=np.float64)
    cell = np.asarray(d["cell"], dtype=np.float64) if np.asarray(d["pbc"]).any() else None
    system = openmm.System()
    for zi in z:
        system.addParticle(app.Element.getByAtomicNumber(int(zi)).mass)
    if cell is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*r) for r in cell * 0.1])
    system.addForce(create_python_force(z.tolist(), model_path, periodic=cell is not None, device=device))
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform_name),
                         props)
    ctx.setPositions(pos * 0.1)
    st = ctx.getState(getEnergy=True, getForces=True)
    e = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    f = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    ref = get_model(model_path, None, "cpu", None).predict(z, pos, cell)
    e_ref = ref["energy"] * 96.48533212331002
    f_ref = ref["forces"] * 964.8533212331002
    out = {"structure": os.path.basename(npz_path), "atoms": len(z), "energy_kj": e, "energy_ref_kj": e_ref,
           "energy_abs_diff_kj": abs(e - e_ref), "forces_max_abs_diff_kj_nm": float(np.abs(f - f_ref).max()),
           "forces_max_abs_kj_nm": float(np.abs(f_ref).max())}
    print("GPU check:", out, flush=True)
    return out


def breakdown(n, platform_name, props, device, repeats=200):
    """Where our force's per-step time goes (no integrator): median microseconds of each piece of
    ``E2FormerForceComputation._compute`` with the analytic trivial model, next to OpenMM building the State
    that a PythonForce receives (part of the empty-PythonForce floor)."""
    from openmm_e2former.force import E2FormerForceComputation, _state_class

    system, pos = make_system(n)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform_name),
                         props)
    ctx.setPositions(pos)
    comp = E2FormerForceComputation([6] * n, QUADRATIC_TEST_MODEL_ANALYTIC, periodic=True, device=device)
    st = ctx.getState(getPositions=True)
    comp(st)   # builds the runtime (pinned buffers, model)
    rt = comp.runtime()
    cuda = rt.cuda

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def med(fn):
        ts = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(ts)

    res = {"atoms": n,
           "openmm_getState_positions_us": med(lambda: ctx.getState(getPositions=True)),
           "positions_to_pinned_us": med(lambda: st._getVectorAsNumpy(_state_class().Positions, rt.h_pos_np)),
           "box_vectors_us": med(lambda: st.getPeriodicBoxVectors(asNumpy=True)),
           "h2d_us": med(lambda: rt.d_in.copy_(rt.h_in, non_blocking=True)),
           "d2h_us": med(lambda: rt.h_out.copy_(rt.d_out, non_blocking=True)),
           "model_us": med(lambda: rt.model.energy_and_forces(rt.z, rt.d_x[:n], rt.d_x[n:], rt.pbc, 0, 1, None)),
           "whole_compute_us": med(lambda: comp(st))}
    print("breakdown:", json.dumps(res), flush=True)
    del ctx
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--platform", default="CUDA")
    ap.add_argument("--precision", default="mixed")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="base,empty,naive,ours,ours_analytic")
    ap.add_argument("--model", default=None, help="real checkpoint to time through the same force (optional)")
    ap.add_argument("--model-sizes", default="1000,10000")
    ap.add_argument("--check-npz", default=None, help="fixture .npz to compare GPU force vs CPU predict (needs --model)")
    ap.add_argument("--breakdown", action="store_true", help="also time the pieces of our force's step")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--from-json", default=None, metavar="JSON",
                    help="only write the markdown (--md, and stdout) of an existing result JSON; runs nothing")
    args = ap.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as fh:
            write_markdown(json.load(fh), args.md)
        return
    if _IMPORT_ERR is not None:
        raise SystemExit(f"timing needs torch, openmm and openmm_e2former: {_IMPORT_ERR}")

    sizes = [int(s) for s in args.sizes.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    props = {"Precision": args.precision} if args.platform in ("CUDA", "OpenCL") else {}
    if args.platform == "CUDA":
        props["DeviceIndex"] = "0"
    meta = {
        "openmm": openmm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": args.platform,
        "precision": args.precision,
        "device": args.device,
        "steps": args.steps,
        "repeats": args.repeats,
        "integrator": "LangevinMiddleIntegrator 1 fs",
        "base_system": "N particles, 100/nm^3, periodic cube, CustomExternalForce k/2 r^2 (same for all particles)",
    }
    if args.check_npz and args.model:
        try:
            meta["gpu_check"] = gpu_check(args.check_npz, args.model, args.platform, props, args.device)
        except Exception as exc:
            print(f"GPU check FAILED: {type(exc).__name__}: {exc}", flush=True)
            meta["gpu_check"] = {"error": f"{type(exc).__name__}: {exc}"}
    if args.breakdown:
        meta["breakdown"] = [breakdown(n, args.platform, props, args.device) for n in sizes]
    results = []
    for n in sizes:
        system0, pos = make_system(n)
        row = {"atoms": n}
        for v in variants + (["model"] if args.model and str(n) in args.model_sizes.split(",") else []):
            system = openmm.System()
            system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system0))
            if v == "empty":
                f = openmm.PythonForce(EmptyCompute(n))
                f.setUsesPeriodicBoundaryConditions(True)
                system.addForce(f)
            elif v == "naive":
                f = openmm.PythonForce(NaiveCompute(n, args.device))
                f.setUsesPeriodicBoundaryConditions(True)
                system.addForce(f)
            elif v == "ours":
                system.addForce(create_python_force([6] * n, QUADRATIC_TEST_MODEL, periodic=True, device=args.device))
            elif v == "ours_analytic":
                system.addForce(create_python_force([6] * n, QUADRATIC_TEST_MODEL_ANALYTIC, periodic=True,
                                                    device=args.device))
            elif v == "model":
                # water-like composition is irrelevant for timing the data path; carbon everywhere
                system.addForce(create_python_force([6] * n, args.model, periodic=True, device=args.device))
            elif v != "base":
                raise SystemExit(f"unknown variant {v}")
            steps = args.steps if v != "model" else 10
            try:
                med, all_t = time_variant(system, pos, args.platform, props, steps, args.warmup if v != "model" else 3,
                                          args.repeats if v != "model" else min(3, args.repeats))
            except Exception as exc:  # keep going: report what failed
                print(f"N={n} {v}: FAILED {type(exc).__name__}: {exc}", flush=True)
                row[v] = None
                continue
            row[v] = med
            row[v + "_all"] = all_t
            print(f"N={n:>7d} {v:>6s}: {med:8.3f} ms/step  (blocks: {', '.join(f'{t:.3f}' for t in all_t)})",
                  flush=True)
        base = row.get("base")
        for v in variants + ["model"]:
            if v != "base" and row.get(v) is not None and base is not None:
                row[v + "_overhead"] = row[v] - base
        results.append(row)

    out = {"meta": meta, "results": results}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    write_markdown(out, args.md)


VARIANT_LABELS = {
    "base": "base system",
    "empty": "empty PythonForce",
    "naive": "naive openmm-ml pattern",
    "ours": "ours (trivial model, autograd)",
    "ours_analytic": "ours (trivial model, analytic forces)",
    "model": "real model",
}
BREAKDOWN_LABELS = {
    "openmm_getState_positions_us": "OpenMM `Context.getState(getPositions=True)` (a State like the one a "
                                    "PythonForce receives; OpenMM's side, not in our callable)",
    "positions_to_pinned_us": "positions from the State into the pinned host buffer",
    "box_vectors_us": "box vectors from the State",
    "h2d_us": "H2D copy (pinned host -> GPU)",
    "d2h_us": "D2H copy (GPU -> pinned host)",
    "model_us": "model energy + forces (trivial model, analytic forces)",
    "whole_compute_us": "**whole callable** (one force evaluation of `E2FormerForceComputation`)",
}
_CALLABLE_PIECES = ("positions_to_pinned_us", "box_vectors_us", "h2d_us", "d2h_us", "model_us")


def _variants_in(results):
    """Variant names present in the result rows, known ones in their usual order, then any others."""
    names = []
    for r in results:
        for k in r:
            if k != "atoms" and not k.endswith(("_all", "_overhead")) and k not in names:
                names.append(k)
    return [v for v in VARIANT_LABELS if v in names] + [v for v in names if v not in VARIANT_LABELS]


def markdown(out) -> str:
    """Markdown of a result dict ({"meta": ..., "results": [...]}) as written by ``main``: only the variants
    that ran get columns; "failed" marks a variant that raised, "-" one not run at that size."""
    meta, results = out.get("meta", {}), out.get("results", [])
    variants = _variants_in(results)
    gpu = meta.get("gpu") or meta.get("device") or "unknown GPU"
    blocks = (f"median of {meta['repeats']} blocks of {meta['steps']} steps" if "repeats" in meta and "steps" in meta
              else "median of the timed blocks")
    versions = ", ".join(f"{k} {meta[k]}" for k in ("openmm", "torch") if k in meta)
    if "python" in meta:
        versions += f", Python {meta['python']}"
    lines = [f"# OpenMM PythonForce overhead ({gpu}, {meta.get('platform', '?')} platform, "
             f"{meta.get('precision', '?')} precision)", "",
             "; ".join(x for x in (versions, meta.get("integrator"),
                                   f"base system: {meta['base_system']}" if "base_system" in meta else None, blocks)
                       if x) + ".", "",
             "Variants run: " + ", ".join(f"`{v}`" for v in variants) + "." if variants else "No variants ran."]

    def fmt(r, v, minus=None):
        if v not in r:
            return "-"
        if r[v] is None:
            return "failed"
        if minus is None:
            return f"{r[v]:.3f}"
        if r.get(minus) is None:
            return "-"
        return f"{r[v] - r[minus]:+.3f}"

    def table(title, cols, minus=None):
        lines.extend(["", title, "",
                      "| atoms | " + " | ".join(VARIANT_LABELS.get(v, v) for v in cols) + " |",
                      "|---|" + "---|" * len(cols)])
        for r in results:
            lines.append(f"| {r['atoms']:,} | " + " | ".join(fmt(r, v, minus) for v in cols) + " |")

    if variants:
        table("ms per step (whole MD step, base system included):", variants)
    if "base" in variants and len(variants) > 1:
        table("ms per step added to the base system:", [v for v in variants if v != "base"], "base")
    rest = [v for v in variants if v not in ("base", "empty")]
    if "empty" in variants and rest:
        table("ms per step added over the empty PythonForce (the force's own work above OpenMM's PythonForce "
              "floor):", rest, "empty")
    if "base" not in variants and variants:
        lines.extend(["", "(`base` was not run, so the cost of the base system's own MD step is not subtracted.)"])

    bd = [b for b in meta.get("breakdown") or [] if b]
    if bd:
        keys = [k for k in BREAKDOWN_LABELS if any(k in b for b in bd)]
        keys += [k for b in bd for k in b if k != "atoms" and k not in keys]
        lines.extend(["", "Breakdown of one force evaluation (no integrator; median microseconds, each piece timed "
                      "on its own between device syncs):", "",
                      "| piece | " + " | ".join(f"{b.get('atoms', 0):,} atoms" for b in bd) + " |",
                      "|---|" + "---|" * len(bd)])
        for k in keys:
            lines.append(f"| {BREAKDOWN_LABELS.get(k, k)} | "
                         + " | ".join("-" if b.get(k) is None else f"{b[k]:.0f}" for b in bd) + " |")
        if all(b.get(k) is not None for b in bd for k in _CALLABLE_PIECES + ("whole_compute_us",)):
            lines.append("| rest of the callable (whole minus the pieces timed above: output scaling, stream "
                         "sync, Python) | "
                         + " | ".join(f"{b['whole_compute_us'] - sum(b[k] for k in _CALLABLE_PIECES):.0f}"
                                      for b in bd) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(out, md_path=None) -> str:
    text = markdown(out)
    print(text)
    if md_path:
        with open(md_path, "w") as fh:
            fh.write(text)
    return text


if __name__ == "__main__":
    main()
