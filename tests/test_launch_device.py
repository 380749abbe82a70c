"""The attention and edge-degree kernels launch on their tensors' device, not on whatever CUDA device is current
(a model on cuda:1 while cuda:0 is current).  The CPU cannot switch devices, so this checks the wiring: each
Triton backend of ``fused_attention`` / ``fused_edge_degree`` runs inside ``launch_device`` of its tensors'
device, and the reference backend needs none."""
from __future__ import annotations

import contextlib
from importlib import import_module

import pytest
import torch

from helpers import kernels_package

K = import_module(kernels_package())


@pytest.fixture
def recorded(monkeypatch):
    """Replace launch_device by a recorder, and every Triton backend by a stub that reports whether it ran
    inside the recorder's context."""
    log = {"entered": [], "inside": False, "ran_inside": []}

    @contextlib.contextmanager
    def fake_launch_device(device):
        log["entered"].append(device)
        log["inside"] = True
        try:
            yield
        finally:
            log["inside"] = False

    def stub(*args, **kwargs):
        log["ran_inside"].append(log["inside"])
        return "stub"

    monkeypatch.setattr(K, "launch_device", fake_launch_device)
    for mod, fn in (("_attention_triton_v2", "attention_triton_v2"), ("_attention_triton", "attention_triton"),
                    ("_edge_degree_triton_v2", "edge_degree_triton_v2"), ("_edge_degree_triton", "edge_degree_triton")):
        if getattr(K, mod, None) is not None:
            monkeypatch.setattr(getattr(K, mod), fn, stub)
    return log


@pytest.mark.parametrize("backend", ["triton_v2", "triton"])
def test_attention_launches_on_the_tensors_device(monkeypatch, recorded, backend):
    if getattr(K, "_attention_" + backend, None) is None:
        pytest.skip(f"{backend} did not import here (no triton)")
    monkeypatch.setattr(K, "select_backend", lambda *a, **k: backend)
    q = torch.zeros(2, 4, 8)
    out = K.fused_attention(None, None, None, q, None, None, None, None, None, None, None, None)
    assert out == "stub"
    assert recorded["entered"] == [q.device] and recorded["ran_inside"] == [True]


@pytest.mark.parametrize("backend", ["triton_v2", "triton"])
def test_edge_degree_launches_on_the_tensors_device(monkeypatch, recorded, backend):
    if getattr(K, "_edge_degree_" + backend, None) is None:
        pytest.skip(f"{backend} did not import here (no triton)")
    monkeypatch.setattr(K, "select_edge_degree_backend", lambda *a, **k: backend)
    vec = torch.zeros(5, 3)
    out = K.fused_edge_degree(None, None, vec, None, None, None, None, None, None)
    assert out == "stub"
    assert recorded["entered"] == [vec.device] and recorded["ran_inside"] == [True]


def test_launch_device_is_a_device_guard_on_cuda_only():
    S = import_module(kernels_package() + "._node_switch")
    assert isinstance(S.launch_device(torch.device("cpu")), contextlib.nullcontext)
    assert isinstance(S.launch_device(torch.device("cuda", 1)), torch.cuda.device)


def test_graphed_path_runs_on_the_models_device(monkeypatch):
    """The CUDA-graph path (buffers, side stream, capture, replay) runs under a device guard of the model's device;
    on the CPU it needs none.  (Wiring only: the CPU cannot switch devices.)"""
    import types

    from openmm_e2former import graphed

    entered, ran = [], []

    @contextlib.contextmanager
    def fake_device(dev):
        entered.append(dev)
        yield

    monkeypatch.setattr(graphed.torch.cuda, "device", fake_device)
    for dev, want in ((torch.device("cuda", 1), [torch.device("cuda", 1)]), (torch.device("cpu"), [])):
        entered.clear()
        stub = types.SimpleNamespace(model=types.SimpleNamespace(device=dev),
                                     _evaluate_on_device=lambda *a: ran.append((list(entered), a)))
        graphed._PaddedGraph._evaluate(stub, "pos", None, None)
        assert entered == want and ran[-1] == (want, ("pos", None, None))
