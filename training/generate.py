"""Generate training configurations by classical MD (OpenMM).

amber14 (ff14SB) + flexible TIP3P water (``rigidWater=False``, ``constraints=None``, so O-H stretches and
H-O-H bends are sampled), 0.5 fs Langevin, every system energy-minimised first.  Small gas-phase molecules
that amber14 does not cover (methanethiol, dimethyl sulfide, ...) use a generic harmonic force field built
here from the ASE G2 geometry (bonds from covalent radii, harmonic bonds + angles, free torsions); the
teacher relabels everything anyway, the classical model only has to produce plausible, diverse geometries.

System families (``kind``)::

    water_box      64-128 flexible waters, several densities (+ one NaCl box), PME, 280-370 K
    water_cluster  2-20 waters in vacuum, 150-320 K
    aa_solv        ACE-X-NME for all 20 X (+ HIP, ASH, GLH, LYN, CYM) in a small water box; charged
                   residues neutralised with Na+/Cl- counter-ions
    aa_gas         ACE-X-NME in vacuum (charged side chains keep their net charge)
    peptide_solv / peptide_gas   capped tetrapeptides
    gas_small      small molecules incl. sulfur species (generic harmonic force field), 300-900 K

Capped peptides are built in code: an ACE-...-NME backbone from internal coordinates (N, CA, C, O and the
cap heavy atoms), written as a PDB string, completed by PDBFixer (missing side-chain atoms) and
``Modeller.addHydrogens`` (protonation variants); CYM is made by deleting HG.

Output: one NPZ shard per (system, temperature) run, see ``training/shards.py``.  Existing shards are
skipped, so an interrupted run can simply be restarted.

    python -m training.generate --scale tiny --out data/raw
    python -m training.generate --scale full --out data/raw --platform CUDA
    python -m training.generate --scale full --dry-run        # print the plan and frame counts
"""
from __future__ import annotations

import argparse
import hashlib
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .shards import KJ_PER_MOL_TO_EV, SULFUR, save_shard

THREE = {"A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
         "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
         "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL"}
# protonation variants beyond the pH-7 defaults: label -> (residue, Modeller variant, H atoms to delete)
VARIANTS = {"HIP": ("HIS", "HIP", ()), "ASH": ("ASP", "ASH", ()), "GLH": ("GLU", "GLH", ()),
            "LYN": ("LYS", "LYN", ()), "CYM": ("CYS", "CYS", ("HG",))}
WATER_VOLUME_A3 = 18.01528 / 0.602214076   # Å^3 per molecule at 1 g/cm^3


def stable_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------------------------- building
@dataclass
class Built:
    system: object                 # openmm.System
    positions: np.ndarray          # [N, 3] nm
    z: np.ndarray                  # [N]
    charge: int
    box: Optional[np.ndarray]      # [3, 3] nm or None (gas phase)
    topology: object = None        # openmm.app.Topology (None for the generic gas-phase builder)


def _forcefield():
    from openmm import app
    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


def _amber_system(topology, positions_nm: np.ndarray, box_nm: Optional[np.ndarray]) -> Built:
    import openmm
    from openmm import app, unit
    ff = _forcefield()
    if box_nm is not None:
        topology.setPeriodicBoxVectors(box_nm * unit.nanometer)
        rc = min(0.9, 0.49 * float(np.min(np.diag(box_nm))))
        system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=rc * unit.nanometer,
                                 constraints=None, rigidWater=False)
    else:
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    q = 0.0
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            q = sum(f.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                    for i in range(f.getNumParticles()))
    z = np.array([a.element.atomic_number for a in topology.atoms()], dtype=np.int16)
    return Built(system, np.asarray(positions_nm, dtype=np.float64), z, int(round(q)), box_nm, topology)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a*a+b*b-c*c-d*d, 2*(b*c-a*d), 2*(b*d+a*c)],
                     [2*(b*c+a*d), a*a-b*b+c*c-d*d, 2*(c*d-a*b)],
                     [2*(b*d-a*c), 2*(c*d+a*b), a*a-b*b-c*c+d*d]])


_WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0],
                   [0.9572 * math.cos(math.radians(104.52)), 0.9572 * math.sin(math.radians(104.52)), 0.0]])


def _water_topology(sites: np.ndarray, kinds: Sequence[str], rng: np.random.Generator):
    """Topology + positions (Å) for waters ('w') and ions ('na', 'cl') at the given sites (Å)."""
    from openmm import app
    top = app.Topology()
    chain = top.addChain()
    pos = []
    O, H = app.Element.getBySymbol("O"), app.Element.getBySymbol("H")
    for site, kind in zip(sites, kinds):
        if kind == "w":
            res = top.addResidue("HOH", chain)
            o = top.addAtom("O", O, res)
            h1 = top.addAtom("H1", H, res)
            h2 = top.addAtom("H2", H, res)
            top.addBond(o, h1)
            top.addBond(o, h2)
            centred = _WATER - _WATER.mean(axis=0)
            pos.extend(site + centred @ _random_rotation(rng).T)
        else:
            sym = {"na": "Na", "cl": "Cl"}[kind]
            res = top.addResidue(sym.upper(), chain)
            top.addAtom(sym, app.Element.getBySymbol(sym), res)
            pos.append(site)
    return top, np.array(pos)


def build_water_box(n: int, density: float, seed: int, n_salt: int = 0) -> Built:
    """``n`` molecules (waters + ``n_salt`` Na+/Cl- pairs replacing waters) on a jittered cubic grid."""
    rng = np.random.default_rng(seed)
    L = (n * WATER_VOLUME_A3 / density) ** (1.0 / 3.0)
    m = math.ceil(n ** (1.0 / 3.0) - 1e-9)
    grid = np.array([(i, j, k) for i in range(m) for j in range(m) for k in range(m)], dtype=float)
    grid = grid[rng.permutation(len(grid))[:n]]
    sites = (grid + 0.5) * (L / m) + rng.uniform(-0.1, 0.1, size=(n, 3))
    kinds = ["w"] * n
    for i in range(n_salt):
        kinds[2 * i], kinds[2 * i + 1] = "na", "cl"
    top, pos = _water_topology(sites, kinds, rng)
    return _amber_system(top, pos / 10.0, np.eye(3) * L / 10.0)


def build_water_cluster(n: int, seed: int) -> Built:
    rng = np.random.default_rng(seed)
    m = math.ceil(n ** (1.0 / 3.0) - 1e-9) + 1
    grid = np.array([(i, j, k) for i in range(m) for j in range(m) for k in range(m)], dtype=float)
    grid -= grid.mean(axis=0)
    grid = grid[np.argsort(np.linalg.norm(grid, axis=1) + rng.uniform(0, 0.01, len(grid)))[:n]]
    sites = grid * 2.9 + rng.uniform(-0.15, 0.15, size=(n, 3))
    top, pos = _water_topology(sites, ["w"] * n, rng)
    return _amber_system(top, pos / 10.0, None)


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position of d with |cd| = bond, angle(b, c, d) = angle, dihedral(a, b, c, d) = torsion (degrees)."""
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    th, ph = math.radians(angle), math.radians(torsion)
    d2 = np.array([-bond * math.cos(th), bond * math.sin(th) * math.cos(ph), bond * math.sin(th) * math.sin(ph)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def capped_peptide_pdb(residues: Sequence[str], phi: float = -75.0, psi: float = 145.0) -> str:
    """PDB string of ACE-<residues>-NME with backbone heavy atoms (N, CA, C, O) and cap heavy atoms."""
    atoms: List[Tuple[str, str, int, np.ndarray]] = []   # (name, resname, resid, xyz)
    ch3, c = np.array([0.0, 0.0, 0.0]), np.array([1.52, 0.0, 0.0])
    atoms += [("CH3", "ACE", 1, ch3), ("C", "ACE", 1, c)]
    # chain after ACE C: N, CA, C per residue, then NME N and its methyl C
    seq_names = []
    for i, r in enumerate(residues):
        seq_names += [("N", r, i + 2), ("CA", r, i + 2), ("C", r, i + 2)]
    nres = len(residues) + 2
    seq_names += [("N", "NME", nres), ("C", "NME", nres)]
    # torsion used to place each chain atom: the first is arbitrary; then omega (placing CA), phi
    # (placing C), psi (placing the next N) per residue; omega again for NME's methyl
    torsions = [180.0]
    for _ in residues:
        torsions += [180.0, phi, psi]
    torsions.append(180.0)
    bonds = {("C", "N"): 1.33, ("N", "CA"): 1.46, ("CA", "C"): 1.52, ("N", "C"): 1.46}
    pts = [np.array([2.0, 1.4, 0.0]), ch3, c]
    prev_name = "C"
    for (name, rname, rid), tor in zip(seq_names, torsions):
        ang = 122.0 if (rname == "NME" and name == "C") else {"N": 116.0, "CA": 122.0, "C": 111.0}[name]
        xyz = _place(pts[-3], pts[-2], pts[-1], bonds[(prev_name, name)], ang, tor)
        pts.append(xyz)
        atoms.append((name, rname, rid, xyz))
        prev_name = name
    # carbonyl oxygens: trigonal, opposite the bisector of the two bonded neighbours
    coords = {(a[2], a[0]): a[3] for a in atoms}
    out = []
    for name, rname, rid, xyz in atoms:
        out.append((name, rname, rid, xyz))
        if name == "C" and rname != "NME":
            prev = coords[(rid, "CH3")] if rname == "ACE" else coords[(rid, "CA")]
            nxt = coords[(rid + 1, "N")]
            u = (prev - xyz) / np.linalg.norm(prev - xyz) + (nxt - xyz) / np.linalg.norm(nxt - xyz)
            out.append(("O", rname, rid, xyz - 1.23 * u / np.linalg.norm(u)))
    lines = []
    for i, (name, rname, rid, xyz) in enumerate(out, start=1):
        el = name[0]
        lines.append(f"ATOM  {i:5d} {name:<4s} {rname:3s} A{rid:4d}    {xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}"
                     f"  1.00  0.00          {el:>2s}")
    lines.append("TER")
    lines.append("END")
    return "\n".join(lines) + "\n"


def build_capped(letters: str, variant: Optional[str], solvate: bool, seed: int, box_nm: float = 2.0) -> Built:
    """ACE-<letters>-NME; ``variant`` (e.g. 'HIP', 'CYM') applies to every residue of that type.  The same
    arguments give the same atoms and positions (seeded PDBFixer and Modeller)."""
    import random
    residues = [THREE[x] for x in letters]
    rng = np.random.default_rng(seed)
    phi, psi = [(-75.0, 145.0), (-63.0, -42.0), (-120.0, 130.0)][int(rng.integers(3))]
    # Modeller.addHydrogens (and the ion placement of addSolvent) draw from Python's global ``random``: seed it
    # for this build and give the caller's state back afterwards
    saved = random.getstate()
    random.seed(int(seed))
    try:
        return _build_capped_seeded(residues, variant, solvate, seed, box_nm, phi, psi)
    finally:
        random.setstate(saved)


def _build_capped_seeded(residues, variant, solvate, seed, box_nm, phi, psi) -> Built:
    import openmm
    from openmm import app, unit
    from pdbfixer import PDBFixer
    # the Reference platform for the two minimisations (PDBFixer's side chains, addHydrogens' hydrogens): the CPU
    # platform's multithreaded force sums are not deterministic, and on a loaded machine two builds with the same
    # seed then differed by up to 2.4e-4 nm (session 14); a capped peptide minimises in well under a second either
    # way
    reference = openmm.Platform.getPlatformByName("Reference")
    fixer = PDBFixer(pdbfile=io.StringIO(capped_peptide_pdb(residues, phi, psi)), platform=reference)
    fixer.findMissingResidues()
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    # seeded: PDBFixer places the missing side-chain atoms with a randomised minimisation, and a different
    # solute shape removes a different set of waters in addSolvent (the same seed once gave 403, once 400
    # atoms); OpenMM reads seed 0 as "pick one", hence the + 1
    fixer.addMissingAtoms(seed=int(seed) % (2**31 - 2) + 1)
    modeller = app.Modeller(fixer.topology, fixer.positions)
    ff = _forcefield()
    variants = None
    delete_h: Tuple[str, ...] = ()
    if variant:
        resname, var, delete_h = VARIANTS[variant]
        variants = [var if r.name == resname else None for r in modeller.topology.residues()]
    modeller.addHydrogens(ff, pH=7.0, variants=variants, platform=reference)
    if delete_h:
        target = VARIANTS[variant][0]
        modeller.delete([a for a in modeller.topology.atoms() if a.residue.name == target and a.name in delete_h])
    if solvate:
        xyz = np.array(modeller.positions.value_in_unit(unit.nanometer))
        extent = float(np.max(xyz.max(axis=0) - xyz.min(axis=0)))
        L = max(box_nm, extent + 1.0)
        modeller.addSolvent(ff, model="tip3p", boxSize=openmm_vec3(L), neutralize=True)
        box = np.eye(3) * L
    else:
        box = None
    pos = np.array(modeller.positions.value_in_unit(unit.nanometer))
    if solvate:
        pos = pos - pos[: _solute_count(modeller.topology)].mean(axis=0) + box.diagonal() / 2
    return _amber_system(modeller.topology, pos, box)


def openmm_vec3(L: float):
    import openmm
    from openmm import unit
    return openmm.Vec3(L, L, L) * unit.nanometer


def _solute_count(topology) -> int:
    return sum(1 for a in topology.atoms() if a.residue.name not in ("HOH", "NA", "CL"))


def build_gas_small(name: str, seed: int) -> Built:
    """Generic harmonic force field for a G2 molecule (no amber14 parameters exist for these)."""
    import openmm
    from ase.build import molecule
    from ase.data import atomic_masses, covalent_radii
    at = molecule(name)
    xyz = at.get_positions()
    z = at.get_atomic_numbers()
    n = len(z)
    system = openmm.System()
    for zi in z:
        system.addParticle(float(atomic_masses[zi]))
    d = np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)
    bonded = (d < 1.2 * (covalent_radii[z][:, None] + covalent_radii[z][None])) & ~np.eye(n, dtype=bool)
    hb = openmm.HarmonicBondForce()
    for i in range(n):
        for j in range(i + 1, n):
            if bonded[i, j]:
                k = 3.0e5 if 1 in (z[i], z[j]) else (2.0e5 if SULFUR in (z[i], z[j]) else 2.8e5)   # kJ/mol/nm^2
                hb.addBond(i, j, d[i, j] / 10.0, k)
    ha = openmm.HarmonicAngleForce()
    for j in range(n):
        nb = np.flatnonzero(bonded[j])
        for a in range(len(nb)):
            for b in range(a + 1, len(nb)):
                i, k = nb[a], nb[b]
                v1, v2 = xyz[i] - xyz[j], xyz[k] - xyz[j]
                th = math.acos(np.clip(v1 @ v2 / np.linalg.norm(v1) / np.linalg.norm(v2), -1, 1))
                if th < math.radians(175):   # skip linear angles
                    ha.addAngle(int(i), int(j), int(k), th, 400.0)
    system.addForce(hb)
    system.addForce(ha)
    system.addForce(openmm.CMMotionRemover())
    return Built(system, xyz / 10.0, z.astype(np.int16), 0, None)


# ----------------------------------------------------------------------------------------------- plan
@dataclass
class Spec:
    name: str
    kind: str
    build: Callable[[], Built]
    temps: List[float]
    frames: int
    sulfur: bool = False


@dataclass
class Scale:
    stride: int            # MD steps between frames (0.5 fs each)
    equil: int             # steps after minimisation before the first frame
    frames: Dict[str, int] = field(default_factory=dict)


SCALES = {
    "tiny": Scale(stride=10, equil=40, frames={k: 3 for k in ("water_box", "water_cluster", "aa_solv", "aa_gas",
                                                             "peptide_solv", "peptide_gas", "gas_small")}),
    "full": Scale(stride=200, equil=4000, frames={"water_box": 160, "water_cluster": 35, "aa_solv": 190,
                                                  "aa_gas": 25, "peptide_solv": 150, "peptide_gas": 40,
                                                  "gas_small": 60}),
    # one GPU machine call: ~12k frames, 2,140 with sulfur (labelled in minutes with training.teacher)
    "medium": Scale(stride=100, equil=2000, frames={"water_box": 100, "water_cluster": 30, "aa_solv": 100,
                                                    "aa_gas": 25, "peptide_solv": 100, "peptide_gas": 40,
                                                    "gas_small": 60}),
}
PEPTIDES = ["GSCG", "MKDW", "YFNQ", "VILT", "PRHE"]
SMALL_S = ["SH2", "CH3SH", "CH3SCH3", "CH3CH2SH", "C4H4S", "C2H6SO"]
SMALL_OTHER = ["CH3OH", "H3CNH2", "CH3COOH", "CH3CONH2", "C6H6", "C5H5N"]


def plan(scale: str) -> List[Spec]:
    fr = SCALES[scale].frames
    specs: List[Spec] = []
    if scale == "tiny":
        specs.append(Spec("water_box_64_d1.00", "water_box", lambda: build_water_box(64, 1.0, 1), [300.0],
                          fr["water_box"]))
        specs.append(Spec("water_cluster_4", "water_cluster", lambda: build_water_cluster(4, 2), [250.0],
                          fr["water_cluster"]))
        specs.append(Spec("aa_ALA_solv", "aa_solv", lambda: build_capped("A", None, True, 3, 1.8), [300.0],
                          fr["aa_solv"]))
        specs.append(Spec("aa_CYS_gas", "aa_gas", lambda: build_capped("C", None, False, 4), [300.0],
                          fr["aa_gas"], True))
        specs.append(Spec("gas_CH3SH", "gas_small", lambda: build_gas_small("CH3SH", 5), [300.0],
                          fr["gas_small"], True))
        return specs
    for n, rho, salt in [(64, 1.00, 0), (64, 0.95, 0), (96, 1.00, 0), (96, 1.05, 0), (128, 1.00, 0),
                         (128, 0.97, 0), (128, 1.00, 2)]:
        name = f"water_box_{n}_d{rho:.2f}" + (f"_nacl{salt}" if salt else "")
        specs.append(Spec(name, "water_box", (lambda n=n, rho=rho, salt=salt, name=name:
                                              build_water_box(n, rho, stable_seed(name), salt)),
                          [280.0, 300.0, 330.0, 370.0], fr["water_box"]))
    for n in [2, 3, 4, 5, 6, 8, 10, 12, 16, 20]:
        name = f"water_cluster_{n}"
        specs.append(Spec(name, "water_cluster", lambda n=n, name=name: build_water_cluster(n, stable_seed(name)),
                          [150.0, 250.0, 320.0], fr["water_cluster"]))
    aas = [(THREE[x], x, None) for x in THREE] + [(v, VARIANTS[v][0], v) for v in VARIANTS]
    for label, letter, var in aas:
        letter = letter if len(letter) == 1 else {v: k for k, v in THREE.items()}[letter]
        s = letter in "CM"
        name = f"aa_{label}_solv"
        specs.append(Spec(name, "aa_solv", lambda l=letter, v=var, name=name:
                          build_capped(l, v, True, stable_seed(name)), [300.0, 350.0], fr["aa_solv"], s))
        if var is None:
            name = f"aa_{label}_gas"
            specs.append(Spec(name, "aa_gas", lambda l=letter, name=name: build_capped(l, None, False, stable_seed(name)),
                              [300.0, 500.0], fr["aa_gas"], s))
    for seq in PEPTIDES:
        s = any(x in "CM" for x in seq)
        name = f"pep_{seq}_solv"
        specs.append(Spec(name, "peptide_solv", lambda q=seq, name=name: build_capped(q, None, True, stable_seed(name)),
                          [300.0], fr["peptide_solv"], s))
        name = f"pep_{seq}_gas"
        specs.append(Spec(name, "peptide_gas", lambda q=seq, name=name: build_capped(q, None, False, stable_seed(name)),
                          [300.0, 450.0], fr["peptide_gas"], s))
    for mol in SMALL_S + SMALL_OTHER:
        name = f"gas_{mol}"
        s = mol in SMALL_S
        specs.append(Spec(name, "gas_small", lambda m=mol, name=name: build_gas_small(m, stable_seed(name)),
                          [300.0, 600.0, 900.0], fr["gas_small"] if s else fr["gas_small"] * 2 // 3, s))
    return specs


# ----------------------------------------------------------------------------------------------- MD
def run_md(b: Built, temperature: float, frames: int, stride: int, equil: int, seed: int, platform: str,
           store_mm: bool) -> Dict[str, np.ndarray]:
    import openmm
    from openmm import unit
    integ = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, 1.0 / unit.picosecond,
                                            0.5 * unit.femtosecond)
    integ.setRandomNumberSeed(seed % (2**31 - 1))
    plat = openmm.Platform.getPlatformByName(platform)
    props = {"Threads": "1"} if platform == "CPU" else {}
    if b.box is not None:
        b.system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b.box])
    ctx = openmm.Context(b.system, integ, plat, props)
    if b.box is not None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in b.box])
    ctx.setPositions(b.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 2000)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed % (2**31 - 1))
    integ.step(equil)
    n = len(b.z)
    pos = np.zeros((frames, n, 3), np.float32)
    cell = np.zeros((frames, 3, 3), np.float32)
    e_mm = np.zeros(frames, np.float64)
    f_mm = np.zeros((frames, n, 3), np.float32)
    for k in range(frames):
        integ.step(stride)
        st = ctx.getState(getPositions=True, getEnergy=store_mm, getForces=store_mm,
                          enforcePeriodicBox=b.box is not None)
        p = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        if not np.all(np.isfinite(p)):
            raise RuntimeError("classical MD produced non-finite positions")
        pos[k] = p
        if b.box is not None:
            cell[k] = st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        if store_mm:
            e_mm[k] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL_TO_EV
            f_mm[k] = st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom) \
                * KJ_PER_MOL_TO_EV
    out = {"positions": pos, "cell": cell}
    if store_mm:
        out.update(mm_energy=e_mm, mm_forces=f_mm)
    del ctx
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    ap.add_argument("--out", default="data/raw")
    ap.add_argument("--systems", nargs="*", help="only systems whose name contains one of these strings")
    ap.add_argument("--kinds", nargs="*", help="only these system kinds")
    ap.add_argument("--frames", type=int, help="override frames per run")
    ap.add_argument("--stride", type=int, help="override MD steps between frames")
    ap.add_argument("--equil", type=int, help="override equilibration steps")
    ap.add_argument("--platform", default="CPU", help="OpenMM platform (CPU uses 1 thread; CUDA on a GPU)")
    ap.add_argument("--store-mm", action="store_true", help="also store classical energies/forces")
    ap.add_argument("--part", default="1/1", help="i/n: run every n-th system starting at the i-th (parallel workers)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    sc = SCALES[args.scale]
    specs = plan(args.scale)
    if args.systems:
        specs = [s for s in specs if any(x in s.name for x in args.systems)]
    if args.kinds:
        specs = [s for s in specs if s.kind in args.kinds]
    i_part, n_part = (int(x) for x in args.part.split("/"))
    specs = specs[i_part - 1::n_part]
    total = sum(len(s.temps) * (args.frames or s.frames) for s in specs)
    total_s = sum(len(s.temps) * (args.frames or s.frames) for s in specs if s.sulfur)
    print(f"{len(specs)} systems, {sum(len(s.temps) for s in specs)} runs, {total} frames "
          f"({total_s} with sulfur)", flush=True)
    if args.dry_run:
        for s in specs:
            print(f"  {s.kind:14s} {s.name:26s} T={s.temps} frames/run={args.frames or s.frames}")
        return 0
    out = Path(args.out)
    t_all = time.time()
    for s in specs:
        built = None
        for T in s.temps:
            path = out / f"{s.name}_T{int(T)}.npz"
            if path.exists():
                continue
            t0 = time.time()
            if built is None:
                built = s.build()
            frames = args.frames or s.frames
            seed = stable_seed(s.name, T)
            traj = run_md(built, T, frames, args.stride or sc.stride, sc.equil if args.equil is None else args.equil,
                          seed, args.platform, args.store_mm)
            has_box = built.box is not None
            save_shard(path, dict(Z=built.z, pbc=np.array([has_box] * 3), charge=built.charge, multiplicity=1,
                                  system=s.name, kind=s.kind, temperature=T, source="openmm-amber14", **traj))
            print(f"{path.name}: {len(built.z)} atoms, charge {built.charge:+d}, {frames} frames, "
                  f"{time.time() - t0:.1f} s", flush=True)
    print(f"done in {time.time() - t_all:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
