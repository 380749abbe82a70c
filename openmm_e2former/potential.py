"""openmm-ml plug-in for E2Former-V2: ``MLPotential('e2formerv2', modelPath=...)``.

Registered through the entry point ``e2formerv2`` of the group ``openmmml.potentials`` (setup.py).
``import openmmml`` imports every plug-in's entry module, so this module imports only openmm and
openmmml at top level; torch, the model and the force are imported when a System is built.

Usage::

    from openmmml import MLPotential
    potential = MLPotential('e2formerv2', modelPath='checkpoint.pt')       # or no modelPath: bundled model
    system = potential.createSystem(topology, charge=0, multiplicity=1)     # pure ML
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)      # ML/MM, mechanical embedding

``MLPotential`` arguments: ``modelPath`` (any checkpoint ``openmm_e2former.load_model`` accepts: an official
``{"model": state_dict}`` .pt with its config .yaml beside it, or the project's single-file format),
``config`` (config .yaml path or dict for an official checkpoint whose yaml is elsewhere), ``head``
(default head of the potential; ``createSystem(head=...)`` overrides it).

``createSystem`` / ``createMixedSystem`` arguments that reach :meth:`E2FormerV2PotentialImpl.addForces`:
``precision`` (None/'single' -> float32, 'double' -> float64; this plugin also takes 'tf32': a float32 model
whose matrix products use TF32 tensor cores on the GPU, and 'bf16': TF32 plus bf16 autocast of the node-level
products, both faster and less exact, see ``E2FormerV2.set_precision``), ``device`` (str or torch.device; default
CUDA if torch sees a GPU), ``charge`` (total charge of the ML region, default 0), ``multiplicity``
(2S+1, default 1), ``head`` (model head, e.g. 'omol25' or 'svp'), ``periodic`` (None = automatic:
periodic when the topology has box vectors or the System uses PBC; True = require a box; False = treat
the ML region as non-periodic), ``compile`` (experimental, default False: ``torch.compile`` of the model's
node-level parts, see ``E2FormerV2.set_compile``; +10 % on an H200 at 10k-20k atoms in session 14, no gain over
session 15's node-level kernels; used by the eager path only, i.e. where no CUDA graph runs: above 150,000
atoms, a step that would not fit in memory, float64, or ``cuda_graphs=False``; the first evaluation compiles for
tens of seconds), ``radial_tables`` (default None = on for a float32
model on CUDA, off for float64 and on the CPU; True / False force it: the edge MLPs read from per-element-pair
cubic tables, see ``E2FormerV2.set_radial_tables``; interpolation error ~1e-8 relative, below float32 rounding;
no edge MLP in the fused attention kernels: -25 % per OpenMM step at 115k atoms on an H200), ``cuda_graphs``
(default None = automatic: on CUDA, float32 systems of up to 150,000 ML atoms whose step fits in half the free
memory replay each force call from a CUDA graph, with the neighbour list inside it; False keeps the eager path,
e.g. where memory is short, since the graph holds about twice the memory of an eager step; True asks for it at
any size; ``E2FORMER_CUDA_GRAPHS`` sets the automatic choice).  Any other keyword
(embedding options such as ``mlLongRange`` or ``linkAtomDistances``) is ignored, as openmm-ml expects.

E2Former-V2 is a 4.5 Å cutoff model: :meth:`getMLLongRange` returns False, so mechanical embedding of a
periodic System keeps the MM electrostatics between periodic images of the ML region.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

import openmm
import openmm.app

__all__ = ["E2FormerV2PotentialImplFactory", "E2FormerV2PotentialImpl"]


class E2FormerV2PotentialImplFactory:
    """Creates :class:`E2FormerV2PotentialImpl` for ``MLPotential('e2formerv2', ...)`` (openmm-ml's factory
    protocol: ``createImpl``).

    It is defined before openmmml is imported, and so not as a subclass of ``MLPotentialImplFactory``. Importing
    openmmml loads every plugin's entry point, this class included. A program that imports this module before
    openmmml would otherwise have openmmml find it half-initialised, a circular import that broke
    ``MLPotential`` altogether."""

    def createImpl(self, name: str, modelPath: Optional[str] = None, config: Any = None, head: Optional[str] = None,
                   **args) -> "E2FormerV2PotentialImpl":
        return E2FormerV2PotentialImpl(name, modelPath=modelPath, config=config, head=head)


from openmmml.mlpotential import MLPotentialImpl  # noqa: E402  (after the factory: see its docstring)


class E2FormerV2PotentialImpl(MLPotentialImpl):
    """openmm-ml implementation of the E2Former-V2 potential (one ``openmm.PythonForce``)."""

    def __init__(self, name: str = "e2formerv2", modelPath: Optional[str] = None, config: Any = None,
                 head: Optional[str] = None):
        self.name = name
        if modelPath is not None:
            modelPath = os.fspath(modelPath)
            if not os.path.exists(modelPath):
                raise FileNotFoundError(f"MLPotential('{name}'): modelPath {modelPath!r} does not exist")
            modelPath = os.path.abspath(modelPath)
        self.modelPath = modelPath
        self.config = config
        self.head = head

    def getMLLongRange(self) -> bool:
        return False

    # ------------------------------------------------------------------------------------------------
    def _loadModel(self, device, precision, compile_model=False, radial_tables=None):
        """Load (cached per process) the model now, so bad paths / heads / elements fail while the
        System is being built rather than in the first force evaluation."""
        from . import force as _force

        try:
            return _force.get_model(self.modelPath, self.config, device, precision, compile_model=compile_model,
                                    radial_tables=radial_tables)
        except Exception as exc:
            if self.modelPath is None and type(exc).__name__ == "DefaultModelUnavailable":
                raise RuntimeError(
                    f"MLPotential('{self.name}') was created without modelPath, but the bundled default "
                    f"E2Former-V2 model is not available in this installation ({exc}). Pass a checkpoint: "
                    f"MLPotential('{self.name}', modelPath='path/to/checkpoint.pt')") from exc
            raise

    def addForces(self, topology: openmm.app.Topology, system: openmm.System, atoms: Optional[Iterable[int]],
                  forceGroup: int, precision: Optional[str] = None, device: Any = None, charge: int = 0,
                  multiplicity: int = 1, head: Optional[str] = None, periodic: Optional[bool] = None,
                  compile: bool = False, radial_tables: Optional[bool] = None, cuda_graphs: Optional[bool] = None,
                  **ignored) -> None:
        from . import force as _force

        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, not {compile!r}")
        if radial_tables is not None and not isinstance(radial_tables, bool):
            raise TypeError(f"radial_tables must be None (automatic), True or False, not {radial_tables!r}")
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be None (automatic), True or False, not {cuda_graphs!r}")

        all_atoms = list(topology.atoms())
        indices = list(range(len(all_atoms))) if atoms is None else [int(i) for i in atoms]
        if not indices:
            raise ValueError("addForces: the ML atom selection is empty")
        # (the System may be an empty temporary one: openmm-ml's interpolation builds the ML force in a
        # scratch System and deep-copies it into a CustomCVForce, so only the topology is checked)
        for i in indices:
            if i < 0 or i >= len(all_atoms):
                raise ValueError(f"ML atom index {i} is out of range (the topology has {len(all_atoms)} atoms)")
        if len(set(indices)) != len(indices):
            raise ValueError("the ML atom selection contains duplicate indices")

        # Periodicity ---------------------------------------------------------------------------------
        has_box = topology.getPeriodicBoxVectors() is not None
        auto_periodic = has_box or system.usesPeriodicBoundaryConditions()
        if periodic is None:
            periodic = auto_periodic
        elif periodic and not auto_periodic:
            raise ValueError("periodic=True was requested but the topology has no periodic box vectors "
                             "(and the System does not use periodic boundary conditions): set box vectors "
                             "with topology.setPeriodicBoxVectors(...) or Modeller.addSolvent(...)")
        periodic = bool(periodic)

        # Elements ------------------------------------------------------------------------------------
        head = head if head is not None else self.head
        model = self._loadModel(device, precision, compile, radial_tables)
        if head is not None and head not in list(model.head_names):
            raise ValueError(f"unknown head {head!r}: the model has heads {list(model.head_names)}")
        supported = _supported_atomic_numbers(model, head)
        numbers = []
        for i in indices:
            atom = all_atoms[i]
            where = (f"atom {atom.index} ({atom.name!r} of residue {atom.residue.name} {atom.residue.id}, "
                     f"chain {atom.residue.chain.id})")
            if atom.element is None:
                raise ValueError(f"{where} has no element (virtual site or extra particle?); E2Former-V2 "
                                 f"needs a chemical element for every ML atom: leave such particles out of "
                                 f"the ML region")
            z = atom.element.atomic_number
            if z is None or (supported is not None and z not in supported):
                sym = getattr(atom.element, "symbol", "?")
                raise ValueError(f"{where} is element {sym} (Z={z}), which this E2Former-V2 model does not "
                                 f"support (supported: Z in {_describe(supported)})")
            numbers.append(int(z))

        pforce = _force.create_python_force(
            numbers, model_path=self.modelPath, config=self.config,
            particles=None if atoms is None else indices, periodic=periodic, charge=charge,
            multiplicity=multiplicity, head=head, device=device, precision=precision, force_group=forceGroup,
            compile_model=compile, radial_tables=radial_tables, cuda_graphs=cuda_graphs)
        system.addForce(pforce)

        # A pure-ML System from createSystem() has no bonded force, so OpenMM sees every atom as a molecule of
        # its own: MonteCarloBarostat then scales atom positions instead of molecule centres (valid, but bonds
        # are stretched at every volume move and most moves are rejected), and reporters wrap molecules apart
        # at the box boundary. Zero-strength bonds from the topology restore the molecules; they add no energy.
        if (periodic and atoms is None and system.getNumParticles() == len(all_atoms)
                and not _has_bonded_terms(system)):
            bonds = [(a.index, b.index) for a, b in topology.bonds()]
            if bonds:
                hb = openmm.HarmonicBondForce()
                hb.setName("E2FormerV2MoleculeBonds")
                hb.setForceGroup(forceGroup)
                hb.setUsesPeriodicBoundaryConditions(True)
                for i, j in bonds:
                    hb.addBond(i, j, 0.1, 0.0)
                system.addForce(hb)


def _has_bonded_terms(system) -> bool:
    for f in system.getForces():
        n = getattr(f, "getNumBonds", None)
        if callable(n) and n() > 0:
            return True
    return False


def _supported_atomic_numbers(model, head):
    """Set of atomic numbers the model (and head) accepts, or None if the model does not say."""
    trained = (getattr(model, "metadata", None) or {}).get("elements")
    if trained:   # our own models record the elements of their training data
        return set(int(z) for z in trained)
    fn = getattr(model, "supported_atomic_numbers", None)
    if callable(fn):
        try:
            res = fn(head)
        except TypeError:
            res = fn()
        return set(int(z) for z in res)
    if fn is not None:
        return set(int(z) for z in fn)
    lengths = getattr(model, "reference_length", None)
    cfg = getattr(model, "config", None)
    if lengths is not None:
        names = list(getattr(model, "head_names", []))
        h = names.index(head) if head in names else 0
        limit = int(lengths[h])
        if cfg is not None and getattr(cfg, "num_elements", None) is not None:
            limit = min(limit, int(cfg.num_elements))
        return set(range(1, limit))
    zmax = getattr(model, "max_atomic_number", None)
    if zmax is not None:
        return set(range(1, int(zmax) + 1))
    return None


def _describe(supported):
    if supported is None:
        return "?"
    s = sorted(supported)
    if s == list(range(s[0], s[-1] + 1)):
        return f"[{s[0]}, {s[-1]}]"
    return str(s)
