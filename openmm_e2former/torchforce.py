"""E2Former-V2 as an ``openmmtorch.TorchForce`` (TorchScript, GPU-resident on CUDA).

:class:`E2FormerTorchForceModule` wraps a loaded model so that ``torch.jit.script`` can compile it and
openmm-torch can call it: ``forward(positions_nm, box_nm=None) -> energy (kJ/mol)``.  Positions arrive
for *all* particles of the System (openmm-torch has no subset API), so the ML atoms are selected inside
the module with a stored index buffer; atomic numbers, charge, multiplicity and head index are stored in
the module.  Forces come from autograd of the energy with respect to the positions (for a checkpoint with
a direct force head this means the conservative forces of its energy head, not the direct head).
Reference energies are added in float64 so the total energy keeps its digits in single precision.

:func:`create_torch_force` builds the ``TorchForce`` from a checkpoint and a Topology.

Limitations (checked with the PyPI wheels, openmm 8.6.1):

* ``openmmtorch==1.5`` from PyPI is built against torch 2.9 and works only with torch 2.9.x (torch 2.9.1:
  correct energies and forces; newer torch: every evaluation fails with "set_stride is not allowed on a
  Tensor created from .data").  Import ``torch`` before ``openmm``, or the openmm-torch plug-ins fail to
  load.  The CUDA-12 build needs libtorch_cuda and libnvrtc.so.12 even on the CPU platform.
  ``.ci/torchforce_env.sh`` builds such an environment and runs ``tests/test_torchforce.py`` in it.
* On openmm 8.6.x a TorchForce cannot be cloned: ``XmlSerializer``, ``copy.deepcopy`` and therefore
  ``CustomCVForce`` (``MLPotential.createMixedSystem(..., interpolate=True)``) crash the process (an ABI
  change of OpenMM's SerializationNode).  Use the PythonForce path (``MLPotential('e2formerv2')``) for
  interpolation, serialization and openmm-ml's mixed systems; use the TorchForce for plain, GPU-resident
  production runs.
* TorchScript is deprecated from torch 2.14 on (warnings).
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

import torch

from .force import EV_TO_KJ_PER_MOL, NM_TO_ANGSTROM

__all__ = ["E2FormerTorchForceModule", "create_torch_force", "atomic_numbers_from_topology"]


class E2FormerTorchForceModule(torch.nn.Module):
    """TorchForce-compatible wrapper: ``forward(positions_nm[, box_nm]) -> energy kJ/mol``.

    Parameters
    ----------
    model: a loaded E2Former-V2 model (``openmm_e2former.load_model``); it is used (not copied).
    atomic_numbers: Z of the ML atoms, in the order of ``atoms``.
    atoms: indices of the ML atoms among all particles (None: all particles, in order).
    charge, multiplicity: total charge and 2S+1 of the ML region.
    head: model head name (None: the model's default head).
    """

    def __init__(self, model, atomic_numbers: Sequence[int], atoms: Optional[Sequence[int]] = None,
                 charge: int = 0, multiplicity: int = 1, head: Optional[str] = None):
        super().__init__()
        z = torch.as_tensor([int(v) for v in atomic_numbers], dtype=torch.long)
        if atoms is None:
            atoms = list(range(len(z)))
        if len(atoms) != len(z):
            raise ValueError(f"{len(atoms)} ML atom indices but {len(z)} atomic numbers")
        self.model = model
        ref_dev = getattr(model, "reference_energy", None)
        device = ref_dev.device if ref_dev is not None else torch.device("cpu")
        self.head_index: int = int(model.head_index(head if head is not None else model.default_head))
        self.charge: int = int(charge)
        self.multiplicity: int = int(multiplicity)
        self.register_buffer("atomic_numbers", z.to(device))
        self.register_buffer("atoms", torch.as_tensor([int(i) for i in atoms], dtype=torch.long, device=device))
        self.register_buffer("pbc", torch.ones(3, dtype=torch.bool, device=device))
        # float64 sum of the head's per-element reference energies (eV), added outside the network dtype
        ref_sum = model.reference(self.atomic_numbers, self.head_index).to(torch.float64).reshape(())
        self.register_buffer("reference_sum", ref_sum.detach().clone())
        # carries the model's dtype in a form TorchScript understands
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=model.dtype, device=device))
        self.energy_scale: float = EV_TO_KJ_PER_MOL
        self.length_scale: float = NM_TO_ANGSTROM

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        dtype = self.dtype_probe.dtype
        pos = positions.index_select(0, self.atoms).to(dtype) * self.length_scale
        cell: Optional[torch.Tensor] = None
        pbc: Optional[torch.Tensor] = None
        if boxvectors is not None:
            cell = boxvectors.to(dtype) * self.length_scale
            pbc = self.pbc
        energy_model, _ = self.model.energy_terms(self.atomic_numbers, pos, cell, pbc, self.charge,
                                                  self.multiplicity, self.head_index)
        return (energy_model.to(torch.float64) + self.reference_sum) * self.energy_scale


def atomic_numbers_from_topology(topology, atoms: Optional[Iterable[int]] = None) -> List[int]:
    all_atoms = list(topology.atoms())
    idx = list(range(len(all_atoms))) if atoms is None else [int(i) for i in atoms]
    out = []
    for i in idx:
        a = all_atoms[i]
        if a.element is None:
            raise ValueError(f"atom {a.index} ({a.name!r} of residue {a.residue.name} {a.residue.id}) has no element; "
                             "leave it out of the ML region")
        out.append(int(a.element.atomic_number))
    return out


def create_torch_force(model_path: Optional[str], topology, atoms: Optional[Iterable[int]] = None, charge: int = 0,
                       multiplicity: int = 1, head: Optional[str] = None, precision: Optional[str] = None,
                       config: Any = None, periodic: Optional[bool] = None, force_group: int = 0,
                       save_path: Optional[str] = None, model=None):
    """Build an ``openmmtorch.TorchForce`` computing E2Former-V2 for ``atoms`` (default: all) of ``topology``.

    ``periodic`` defaults to whether the topology has box vectors.  The module is compiled with
    ``torch.jit.script`` (and saved to ``save_path`` if given).  See the module docstring for the
    torch 2.9.x requirement and the no-cloning limitation of TorchForce on openmm 8.6.
    """
    import openmmtorch  # noqa: F401  (import torch -- done above -- before openmm)

    if model is None:
        from .force import resolve_dtype

        try:
            from openmm_e2former import load_model
        except ImportError:  # pragma: no cover
            from openmm_e2former.model.checkpoint import load_model
        model = load_model(path=model_path, config=config, device="cpu", dtype=resolve_dtype(precision))
    atoms_list = None if atoms is None else [int(i) for i in atoms]
    numbers = atomic_numbers_from_topology(topology, atoms_list)
    if atoms_list is None:
        atoms_list = list(range(topology.getNumAtoms()))
    module = E2FormerTorchForceModule(model, numbers, atoms_list, charge=charge, multiplicity=multiplicity, head=head)
    scripted = torch.jit.script(module)
    if save_path is not None:
        scripted.save(save_path)
        force = openmmtorch.TorchForce(save_path)
    else:
        force = openmmtorch.TorchForce(scripted)
    if periodic is None:
        periodic = topology.getPeriodicBoxVectors() is not None
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setForceGroup(force_group)
    return force
