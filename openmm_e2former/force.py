"""The OpenMM force of E2Former-V2: one :class:`openmm.PythonForce` around the model.

Units: OpenMM hands positions / box vectors in nm and wants energy in kJ/mol and forces in
kJ/mol/nm; the model works in Å and eV.  The conversion happens here, with exact constants.

What is pickled
---------------
``openmm.PythonForce`` pickles its callable when it is built, and every ``copy.deepcopy`` /
``XmlSerializer`` round trip / ``CustomCVForce`` (``createMixedSystem(..., interpolate=True)``)
unpickles a *new* instance.  :class:`E2FormerForceComputation` therefore pickles only what defines the
potential: the model file's absolute path (plus the config path or dict), atomic numbers, charge,
multiplicity, head, periodicity, device request and precision -- a few hundred bytes whatever the
model size.  We deliberately do *not* embed the weights: the production model has ~25 M parameters
(~100 MB as float32, ~200 MB once XmlSerializer hex-encodes the pickle), and the interpolation path
deep-copies the force, so embedded weights would make every copy and every serialized System huge.
The price is that a serialized System refers to the model file by path; the error on a missing file
names the path.  ``modelPath=None`` (the bundled default model) is pickled as ``None`` and resolved in
the process that runs the force.

The model itself is loaded lazily, on the first evaluation, through a per-process cache keyed by
(path, config, device, dtype): all copies of a force in one process share one model on the device.

Data path per step (CUDA)
-------------------------
OpenMM 8.6 has no GPU-resident path for a PythonForce: positions come to the host, forces go back.
We keep the model, atomic numbers and the model's neighbour list on the GPU and use one pinned host
buffer each way:

1. ``State._getVectorAsNumpy`` writes the positions (float64 nm) straight into a pinned buffer that
   also holds the 3 box rows (no Quantity objects, no temporary arrays);
2. one asynchronous host->device copy of that buffer; nm->Å and float64->model dtype on the GPU;
3. ``model.energy_and_forces`` (neighbour list + network + autograd / direct forces on the GPU); the
   model's input validation (an extra neighbour search and host syncs) runs on the first evaluation
   only, later a non-finite energy triggers it to name the problem;
4. forces (scaled to kJ/mol/nm, float64) and energy are packed into one device buffer and copied
   back with one device->host copy into a pinned buffer; one stream synchronisation;
5. the callable returns a float and a NumPy view of the pinned buffer (OpenMM copies it at once).

On a CUDA device, for float32 systems of at most ``graphed.AUTO_MAX_ATOMS`` (150,000) ML atoms whose step fits in
memory (``graphed.graph_memory_fits``), or with
``cuda_graphs=True`` (``E2FORMER_CUDA_GRAPHS=1`` / ``0`` forces it on / off on CUDA when the argument is None),
step 3 runs, after the first (validated, eager) evaluation, through
:class:`openmm_e2former.graphed.GraphedEnergyForces`: the network's forward and backward replayed from a CUDA
graph over fixed-capacity edge buffers (``cuda_graphs=True`` on the CPU runs the same padded path eagerly, for
tests: it is slower than the ordinary path there).
"""
from __future__ import annotations

import os
import pickle
import threading
from typing import Any, Optional, Sequence

import numpy as np

__all__ = [
    "EV_TO_KJ_PER_MOL",
    "NM_TO_ANGSTROM",
    "E2FormerForceComputation",
    "QuadraticTestModel",
    "create_python_force",
    "get_model",
    "resolve_device",
    "resolve_dtype",
]

#: 1 eV in kJ/mol (CODATA 2018: e * N_A / 1000).
EV_TO_KJ_PER_MOL = 96.48533212331002
#: 1 nm in Å.
NM_TO_ANGSTROM = 10.0
#: eV/Å -> kJ/mol/nm.
EV_PER_A_TO_KJ_PER_MOL_NM = EV_TO_KJ_PER_MOL * NM_TO_ANGSTROM

#: Model "path" that selects the trivial test model (see QuadraticTestModel); used by the overhead
#: benchmark and tests that exercise the OpenMM plumbing without the network.
QUADRATIC_TEST_MODEL = "builtin:quadratic-test-model"
#: the same E = k sum r^2 with analytic forces F = -2 k r (no autograd): the force's data path alone
QUADRATIC_TEST_MODEL_ANALYTIC = "builtin:quadratic-test-model-analytic"
_BUILTIN_MODELS = (QUADRATIC_TEST_MODEL, QUADRATIC_TEST_MODEL_ANALYTIC)

_MODEL_CACHE: dict = {}
_MODEL_CACHE_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------------
# device / precision / model cache
# ----------------------------------------------------------------------------------------------------
def resolve_device(device: Any = None) -> str:
    """``None`` -> ``'cuda'`` when torch sees a GPU, else ``'cpu'``; ``torch.device`` or str accepted.
    Returned normalised (``'cuda'`` -> ``'cuda:<current>'``) so it can be used as a cache key."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} was requested but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


#: ``precision`` values: openmm-ml's None / 'single' / 'double', and two faster float32 modes of this plugin
PRECISIONS = (None, "single", "double", "tf32", "bf16")


def resolve_dtype(precision: Optional[str] = None):
    """openmm-ml's ``precision`` argument: None / 'single' -> float32, 'double' -> float64; and this plugin's
    'tf32' / 'bf16': a float32 model whose matrix products use TF32 tensor cores ('tf32'), plus bf16 autocast of
    the node-level products ('bf16'); see ``E2FormerV2.set_precision``."""
    import torch

    if precision is None or precision in ("single", "tf32", "bf16"):
        return torch.float32
    if precision == "double":
        return torch.float64
    raise ValueError(f"precision must be None, 'single', 'double', 'tf32' or 'bf16', not {precision!r}")


def resolve_mode(precision: Optional[str] = None) -> str:
    """The model's ``set_precision`` mode for an openmm-ml ``precision``: 'tf32' / 'bf16' as given, else 'fp32'
    (float32 or float64 with exact products)."""
    resolve_dtype(precision)            # validates
    return precision if precision in ("tf32", "bf16") else "fp32"


def resolve_radial_tables(radial_tables: Optional[bool], device: str, dtype) -> bool:
    """``radial_tables`` of ``createSystem`` / the force: True / False as given; None (the default) = on for a
    float32 model on a CUDA device, off otherwise (float64 keeps the exact edge MLPs; the CPU keeps the
    reference path).  The tables (``E2FormerV2.set_radial_tables``) replace each edge MLP by per-element-pair
    cubic pieces whose error (~1e-8 relative) is below float32 rounding; on an H200 they pass the 70 GPU parity
    cases and take 25 % off an OpenMM step of 115,200 atoms (``benchmarks/results/session12_h200.md``)."""
    import torch

    if radial_tables is not None:
        return bool(radial_tables)
    return torch.device(device).type == "cuda" and dtype == torch.float32


def _config_key(config: Any):
    if config is None or isinstance(config, str):
        return config
    if isinstance(config, os.PathLike):
        return os.fspath(config)
    import json

    return json.dumps(config, sort_keys=True, default=str)


def get_model(model_path: Optional[str], config: Any = None, device: Any = None, precision: Optional[str] = None,
              compile_model: bool = False, radial_tables: Optional[bool] = None):
    """Load (once per process) and return the model for (path, config, device, precision, compile_model,
    radial_tables).  ``compile_model``: ``E2FormerV2.set_compile`` (experimental: torch.compile of the blocks'
    node-level parts, used by the eager path, i.e. above the CUDA-graph size or with the graph turned off);
    ``radial_tables``: ``E2FormerV2.set_radial_tables`` (the edge MLPs read from per-element-pair tables; None: on
    for float32 on CUDA, see :func:`resolve_radial_tables`)."""
    dev = resolve_device(device)
    dtype = resolve_dtype(precision)
    mode = resolve_mode(precision)
    compile_model = bool(compile_model)
    radial_tables = resolve_radial_tables(radial_tables, dev, dtype)
    # set_precision, set_compile and set_radial_tables change the model: one each
    key = (model_path, _config_key(config), dev, str(dtype), mode, compile_model, radial_tables)
    with _MODEL_CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            if model_path in _BUILTIN_MODELS:
                model = QuadraticTestModel(device=dev, dtype=dtype, autograd=model_path == QUADRATIC_TEST_MODEL)
            else:
                if model_path is not None and not os.path.exists(model_path):
                    raise FileNotFoundError(f"E2Former-V2 model file not found: {model_path}")
                try:
                    from openmm_e2former import load_model
                except ImportError:  # package __init__ without the re-export
                    from openmm_e2former.model.checkpoint import load_model

                model = load_model(path=model_path, config=config, device=dev, dtype=dtype)
                if mode != "fp32":
                    model.set_precision(mode)
                if compile_model:
                    model.set_compile(True)
                if radial_tables:
                    model.requires_grad_(False)      # inference only: tables are built for frozen weights
                    model.set_radial_tables(True)
            _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()


class QuadraticTestModel:
    """A trivial stand-in with the model's calling convention: E = k * sum(positions**2) (eV, Å), forces by
    autograd.  Used by ``benchmarks/openmm_overhead.py`` to measure the cost of the OpenMM <-> torch data
    path alone (same buffers and copies as the real model) and by plumbing tests."""

    cutoff = 4.5
    head_names = ["test"]
    default_head = "test"

    def __init__(self, device="cpu", dtype=None, k: float = 1e-3, autograd: bool = True):
        import torch

        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.k = k
        self.autograd = autograd

    def head_index(self, name):
        return 0

    def energy_and_forces(self, atomic_numbers, positions, cell, pbc, charge, multiplicity, head):
        import torch

        if not self.autograd:
            return self.k * (positions * positions).sum(), (-2.0 * self.k) * positions
        with torch.enable_grad():
            pos = positions.detach().requires_grad_(True)
            energy = self.k * (pos * pos).sum()
            (grad,) = torch.autograd.grad(energy, pos)
        return energy.detach(), -grad


# ----------------------------------------------------------------------------------------------------
# the PythonForce callable
# ----------------------------------------------------------------------------------------------------
class _Runtime:
    """Per-process, per-instance state built on the first call (never pickled)."""

    def __init__(self, comp: "E2FormerForceComputation"):
        import torch

        self.model = get_model(comp.model_path, comp.config, comp.device, comp.precision,
                               compile_model=bool(comp.compile_model), radial_tables=comp.radial_tables)
        self.dev = torch.device(resolve_device(comp.device))
        self.dtype = resolve_dtype(comp.precision)
        #: TF32 for the matrix products outside the fused kernels ('tf32', 'bf16'): torch's global switch, set for
        #: the duration of each of our evaluations and restored after it (a CUDA graph keeps what it captured)
        self.tf32 = resolve_mode(comp.precision) != "fp32"
        n = len(comp.atomic_numbers)
        self.n = n
        self.cuda = self.dev.type == "cuda"
        pin = self.cuda
        # host -> device: rows [0, n) positions (nm), rows [n, n+3) box vectors (nm)
        self.h_in = torch.zeros((n + 3, 3), dtype=torch.float64, pin_memory=pin)
        self.h_in_np = self.h_in.numpy()
        self.h_pos_np = self.h_in_np[:n]
        # device -> host: [0, 3n) forces (kJ/mol/nm), [3n] energy (kJ/mol)
        self.h_out = torch.zeros(3 * n + 1, dtype=torch.float64, pin_memory=pin)
        self.h_out_np = self.h_out.numpy()
        self.forces_view = self.h_out_np[: 3 * n].reshape(n, 3)
        # positions + box in Å and the model dtype (one fused scale+cast kernel per step)
        self.d_x = torch.empty((n + 3, 3), dtype=self.dtype, device=self.dev)
        if self.cuda:
            self.d_in = torch.empty((n + 3, 3), dtype=torch.float64, device=self.dev)
            self.d_out = torch.empty(3 * n + 1, dtype=torch.float64, device=self.dev)
        else:
            self.d_in = self.h_in
            self.d_out = self.h_out
        self.z = torch.as_tensor(np.asarray(comp.atomic_numbers, dtype=np.int64), device=self.dev)
        self.pbc = torch.tensor([True, True, True], device=self.dev) if comp.periodic else None
        self.head = comp.head if comp.head is not None else getattr(self.model, "default_head", None)
        self.fast_positions = hasattr(_state_class(), "_getVectorAsNumpy")
        try:
            import inspect

            self.validate_kw = "validate" in inspect.signature(self.model.energy_and_forces).parameters
        except (TypeError, ValueError):  # pragma: no cover
            self.validate_kw = False
        self.validated = False
        self.lock = threading.Lock()
        # the padded / CUDA-graph path (built after the first, validated, evaluation); not for the test models
        from .graphed import graph_memory_fits, use_cuda_graphs

        # on CUDA: systems up to AUTO_MAX_ATOMS whose step fits in memory by default, or as E2FORMER_CUDA_GRAPHS
        # says; never on the CPU by default; the explicit argument forces the choice on any device (tests)
        wanted = use_cuda_graphs(comp.cuda_graphs, self.cuda, self.n, self.dtype == torch.float32,
                                 fits=graph_memory_fits(self.model, self.n))
        # the padded path needs the relative EAAS route: a model switched to "so2" keeps the eager path unless
        # the padded one was asked for explicitly (which then names the problem)
        self.use_graphed = wanted and hasattr(self.model, "padded_energy_terms") and (
            comp.cuda_graphs is not None or getattr(self.model, "eaas", "relative") != "so2")
        self.graphed = None

    def graphed_call(self, comp: "E2FormerForceComputation", pos, cell, cell_host=None):
        if self.graphed is None:
            from .graphed import GraphedEnergyForces

            self.graphed = GraphedEnergyForces(self.model, comp.atomic_numbers, comp.periodic, comp.charge,
                                               comp.multiplicity, self.head)
        return self.graphed(pos, cell, cell_host)


_STATE_CLASS = None


def _state_class():
    global _STATE_CLASS
    if _STATE_CLASS is None:
        import openmm

        _STATE_CLASS = openmm.State
    return _STATE_CLASS


class E2FormerForceComputation:
    """Callable given to ``openmm.PythonForce``: state (nm) -> (energy kJ/mol, forces kJ/mol/nm).

    Small to pickle (see the module docstring); the model is loaded on the first call."""

    _PICKLED = ("model_path", "config", "atomic_numbers", "charge", "multiplicity", "head", "periodic",
                "device", "precision", "cuda_graphs", "compile_model", "radial_tables")

    def __init__(self, atomic_numbers: Sequence[int], model_path: Optional[str] = None, config: Any = None,
                 charge: int = 0, multiplicity: int = 1, head: Optional[str] = None, periodic: bool = False,
                 device: Any = None, precision: Optional[str] = None, cuda_graphs: Optional[bool] = None,
                 compile_model: bool = False, radial_tables: Optional[bool] = None):
        if model_path is not None and model_path not in _BUILTIN_MODELS:
            model_path = os.path.abspath(os.fspath(model_path))
        if isinstance(config, os.PathLike) or (isinstance(config, str) and os.path.exists(config)):
            config = os.path.abspath(os.fspath(config))
        self.model_path = model_path
        self.config = config
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        self.charge = int(charge)
        self.multiplicity = int(multiplicity)
        self.head = head
        self.periodic = bool(periodic)
        self.device = None if device is None else str(device)
        self.precision = precision
        #: the padded / CUDA-graph path: True / False, or None = the E2FORMER_CUDA_GRAPHS environment variable
        self.cuda_graphs = None if cuda_graphs is None else bool(cuda_graphs)
        #: E2FormerV2.set_compile (experimental; the eager path only)
        self.compile_model = bool(compile_model)
        #: E2FormerV2.set_radial_tables: True / False, or None = on for float32 on CUDA (resolve_radial_tables)
        self.radial_tables = None if radial_tables is None else bool(radial_tables)
        self._rt: Optional[_Runtime] = None

    # -- pickling: the definition only, never the model or buffers --------------------------------
    def __getstate__(self):
        return {k: getattr(self, k) for k in self._PICKLED}

    def __setstate__(self, state):
        for k in self._PICKLED:
            setattr(self, k, state.get(k))
        self._rt = None

    def __repr__(self):
        return (f"E2FormerForceComputation(model_path={self.model_path!r}, n_atoms={len(self.atomic_numbers)}, "
                f"charge={self.charge}, multiplicity={self.multiplicity}, head={self.head!r}, "
                f"periodic={self.periodic}, device={self.device!r}, precision={self.precision!r})")

    # -- evaluation ----------------------------------------------------------------------------------
    def runtime(self) -> _Runtime:
        if self._rt is None:
            self._rt = _Runtime(self)
        return self._rt

    def __call__(self, state):
        rt = self._rt if self._rt is not None else self.runtime()
        with rt.lock:
            if not rt.tf32:
                return self._compute(rt, state)
            import torch

            before = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                return self._compute(rt, state)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = before

    def _compute(self, rt: _Runtime, state):
        import torch

        n = rt.n
        if rt.fast_positions:
            # writes exactly n rows of float64 nm into the pinned buffer
            state._getVectorAsNumpy(_state_class().Positions, rt.h_pos_np)
        else:  # pragma: no cover - older/newer OpenMM without the private helper
            from openmm import unit

            rt.h_pos_np[...] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if self.periodic:
            box = state.getPeriodicBoxVectors(asNumpy=True)
            rt.h_in_np[n:] = box._value if hasattr(box, "_value") else box
        if rt.cuda:
            rt.d_in.copy_(rt.h_in, non_blocking=True)
        x = torch.mul(rt.d_in, NM_TO_ANGSTROM, out=rt.d_x)
        pos = x[:n]
        cell = x[n:] if self.periodic else None
        if rt.use_graphed and rt.validated:
            # the box as the host already has it (Å), for the choice of the in-graph neighbour list
            cell_host = rt.h_in_np[n:] * NM_TO_ANGSTROM if self.periodic else None
            energy, forces = rt.graphed_call(self, pos, cell, cell_host)
        else:
            kwargs = {}
            if rt.validate_kw:
                # full input validation (elements, NaN, overlaps: an extra neighbour search and several host
                # syncs) on the first evaluation only; later steps check the energy for finiteness and
                # re-run with validation to report what went wrong.
                kwargs["validate"] = not rt.validated
            out = rt.model.energy_and_forces(rt.z, pos, cell, rt.pbc, self.charge, self.multiplicity, rt.head,
                                             **kwargs)
            energy, forces = out[0], out[-1]
        with torch.no_grad():
            # one fused kernel each: scale + cast to float64 into the packed output buffer
            torch.mul(forces.detach().reshape(-1), EV_PER_A_TO_KJ_PER_MOL_NM, out=rt.d_out[: 3 * n])
            torch.mul(energy.detach().reshape(()), EV_TO_KJ_PER_MOL, out=rt.d_out[3 * n])
            if rt.cuda:
                rt.h_out.copy_(rt.d_out, non_blocking=True)
                torch.cuda.current_stream(rt.dev).synchronize()
        e = float(rt.h_out_np[3 * n])
        if not np.isfinite(e):
            if rt.validate_kw and rt.validated:
                rt.model.energy_and_forces(rt.z, pos, cell, rt.pbc, self.charge, self.multiplicity, rt.head,
                                           validate=True)
            raise ValueError(f"E2Former-V2 energy is not finite ({e}): the simulation is unstable or the "
                             "structure is invalid")
        rt.validated = True
        return e, rt.forces_view


# ----------------------------------------------------------------------------------------------------
def create_python_force(atomic_numbers: Sequence[int], model_path: Optional[str] = None, config: Any = None,
                        particles: Optional[Sequence[int]] = None, periodic: bool = False, charge: int = 0,
                        multiplicity: int = 1, head: Optional[str] = None, device: Any = None,
                        precision: Optional[str] = None, force_group: int = 0, name: str = "E2FormerV2",
                        cuda_graphs: Optional[bool] = None, compile_model: bool = False,
                        radial_tables: Optional[bool] = None):
    """Build the ``openmm.PythonForce`` (not added to any System).

    ``atomic_numbers[i]`` belongs to particle ``particles[i]`` (all particles of the System when
    ``particles`` is None).  ``cuda_graphs``: the padded / CUDA-graph path (None: on a CUDA device for float32
    models of at most ``graphed.AUTO_MAX_ATOMS`` ML atoms whose step fits in memory, or as ``E2FORMER_CUDA_GRAPHS``
    says; True forces it on any device, without a graph on the CPU; False turns it off)."""
    import openmm

    if particles is not None and len(particles) != len(atomic_numbers):
        raise ValueError(f"{len(particles)} particles but {len(atomic_numbers)} atomic numbers")
    comp = E2FormerForceComputation(atomic_numbers, model_path=model_path, config=config, charge=charge,
                                    multiplicity=multiplicity, head=head, periodic=periodic, device=device,
                                    precision=precision, cuda_graphs=cuda_graphs, compile_model=compile_model,
                                    radial_tables=radial_tables)
    pickle.dumps(comp)  # PythonForce swallows pickling errors (then deepcopy/XML fail later): fail here
    force = openmm.PythonForce(comp)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    if particles is not None:
        force.setParticles([int(i) for i in particles])
    force.setForceGroup(force_group)
    force.setName(name)
    return force
