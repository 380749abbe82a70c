"""Plots a chemist wants after a run: energy / temperature traces and water O–O radial distribution.

Both functions write a PNG and return the path; they need matplotlib (and mdtraj for the RDF)::

    from openmm_e2former.analysis import plot_energy_trace, plot_water_rdf
    plot_energy_trace("run.csv", "run_energy.png")                # StateDataReporter CSV
    plot_water_rdf("run.dcd", "run_final.pdb", "run_rdf_OO.png",  # O-O g(r) of the water oxygens
                   reference="water_gOO_skinner2013.txt")          # optional experimental curve (r in Å, g)

Command line: ``python -m openmm_e2former.analysis run.csv [--dcd run.dcd --top run_final.pdb] [--reference F]``.
"""
from __future__ import annotations

import argparse
import csv
import os
from typing import Dict, List, Optional

import numpy as np


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_state_csv(path: str) -> Dict[str, np.ndarray]:
    """Columns of an OpenMM StateDataReporter CSV as float arrays (keys as in the header)."""
    with open(path) as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty file")
    header = [h.strip().lstrip("#").strip('"').strip() for h in rows[0]]
    data: Dict[str, List[float]] = {h: [] for h in header}
    for row in rows[1:]:
        for h, v in zip(header, row):
            try:
                data[h].append(float(v))
            except ValueError:
                data[h].append(float("nan"))
    return {h: np.asarray(v) for h, v in data.items()}


def _column(data: Dict[str, np.ndarray], prefix: str) -> Optional[np.ndarray]:
    for key, value in data.items():
        if key.lower().startswith(prefix.lower()):
            return value
    return None


def plot_energy_trace(csv_path: str, png_path: str) -> str:
    """Potential, kinetic and total energy (kJ/mol, relative to the first report), temperature (K) and, when the
    log has it (NPT), density (g/cm³) against time (ps)."""
    data = read_state_csv(csv_path)
    t = _column(data, "Time")
    if t is None:
        t = _column(data, "Step")
    if t is None or len(t) == 0:
        raise ValueError(f"{csv_path}: no time or step column / no rows")
    plt = _matplotlib()
    dens = _column(data, "Density")                   # NPT runs (e2former-md --pressure)
    if dens is not None and len(dens):
        fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
        ax3.plot(t, dens, color="tab:blue")
        ax3.set_ylabel("density (g/cm³)")
    else:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    # ML energies carry large per-element reference energies: show changes from the first report
    for name, style in (("Potential Energy", "-"), ("Kinetic Energy", "--"), ("Total Energy", "-")):
        y = _column(data, name)
        if y is not None and len(y):
            ax1.plot(t, y - y[0], style, label=f"{name.replace(' Energy', '')} (start {y[0]:.6g})")
    ax1.set_ylabel("E - E(first report) (kJ/mol)")
    ax1.legend(loc="best", fontsize=8)
    ax1.set_title(os.path.basename(csv_path))
    temp = _column(data, "Temperature")
    if temp is not None:
        ax2.plot(t, temp, color="tab:red")
    ax2.set_ylabel("temperature (K)")
    (ax3 if dens is not None and len(dens) else ax2).set_xlabel(
        "time (ps)" if _column(data, "Time") is not None else "step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def water_oo_rdf(dcd_path: str, top_path: str, r_max_nm: float = 0.8, bins: int = 160):
    """(r in Å, g(r)) of water oxygens over all frames (mdtraj, minimum image in the unit cell)."""
    import mdtraj

    traj = mdtraj.load(dcd_path, top=top_path)
    oxygens = traj.topology.select("water and element O")
    if len(oxygens) < 2:
        raise ValueError("fewer than two water oxygens: no O-O g(r) to plot")
    if traj.unitcell_lengths is None:
        raise ValueError("the trajectory has no periodic box: g(r) needs one")
    r_max_nm = min(r_max_nm, 0.5 * float(traj.unitcell_lengths.min()))
    pairs = traj.topology.select_pairs(oxygens, oxygens)
    r, g = mdtraj.compute_rdf(traj, pairs, r_range=(0.0, r_max_nm), n_bins=bins)
    return r * 10.0, g


def plot_water_rdf(dcd_path: str, top_path: str, png_path: str, reference: Optional[str] = None) -> str:
    """O–O g(r) of the water in a trajectory, optionally against a reference curve (two columns: r/Å, g)."""
    r, g = water_oo_rdf(dcd_path, top_path)
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(r, g, label="this run")
    if reference:
        ref = np.loadtxt(reference, comments="#")
        ax.plot(ref[:, 0], ref[:, 1], "k--", label=os.path.basename(reference))
    ax.axhline(1.0, color="0.7", lw=0.8)
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g$_{OO}$(r)")
    ax.set_xlim(0, r.max())
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openmm_e2former.analysis", description=__doc__.split("\n")[0])
    ap.add_argument("csv", help="StateDataReporter CSV")
    ap.add_argument("--dcd", help="trajectory for the water O-O g(r)")
    ap.add_argument("--top", help="topology (PDB) for the trajectory")
    ap.add_argument("--reference", help="reference g(r) file (r/Å, g)")
    ap.add_argument("--prefix", help="output prefix (default: the CSV name without extension)")
    args = ap.parse_args(argv)
    prefix = args.prefix or os.path.splitext(args.csv)[0]
    print(plot_energy_trace(args.csv, prefix + "_energy.png"))
    if args.dcd and args.top:
        print(plot_water_rdf(args.dcd, args.top, prefix + "_rdf_OO.png", args.reference))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
