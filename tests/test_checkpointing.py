"""Activation checkpointing of the transformer blocks (``E2FormerV2.checkpoint_blocks``, issue #4).

"block" (each whole block one checkpoint) and "fine" (per block: nested checkpoints over atom slices; with the
fused-kernel API the attention kernel itself runs per slice of target atoms) must compute the same energy,
forces and parameter gradients (incl. the double backward of a force loss) as no checkpointing.  Peak memory
cannot be measured on the CPU: ``test_fine_mode_runs_in_atom_slices`` shows instead that the per-atom work of
a block runs in slices of ``checkpoint_chunk_atoms`` atoms.  Small random-weight models, float64 unless noted.
"""
from __future__ import annotations

import copy
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TRITON_MODEL_SCRIPT_HEAD, count_calls, run_under_triton_interpreter, water_box

from openmm_e2former.model import E2FormerConfig, E2FormerV2
from openmm_e2former.model import e2former as E2

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(channels=16, num_layers=2, num_heads=4, head_dim=4, num_basis=16, atom_embed_size=8,
             max_neighbors=12)
CHUNK = 7          # 81 atoms: 11 slices of 7 and a ragged last one of 4


def _model(dtype=torch.float64, seed=0, **cfg):
    torch.manual_seed(seed)
    m = E2FormerV2(E2FormerConfig(**dict(SMALL, **cfg))).to(dtype)
    # the default zero biases / unit norm weights make some paths trivially symmetric: perturb everything
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _system(n_side=3, seed=1):
    z, pos, cell = water_box(n_side, 3.1, seed=seed)
    return torch.tensor(z), torch.tensor(pos), torch.tensor(cell), torch.tensor([True, True, True])


def _set_mode(m, mode, chunk=CHUNK):
    m.checkpoint_blocks = mode
    m.checkpoint_chunk_atoms = chunk
    return m


def _evaluate(m, sysm, params=True):
    """(energy, forces, parameter gradients of E + 0.1 sum F^2 (double backward))."""
    z, pos, cell, pbc = sysm
    pos = pos.to(m.dtype).clone().requires_grad_(True)
    e, _ = m.energy_terms(z, pos, cell.to(m.dtype), pbc, 0, 1, 0)
    if not params:
        (g,) = torch.autograd.grad(e, pos)
        return e.detach(), -g, []
    (g,) = torch.autograd.grad(e, pos, create_graph=True)
    loss = e + 0.1 * g.square().sum()
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in m.named_parameters() if p.requires_grad], allow_unused=True)
    return e.detach(), -g.detach(), list(zip(names, grads))


def _fused_api_on_cpu(monkeypatch):
    """Route the attention through the fused-kernel code path (``kernels.fused_attention``, which on CPU
    tensors dispatches to its PyTorch reference) as on the GPU."""
    monkeypatch.setattr(E2.Attention, "use_fused", lambda self, x: not (self.qkdot or self.use_so2))


def _assert_same(ref, out, rtol):
    e0, f0, g0 = ref
    e1, f1, g1 = out
    assert abs(float(e1 - e0)) <= rtol * abs(float(e0)), (float(e0), float(e1))
    scale = f0.abs().max()
    assert scale > 0
    assert (f1 - f0).abs().max() <= rtol * scale, float((f1 - f0).abs().max() / scale)
    assert len(g0) == len(g1)
    n_nonzero = 0
    for (n0, a), (n1, b) in zip(g0, g1):
        assert n0 == n1
        if a is None or b is None:
            assert a is None and b is None, n0
            continue
        s = a.abs().max()
        n_nonzero += int(s > 0)
        assert (b - a).abs().max() <= rtol * max(float(s), 1e-12), (n0, float((b - a).abs().max()), float(s))
    if g0:
        assert n_nonzero >= len(g0) - 2   # (e.g. unused element rows aside, gradients really flow everywhere)


ROUTES = {
    "relative": dict(eaas="relative", fused=False, cfg={}),
    "fused-api": dict(eaas="relative", fused=True, cfg={}),
    "fused-api-smooth": dict(eaas="relative", fused=True, cfg=dict(attention_softmax="smooth")),
    "so2": dict(eaas="so2", fused=False, cfg={}),
    "qkdot": dict(eaas="relative", fused=False, cfg=dict(logit_form="QKdot_alpha")),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_block_and_fine_checkpointing_match_plain(route, monkeypatch):
    r = ROUTES[route]
    if r["fused"]:
        _fused_api_on_cpu(monkeypatch)
    m = _model(**r["cfg"]).set_eaas(r["eaas"])
    sysm = _system()
    ref = _evaluate(_set_mode(m, False), sysm)
    for mode in ("block", True, "fine"):
        out = _evaluate(_set_mode(m, mode), sysm)
        _assert_same(ref, out, 1e-10)
    # a slice larger than the system (one slice), and a slice of a single atom
    out = _evaluate(_set_mode(m, "fine", 1000), sysm)
    _assert_same(ref, out, 1e-10)
    out = _evaluate(_set_mode(m, "fine", 1), sysm, params=False)
    _assert_same(ref[:2] + ([],), out, 1e-10)


def test_fine_gradients_reach_system_embedding_and_positions():
    """The system (charge / multiplicity) embedding enters the l=0 row inside the first checkpointed part:
    its parameters get the same gradients (charge 1, multiplicity 2 so that the rows are non-trivial)."""
    m = _model()
    z, pos, cell, pbc = _system(2)
    out = []
    for mode in (False, "fine"):
        _set_mode(m, mode, 5)
        p = pos.clone().requires_grad_(True)
        e, _ = m.energy_terms(z, p, cell, pbc, 1, 2, 0)
        params = [m.system_mix.weight, m.charge_embedding.weight, m.multiplicity_embedding.weight]
        out.append(torch.autograd.grad(e, [p] + params))
    for a, b in zip(*out):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("fused", [False, True])
def test_fine_mode_isolated_atoms_and_empty_slices(fused, monkeypatch):
    """Atoms without neighbours, slices whose atoms have no edges at all, single-atom slices."""
    if fused:
        _fused_api_on_cpu(monkeypatch)
    m = _model().requires_grad_(False)
    z = torch.tensor([8, 1, 1, 6, 7, 8, 1])
    pos = torch.tensor([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0], [20.0, 0, 0], [40.0, 0, 0], [60.0, 0, 0],
                        [61.0, 0, 0]], dtype=torch.float64)
    ref = m.energy_and_forces(z, pos)
    assert ref[2].abs().max() > 0
    for chunk in (2, 1):
        out = _set_mode(m, "fine", chunk).energy_and_forces(z, pos)
        assert abs(float(out[1] - ref[1])) < 1e-12 * abs(float(ref[1]))
        torch.testing.assert_close(out[2], ref[2], rtol=0, atol=1e-12)


class _FakeFeatures:
    """Stands in for node features in _checkpoint_mode (only .is_cuda and .numel() are used)."""

    def __init__(self, n, is_cuda):
        self.n, self.is_cuda = n, is_cuda

    def numel(self):
        return self.n


def test_auto_mode_picks_fine_where_block_would_not_fit(monkeypatch):
    """On the GPU, "auto" takes "fine" below its size threshold wherever the estimated "block" peak
    (checkpoint_block_bytes_per_element per node-feature float) exceeds 90 % of the device memory left, and
    "block" where it fits or the query fails; the CPU never asks."""
    m = _model()
    m.checkpoint_min_elements = 1000
    m.checkpoint_fine_min_elements = 10 ** 9
    m.checkpoint_block_bytes_per_element = 100.0
    m.checkpoint_blocks = "auto"
    avail = {"bytes": 1_000_000}
    real_query = type(m)._cuda_available_bytes
    monkeypatch.setattr(type(m), "_cuda_available_bytes", staticmethod(lambda x: avail["bytes"]))
    m.checkpoint_block_qk_bytes_per_element = 70.0
    assert m._checkpoint_mode(_FakeFeatures(9000, True)) == "block"      # 0.9 MB <= 0.9 MB
    # "block" does not fit, "block" with q / k recomputed does (session 11), up to 0.9 MB / 70 B = 12857 floats
    assert m._checkpoint_mode(_FakeFeatures(9001, True)) == "block+qk"
    assert m._checkpoint_mode(_FakeFeatures(12857, True)) == "block+qk"
    assert m._checkpoint_mode(_FakeFeatures(12858, True)) == "fine"
    m.set_recompute_qk(True)             # the user recomputes q / k anyway: "block" did not fit, so "fine"
    assert m._checkpoint_mode(_FakeFeatures(9001, True)) == "fine"
    m.set_recompute_qk(False)
    assert m._checkpoint_mode(_FakeFeatures(999, True)) == "none"        # below the threshold: no question
    assert m._checkpoint_mode(_FakeFeatures(10 ** 6, False)) == "block"  # CPU
    avail["bytes"] = None                                                  # query failed: as before
    assert m._checkpoint_mode(_FakeFeatures(10 ** 6, True)) == "block"
    m.checkpoint_blocks = "block"                                          # an explicit mode is obeyed
    avail["bytes"] = 1
    assert m._checkpoint_mode(_FakeFeatures(10 ** 6, True)) == "block"
    # without CUDA the real query returns None instead of raising
    assert real_query(_FakeFeatures(1, True)) is None


class _FakeCudaFeatures(_FakeFeatures):
    """_FakeFeatures with the dtype / device the fused-kernel test (``use_fused``) looks at."""
    dtype = torch.float32


def test_auto_mode_runs_without_checkpointing_where_it_fits(monkeypatch):
    """Session 13: above checkpoint_min_elements, "auto" on the GPU takes no checkpointing where its estimated
    peak (checkpoint_none_bytes_per_element per node-feature float) fits in 90 % of the device memory left and
    every block runs the fused kernels; else it falls through to the "block" / "block+qk" / "fine" rules as
    before.  An out-of-memory error at a size (``_auto_none_oom_elements``) rules "none" out from that size on."""
    m = _model()
    m.checkpoint_min_elements = 1000
    m.checkpoint_fine_min_elements = 20000
    m.checkpoint_block_bytes_per_element = 100.0
    m.checkpoint_block_qk_bytes_per_element = 70.0
    m.checkpoint_none_bytes_per_element = 300.0
    m.checkpoint_blocks = "auto"
    avail = {"bytes": 10_000_000}
    monkeypatch.setattr(type(m), "_cuda_available_bytes", staticmethod(lambda x: avail["bytes"]))
    fused = {"attn": True, "ed": True}
    monkeypatch.setattr(E2.Attention, "use_fused", lambda self, x: fused["attn"])
    monkeypatch.setattr(E2.EdgeDegreeEmbedding, "use_fused", lambda self, x: fused["ed"])
    x = lambda n: _FakeCudaFeatures(n, True)
    assert m._checkpoint_mode(x(15000)) == "block"      # outside energy_and_forces (a caller's own backward, a
    m._auto_none_allowed = True                         # double backward): never "none" by the estimate
    assert m._checkpoint_mode(x(999)) == "none" and not m._auto_none_taken       # below the threshold, as before
    assert m._checkpoint_mode(x(30000)) == "none" and m._auto_none_taken          # 9.0 MB <= 0.9 * 10 MB
    m._auto_none_taken = False
    assert m._checkpoint_mode(x(30001)) == "fine"                                  # over: the "fine" threshold
    assert m._checkpoint_mode(x(15000)) == "none"
    avail["bytes"] = 2_000_000                                                      # 300 B x 15000 does not fit
    assert m._checkpoint_mode(x(15000)) == "block"
    avail["bytes"] = 10_000_000
    fused["attn"] = False                                       # a PyTorch attention route: its edge tensors
    assert m._checkpoint_mode(x(15000)) == "block"              # are not in the estimate
    fused["attn"], fused["ed"] = True, False
    assert m._checkpoint_mode(x(15000)) == "block"
    fused["ed"] = True
    m._auto_none_oom_elements = 12000                           # ran out of memory at 12000 once
    assert m._checkpoint_mode(x(11999)) == "none"
    assert m._checkpoint_mode(x(12000)) == "block"
    avail["bytes"] = None                                       # the query failed: the old rules
    m._auto_none_oom_elements = None
    assert m._checkpoint_mode(x(15000)) == "block"
    assert m._checkpoint_mode(_FakeFeatures(15000, False)) == "block"             # the CPU never asks
    m.checkpoint_blocks = "block"                                                  # an explicit mode is obeyed
    avail["bytes"] = 10 ** 12
    assert m._checkpoint_mode(x(15000)) == "block"


def test_out_of_memory_without_checkpointing_redoes_the_step_checkpointed(monkeypatch):
    """When a step that "auto" ran without checkpointing on its memory estimate runs out of device memory,
    energy_and_forces redoes it with checkpointing (the same energy and forces as a "block" step), and later
    steps of that size checkpoint straight away; an out-of-memory error of any other step is raised as it is."""
    m = _model()
    z, pos, cell, pbc = _system()
    ref = _set_mode(m, "block").energy_and_forces(z, pos, cell, pbc)
    m.checkpoint_blocks = "auto"

    def fake_mode(self, x):           # "auto" on a GPU with room for "none" (until it ran out at this size)
        if self._auto_none_oom_elements is None or x.numel() < self._auto_none_oom_elements:
            self._auto_none_taken = True
            return "none"
        return "block"

    monkeypatch.setattr(type(m), "_checkpoint_mode", fake_mode)
    real_ffn_norm = E2.Block._ffn_norm
    raised = {"n": 0}

    def ffn_norm(self, x, y):         # the device runs out of memory in a step without checkpointing (in the FFN
        if m.last_checkpoint_mode == "none":            # norm, which every block path runs)
            raised["n"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return real_ffn_norm(self, x, y)

    monkeypatch.setattr(E2.Block, "_ffn_norm", ffn_norm)
    out = m.energy_and_forces(z, pos, cell, pbc)
    assert raised["n"] == 1 and m.last_checkpoint_mode == "block"
    assert m._auto_none_oom_elements == len(z) * 9 * SMALL["channels"] and not m._auto_none_taken
    assert not m._auto_none_allowed                             # only while energy_and_forces runs
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    m.energy_and_forces(z, pos, cell, pbc)                      # the next step checkpoints at once
    assert raised["n"] == 1 and m.last_checkpoint_mode == "block"
    # an explicit "none" (or any step not taken by the memory estimate) that runs out of memory: raised
    m._auto_none_oom_elements = None
    monkeypatch.setattr(type(m), "_checkpoint_mode", lambda self, x: "none")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        m.energy_and_forces(z, pos, cell, pbc)
    assert m._auto_none_oom_elements is None


def test_auto_block_qk_mode_matches_block_and_switches_back(monkeypatch):
    """"block+qk" (chosen by "auto" on the GPU where "block" would not fit and it does) is "block" with the
    query / key projections recomputed for that evaluation: the same energy, forces and parameter gradients
    (double backward included); the next evaluation that takes another mode switches the recomputation off
    again, and the user's own set_recompute_qk is left alone."""
    _fused_api_on_cpu(monkeypatch)
    m = _model()
    sysm = _system()
    ref = _evaluate(_set_mode(m, "block"), sysm)
    assert m.last_checkpoint_mode == "block"
    calls = count_calls(monkeypatch, E2.SO3ToScalar, "_scalars_recomputed")
    m.checkpoint_blocks = "auto"
    monkeypatch.setattr(type(m), "_checkpoint_mode", lambda self, x: "block+qk")
    out = _evaluate(m, sysm)
    assert m.last_checkpoint_mode == "block+qk"
    assert calls["n"] > 0 and all(b.attn.query.auto_recompute and b.attn.key.auto_recompute for b in m.blocks)
    assert not m.recompute_qk                              # the user's setting is untouched
    _assert_same(ref, out, 1e-12)
    monkeypatch.setattr(type(m), "_checkpoint_mode", lambda self, x: "none")
    calls["n"] = 0
    _assert_same(ref, _evaluate(m, sysm), 1e-12)
    assert m.last_checkpoint_mode == "none" and calls["n"] == 0
    assert not any(b.attn.query.auto_recompute or b.attn.key.auto_recompute for b in m.blocks)


def test_auto_mode_thresholds(monkeypatch):
    m = _model()
    monkeypatch.setattr(type(m), "_cuda_available_bytes", staticmethod(lambda x: None))
    m.checkpoint_min_elements = 1000 * 32
    m.checkpoint_fine_min_elements = 5000 * 32
    m.checkpoint_blocks = "auto"
    for n, cpu, gpu in ((999, "none", "none"), (1000, "block", "none"), (999 * 32, "block", "none"),
                        (1000 * 32, "block", "block"), (5000 * 32, "block", "fine"), (10 ** 9, "block", "fine")):
        assert m._checkpoint_mode(_FakeFeatures(n, False)) == cpu, n
        assert m._checkpoint_mode(_FakeFeatures(n, True)) == gpu, n
    with torch.no_grad():
        assert m._checkpoint_mode(_FakeFeatures(10 ** 9, True)) == "none"
    for mode, want in ((False, "none"), (True, "block"), ("block", "block"), ("fine", "fine")):
        m.checkpoint_blocks = mode
        assert m._checkpoint_mode(_FakeFeatures(1, False)) == want
    m.checkpoint_blocks = "fin"
    with pytest.raises(ValueError, match="checkpoint_blocks"):
        m._checkpoint_mode(_FakeFeatures(1, False))


@pytest.mark.parametrize("fused", [False, True])
def test_fine_mode_runs_in_atom_slices(fused, monkeypatch):
    """Memory cannot be measured on the CPU; instead record the atom counts the per-atom parts (and, on the
    fused-kernel path, the attention kernel) run on: slices of at most checkpoint_chunk_atoms, never the
    whole system, in the forward pass and in every recomputation of the backward pass."""
    if fused:
        _fused_api_on_cpu(monkeypatch)
    m = _set_mode(_model(), "fine")
    sysm = _system()
    N = len(sysm[0])
    # (every block path runs its FFN norm through Block._ffn_norm: the slices' node_part, the plain Block.forward)
    calls = {"_ffn_norm": [], "qkv_rows": [], "fused_U_rows": [], "edge_part": []}
    for cls, name in ((E2.Block, "_ffn_norm"), (E2.Block, "qkv_rows"), (E2.Attention, "fused_U_rows"),
                      (E2.Block, "edge_part")):
        orig = getattr(cls, name)

        def rec(self, *a, _orig=orig, _name=name):
            calls[_name].append(a[0].shape[0])
            return _orig(self, *a)

        monkeypatch.setattr(cls, name, rec)
    z, pos, cell, pbc = sysm
    p = pos.clone().requires_grad_(True)
    e, _ = m.energy_terms(z, p, cell, pbc)
    slices = [CHUNK] * (N // CHUNK) + [N % CHUNK]
    L = len(m.blocks)
    assert calls["_ffn_norm"] == slices * L                        # forward: one call per slice and block
    if fused:
        assert calls["qkv_rows"] == slices * L and calls["fused_U_rows"] == slices * L
        assert calls["edge_part"] == []                             # no whole-system attention
    else:
        assert calls["edge_part"] == [N] * L and calls["qkv_rows"] == []
    for v in calls.values():
        v.clear()
    (g,) = torch.autograd.grad(e, p)
    assert g.abs().max() > 0
    # backward: the outer recomputation of each block and then every slice's own recomputation
    assert sorted(set(calls["_ffn_norm"])) == sorted({CHUNK, N % CHUNK})
    assert len(calls["_ffn_norm"]) >= 2 * (len(slices) - 1) * L
    if fused:
        assert sorted(set(calls["fused_U_rows"])) == sorted({CHUNK, N % CHUNK})
        assert calls["edge_part"] == []
    # without gradients (energy only) nothing is checkpointed: plain blocks
    for v in calls.values():
        v.clear()
    with torch.no_grad():
        m.energy_terms(z, pos, cell, pbc)
    assert calls["_ffn_norm"] == [N] * L


def test_fine_mode_bf16_autocast_close_to_plain_bf16():
    """bf16 autocast stays on inside the fine checkpoints (forward and recomputation).  (PyTorch attention:
    the kernels' CPU reference does not run under autocast; on the GPU the kernels take float32.)"""
    m = _model(torch.float32).requires_grad_(False)
    m.set_precision("bf16")
    sysm = _system(2)
    ref = _evaluate(_set_mode(m, False), sysm, params=False)
    out = _evaluate(_set_mode(m, "fine", 5), sysm, params=False)
    m.set_precision("fp32")
    fp32 = _evaluate(_set_mode(m, False), sysm, params=False)
    assert torch.isfinite(out[1]).all()
    scale = float(fp32[1].abs().max())
    # bf16 rounding is visible (so autocast is on) ...
    assert float((ref[1] - fp32[1]).abs().max()) > 1e-4 * scale
    # ... and the fine mode is the same bf16 computation up to bf16 rounding of different row counts
    assert float((out[1] - ref[1]).abs().max()) < 0.02 * scale
    assert abs(float(out[0] - ref[0])) < 0.02 * max(1.0, abs(float(ref[0])))


def test_float32_fine_matches_plain():
    m = _model(torch.float32)
    sysm = _system()
    ref = _evaluate(_set_mode(m, False), sysm, params=False)
    out = _evaluate(_set_mode(m, "fine"), sysm, params=False)
    _assert_same(ref, out, 1e-5)


def test_torchscript_still_compiles_and_ignores_checkpointing():
    """forward() still scripts (openmm-torch); the scripted model runs plain blocks and gives the eager
    model's energy and forces whatever the checkpointing mode of the eager model."""
    m = _set_mode(_model().requires_grad_(False), "fine")
    scripted = torch.jit.script(m)
    z, pos, cell, pbc = _system(2)
    out = []
    for fn in (m, scripted):
        p = pos.clone().requires_grad_(True)
        e = fn(z, p, cell, pbc, 0, 1, 0)
        (g,) = torch.autograd.grad(e, p)
        out.append((float(e.detach()), g))
    assert abs(out[0][0] - out[1][0]) < 1e-10 * abs(out[0][0])
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-9, atol=1e-12)


def test_energy_and_forces_api_fine_mode():
    m = _model().requires_grad_(False)
    z, pos, cell, pbc = _system()
    a = m.energy_and_forces(z, pos, cell, pbc)
    _set_mode(m, "fine")
    b = m.energy_and_forces(z, pos, cell, pbc)
    assert abs(float(a[0] - b[0])) < 1e-10 * abs(float(a[0]))
    np.testing.assert_allclose(b[2].numpy(), a[2].numpy(), rtol=0, atol=1e-10 * float(a[2].abs().max()))


# ------------------------------------------------------------------------------------------------
# the fine mode with the fused Triton kernels (v2 and v1) under the interpreter; a subprocess, since
# TRITON_INTERPRET must be set before triton is imported
# ------------------------------------------------------------------------------------------------
_INTERP_SCRIPT = TRITON_MODEL_SCRIPT_HEAD + textwrap.dedent(r"""

    # the smallest shapes the kernels take, one block (the CPU tests cover several blocks through the same code
    # path with the kernels' reference)
    m, z, pos, cell, pbc = tiny_kernel_model()
    calls = []
    orig = K.fused_attention
    def spy(*a, **kw):
        calls.append((a[3].shape[0], K.select_backend(a[3], a[5], a[8])))
        return orig(*a, **kw)
    K.fused_attention = spy

    def run(mode, fused):
        E2.Attention.use_fused = (lambda self, x: True) if fused else (lambda self, x: False)
        m.checkpoint_blocks = mode
        m.checkpoint_chunk_atoms = 8                     # 21 atoms: slices 8, 8, 5
        e, em, f = m.energy_and_forces(z, pos, cell, pbc)
        return em, f

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max())

    ref_e, ref_f = run(False, False)                   # PyTorch attention, no checkpointing
    worst = 0.0
    for backend in ("triton_v2", "triton"):
        os.environ["E2FORMER_ATTENTION_BACKEND"] = backend
        calls.clear()
        e0, f0 = run(False, True)                      # the kernel on the whole graph
        assert calls and all(c == (21, backend) for c in calls), calls
        calls.clear()
        e1, f1 = run("fine", True)                     # the kernel per slice of target atoms
        assert calls and {c[0] for c in calls} == {8, 5} and all(c[1] == backend for c in calls), calls
        errs = [abs(float(e1 - e0)) / abs(float(e0)), rel(f1, f0), abs(float(e1 - ref_e)) / abs(float(ref_e)),
                rel(f1, ref_f)]
        print(backend, "fine vs whole-graph kernel (E, F), fine vs PyTorch attention (E, F):",
              ["%.1e" % x for x in errs])
        worst = max(worst, *errs)
    print("WORST", worst)
    assert worst < 1e-5, worst
""")


def test_fine_mode_with_triton_kernels_under_interpreter():
    run_under_triton_interpreter(_INTERP_SCRIPT, [REPO / "tests"], "fine checkpointing with the Triton kernels",
                                 drop_env=("E2FORMER_ATTENTION_BACKEND",))


@pytest.mark.parametrize("mode", [False, "block", "fine"])
def test_recompute_qk_matches_plain(mode, monkeypatch):
    """``set_recompute_qk`` (session 10): the query / key projections recomputed in the backward give the same
    energy, forces and parameter gradients (double backward of a force loss included), alone and inside the
    block checkpoints, on the fused-kernel API route; TorchScript ignores it."""
    _fused_api_on_cpu(monkeypatch)
    m = _model()
    sysm = _system()
    ref = _evaluate(_set_mode(m, mode), sysm)
    assert not m.recompute_qk
    m.set_recompute_qk(True)
    assert m.recompute_qk and all(b.attn.key.recompute for b in m.blocks)
    _assert_same(ref, _evaluate(_set_mode(m, mode), sysm), 1e-12)
    if mode is False:
        s = torch.jit.script(m)
        z, pos, cell, pbc = sysm
        e_eager = float(m(z, pos, cell, pbc))
        assert abs(float(s(z, pos, cell, pbc)) - e_eager) <= 1e-10 * abs(e_eager)
    m.set_recompute_qk(False)
    assert not m.recompute_qk


@pytest.mark.parametrize("mode", [False, "block", "block+qk"])
def test_set_compile_matches_plain(mode, monkeypatch):
    """``set_compile`` (session 11, experimental): the blocks' node-level parts through ``torch.compile`` (here the
    aot_eager backend: Dynamo and AOTAutograd as on the GPU, no code generation, so the CPU test stays fast) give
    the energy and forces of the plain modules, without and inside the block checkpoints; the model still
    scripts with the compiled parts on, and set_compile(False) drops them."""
    _fused_api_on_cpu(monkeypatch)
    m = _model()
    sysm = _system()
    ref = _evaluate(_set_mode(m, "block" if mode == "block+qk" else mode), sysm, params=False)
    if mode == "block+qk":       # what "auto" takes on a GPU where plain "block" would not fit
        m.checkpoint_blocks = "auto"
        monkeypatch.setattr(type(m), "_checkpoint_mode", lambda self, x: "block+qk")
    calls = count_calls(monkeypatch, E2.E2FormerV2, "_compiled_block")
    m.set_compile(True, backend="aot_eager")
    assert m.compile_node_parts and all("_compiled_parts" in b.__dict__ for b in m.blocks)
    out = _evaluate(m, sysm, params=False)
    assert calls["n"] >= len(m.blocks)
    assert m.last_checkpoint_mode == (mode or "none")
    _assert_same(ref, out, 1e-12)
    z, pos, cell, pbc = sysm
    assert abs(float(torch.jit.script(m)(z, pos, cell, pbc)) - float(ref[0])) <= 1e-10 * abs(float(ref[0]))
    # a compiled model pickles and deep-copies: the copy compiles its parts again, with the same options
    for copy_ in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert copy_.compile_node_parts and all("_compiled_parts" in b.__dict__ for b in copy_.blocks)
        assert copy_._compile_options == {"backend": "aot_eager", "dynamic": True}
        calls["n"] = 0
        _assert_same(ref, _evaluate(copy_, sysm, params=False), 1e-12)
        assert calls["n"] >= len(m.blocks)
    m.set_compile(False)
    assert not m.compile_node_parts and not any("_compiled_parts" in b.__dict__ for b in m.blocks)
    calls["n"] = 0
    _assert_same(ref, _evaluate(m, sysm, params=False), 1e-12)
    assert calls["n"] == 0


def test_model_pickled_before_session13_gets_the_new_checkpoint_attributes(monkeypatch):
    """A model pickled before "auto" learned to skip checkpointing where it fits (session 13) has none of its
    attributes: unpickling adds them with their defaults, and "auto" works on it."""
    m = _model()
    state = m.__getstate__()
    for key in ("checkpoint_none_bytes_per_element", "_auto_none_oom_elements", "_auto_none_taken",
                "last_node_elements"):
        state.pop(key)
    old = E2FormerV2.__new__(E2FormerV2)
    old.__setstate__(state)
    assert old.checkpoint_none_bytes_per_element == E2.CHECKPOINT_NONE_BYTES_PER_ELEMENT == 320.0
    assert old._auto_none_oom_elements is None and old._auto_none_taken is False and old._auto_none_allowed is False
    # and "auto" decides with them as on a fresh model (a GPU with room: "none"; without: "block")
    old.checkpoint_min_elements = 1000
    monkeypatch.setattr(type(old), "_cuda_available_bytes", staticmethod(lambda x: 10 ** 9))
    monkeypatch.setattr(E2.Attention, "use_fused", lambda self, x: True)
    monkeypatch.setattr(E2.EdgeDegreeEmbedding, "use_fused", lambda self, x: True)
    old._auto_none_allowed = True
    assert old._checkpoint_mode(_FakeCudaFeatures(20000, True)) == "none"
    assert old._checkpoint_mode(_FakeCudaFeatures(5 * 10 ** 6, True)) == "block"      # 1.6 GB > 0.9 GB
    # an out-of-memory record does not travel with a copy
    old._auto_none_oom_elements = 5000
    assert copy.deepcopy(old)._auto_none_oom_elements is None
    assert pickle.loads(pickle.dumps(old))._auto_none_oom_elements is None
